// core/cuda/staging.h — the bookkeeping of the pinned staging ring through
// which copy_h2d uploads without waiting (core/cuda/device.cu). Plain C++
// (no CUDA): tests/test_core.cpp checks it on the CPU.
//
// An upload copies the host bytes into a slice of one pinned buffer, queues
// the DMA from there on the thread's stream and returns; the caller's host
// memory is free at once, and the GPU work after it on the stream sees the
// data. The slice may be overwritten only once that DMA has finished. The
// ring hands out slices in order around the buffer and remembers the copies
// in flight (each with a Ticket: a CUDA event in device.cu); reserve() says
// how many of the oldest copies must finish before the next slice is written.
//
// Positions are virtual (they only grow): byte p lives at p % capacity. A
// slice never straddles the end of the buffer (it starts the next lap
// instead), so slice [b, e) reuses the bytes that virtual [b − capacity,
// e − capacity) held. The copies in flight are disjoint and ordered by
// position, so those that overlap that range — and every older one — are
// exactly the prefix of the queue whose begin < e − capacity. Copies on one
// stream finish in order: waiting for the last of that prefix is enough.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <stdexcept>
#include <string>

namespace vm::kernels::cuda {

template <class Ticket>
class StagingRing {
 public:
  // capacity and align in bytes (align a power of two, capacity a multiple of it).
  explicit StagingRing(uint64_t capacity, uint64_t align = 256) : cap_(capacity), align_(align) {
    if (align_ == 0 || (align_ & (align_ - 1)) != 0 || cap_ == 0 || cap_ % align_ != 0)
      throw std::invalid_argument("StagingRing: capacity must be a positive multiple of a power-of-two alignment");
  }
  uint64_t capacity() const { return cap_; }
  // Whether n bytes can go through the ring at all (else: a synchronous copy).
  bool fits(uint64_t n) const { return n > 0 && round_up(n) <= cap_; }

  struct Reservation {
    uint64_t begin = 0, end = 0;  // virtual positions of the slice
    uint64_t offset = 0;          // begin % capacity: where the bytes go in the buffer
    size_t must_finish = 0;       // the oldest copies in flight that must finish first
  };
  // The slice for the next n bytes (fits(n) required); changes nothing.
  Reservation reserve(uint64_t n) const {
    if (!fits(n)) throw std::invalid_argument("StagingRing::reserve: " + std::to_string(n) + " bytes do not fit");
    Reservation r;
    const uint64_t size = round_up(n);
    r.begin = head_;
    if (r.begin % cap_ + size > cap_) r.begin = (r.begin / cap_ + 1) * cap_;  // next lap: never straddle the end
    r.end = r.begin + size;
    r.offset = r.begin % cap_;
    if (r.end > cap_) {
      const uint64_t reused_before = r.end - cap_;  // virtual bytes below this were held by the same memory
      while (r.must_finish < q_.size() && q_[r.must_finish].begin < reused_before) ++r.must_finish;
    }
    return r;
  }
  // The oldest copy has finished (its slice may be reused).
  void retire_oldest() {
    if (q_.empty()) throw std::logic_error("StagingRing::retire_oldest: nothing in flight");
    q_.pop_front();
  }
  // The copy of reservation r is queued (after retiring its must_finish copies).
  void commit(const Reservation& r, Ticket t) {
    if (r.begin < head_ || (!q_.empty() && r.begin < q_.back().end))
      throw std::logic_error("StagingRing::commit: reservation out of order");
    head_ = r.end;
    q_.push_back(Entry{r.begin, r.end, t});
  }
  size_t in_flight() const { return q_.size(); }
  Ticket& ticket(size_t i) { return q_[i].ticket; }  // i = 0: the oldest
  uint64_t begin_of(size_t i) const { return q_[i].begin; }
  uint64_t end_of(size_t i) const { return q_[i].end; }

 private:
  uint64_t round_up(uint64_t n) const { return (n + align_ - 1) & ~(align_ - 1); }
  struct Entry {
    uint64_t begin, end;
    Ticket ticket;
  };
  uint64_t cap_, align_;
  uint64_t head_ = 0;  // next free virtual position
  std::deque<Entry> q_;
};

}  // namespace vm::kernels::cuda
