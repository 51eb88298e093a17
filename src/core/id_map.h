// A map from non-zero 64-bit request ids to pointers, stored flat: open
// addressing with linear probing in one power-of-two array. Pure; no
// allocation per entry, unlike std::unordered_map (one node per insert),
// which matters on the client library's per-request path. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace workerpool {

template <typename T>
class IdMap {
 public:
  // The number of ids mapped.
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // The pointer mapped to ID, or nullptr.
  T* Find(std::uint64_t id) const {
    if (size_ == 0 || id == kEmpty) return nullptr;
    for (size_t i = Home(id);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id == id) return slot.value;
      if (slot.id == kEmpty) return nullptr;
    }
  }

  // Maps ID to VALUE, replacing an earlier mapping. REQUIRES: id != 0,
  // value != nullptr.
  void Insert(std::uint64_t id, T* value) {
    // At most half full: probe runs stay short.
    if ((size_ + 1) * 2 > slots_.size()) Grow();
    for (size_t i = Home(id);; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id == id) {
        slot.value = value;
        return;
      }
      if (slot.id == kEmpty) {
        slot = Slot{id, value};
        ++size_;
        return;
      }
    }
  }

  // Unmaps ID; returns what it was mapped to, or nullptr.
  T* Erase(std::uint64_t id) {
    if (size_ == 0 || id == kEmpty) return nullptr;
    size_t i = Home(id);
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].id == id) break;
      if (slots_[i].id == kEmpty) return nullptr;
    }
    T* value = slots_[i].value;
    // Backward-shift deletion: later entries of the probe run move up into
    // the hole, so lookups never need tombstones.
    size_t hole = i;
    for (size_t j = (i + 1) & mask_; slots_[j].id != kEmpty;
         j = (j + 1) & mask_) {
      const size_t home = Home(slots_[j].id);
      // The entry at J may fill the hole if its home is not in (hole, j].
      const bool home_after_hole = ((j - home) & mask_) < ((j - hole) & mask_);
      if (!home_after_hole) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Slot{};
    --size_;
    return value;
  }

  // Calls FN(id, value) for every entry, in no particular order. FN must not
  // change the map.
  template <typename Fn>
  void ForEach(Fn fn) const {
    for (const Slot& slot : slots_) {
      if (slot.id != kEmpty) fn(slot.id, slot.value);
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = 0;
  struct Slot {
    std::uint64_t id = kEmpty;
    T* value = nullptr;
  };

  size_t Home(std::uint64_t id) const {
    // Fibonacci hashing: sequential ids spread over the table.
    return static_cast<size_t>((id * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }

  void Grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    const size_t capacity = old.empty() ? 16 : old.size() * 2;
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    shift_ = 64;
    for (size_t c = capacity; c > 1; c >>= 1) --shift_;
    size_ = 0;
    for (const Slot& slot : old) {
      if (slot.id != kEmpty) Insert(slot.id, slot.value);
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

}  // namespace workerpool
