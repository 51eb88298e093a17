#include "children/amqp_settle.h"

#include <algorithm>
#include <utility>

namespace workerpool {

void AmqpAckBatch::Clear() {
  unsettled_.clear();
  held_.clear();
}

void AmqpAckBatch::Delivered(std::uint64_t tag) { unsettled_.insert(tag); }

void AmqpAckBatch::Ack(std::uint64_t tag) {
  unsettled_.erase(tag);
  held_.push_back(tag);
}

AmqpAckBatch::Frames AmqpAckBatch::Reject(std::uint64_t tag) {
  // Taken while TAG is still unsettled: the multiple ack stops below it.
  Frames frames = Take();
  unsettled_.erase(tag);
  return frames;
}

AmqpAckBatch::Frames AmqpAckBatch::Take() {
  Frames frames;
  if (held_.empty()) return frames;
  const std::uint64_t oldest_open =
      unsettled_.empty() ? UINT64_MAX : *unsettled_.begin();
  for (std::uint64_t tag : held_) {
    if (tag < oldest_open) frames.multiple = std::max(frames.multiple, tag);
  }
  for (std::uint64_t tag : held_) {
    if (tag > oldest_open) frames.singles.push_back(tag);
  }
  held_.clear();
  return frames;
}

void AmqpConfirmBook::Clear() {
  next_seq_ = 1;
  unconfirmed_.clear();
  settles_.clear();
}

std::uint64_t AmqpConfirmBook::Add(std::uint64_t tag, AmqpOutcome outcome,
                                   std::string queue, int publishes) {
  std::uint64_t id = next_settle_++;
  settles_[id] =
      AmqpPendingSettle{tag, outcome, std::move(queue), publishes, false};
  return id;
}

void AmqpConfirmBook::Published(std::uint64_t settle_id,
                                std::string routing_key) {
  unconfirmed_[next_seq_++] = Unconfirmed{settle_id, std::move(routing_key)};
}

int AmqpConfirmBook::Returned(const std::string& routing_key) {
  int marked = 0;
  for (const auto& [seq, publish] : unconfirmed_) {
    if (publish.settle_id == 0 || publish.routing_key != routing_key) continue;
    auto found = settles_.find(publish.settle_id);
    if (found == settles_.end() || !found->second.returned_to.empty()) continue;
    found->second.returned_to = routing_key;
    ++marked;
  }
  return marked;
}

std::vector<AmqpPendingSettle> AmqpConfirmBook::Confirm(std::uint64_t seq,
                                                        bool multiple,
                                                        bool ack) {
  std::vector<AmqpPendingSettle> complete;
  auto end = multiple ? unconfirmed_.upper_bound(seq) : unconfirmed_.find(seq);
  auto begin = multiple ? unconfirmed_.begin() : end;
  if (!multiple) {
    if (end == unconfirmed_.end()) return complete;
    ++end;
  }
  std::vector<std::uint64_t> ids;
  for (auto it = begin; it != end; ++it) {
    if (it->second.settle_id != 0) ids.push_back(it->second.settle_id);
  }
  unconfirmed_.erase(begin, end);
  for (std::uint64_t id : ids) {
    auto found = settles_.find(id);
    if (found == settles_.end()) continue;
    AmqpPendingSettle& pending = found->second;
    if (!ack) pending.nacked = true;
    if (--pending.remaining > 0) continue;
    complete.push_back(std::move(pending));
    settles_.erase(found);
  }
  return complete;
}

}  // namespace workerpool
