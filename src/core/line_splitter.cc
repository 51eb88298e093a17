#include "core/line_splitter.h"

namespace workerpool {
namespace {

std::string_view WithoutCarriageReturn(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

}  // namespace

void LineSplitter::Feed(std::string_view data, const LineSink& sink) {
  while (!data.empty()) {
    size_t newline = data.find('\n');
    std::string_view piece =
        newline == std::string_view::npos ? data : data.substr(0, newline);
    // Fast path: a whole line with nothing buffered needs no copy.
    if (partial_.empty() && newline != std::string_view::npos &&
        piece.size() <= max_line_) {
      sink(WithoutCarriageReturn(piece));
      data.remove_prefix(newline + 1);
      continue;
    }
    size_t room = max_line_ - partial_.size();
    if (piece.size() >= room) {
      partial_.append(piece.substr(0, room));
      sink(partial_);
      partial_.clear();
      data.remove_prefix(room);
      // A line of exactly max_line bytes: its newline ends it, not a new one.
      if (piece.size() == room && newline != std::string_view::npos) {
        data.remove_prefix(1);
      }
      continue;
    }
    partial_.append(piece);
    if (newline == std::string_view::npos) return;
    sink(WithoutCarriageReturn(partial_));
    partial_.clear();
    data.remove_prefix(newline + 1);
  }
}

void LineSplitter::Finish(const LineSink& sink) {
  if (!partial_.empty()) sink(WithoutCarriageReturn(partial_));
  partial_.clear();
}

int TakeLinePriority(std::string_view* line) {
  if (line->size() < 3 || (*line)[0] != '<' || (*line)[2] != '>' ||
      (*line)[1] < '0' || (*line)[1] > '7') {
    return -1;
  }
  const int priority = (*line)[1] - '0';
  line->remove_prefix(3);
  return priority;
}

}  // namespace workerpool
