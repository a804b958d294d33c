// FakeGroup: compress::Group for W ranks run as W threads of one test,
// sharing an in-memory Exchange (the serial reference of the compressors'
// collectives).
//
// Each operation: every rank posts its contribution (and the operation's
// kind and size) in its slot, waits at a barrier, computes the result from
// all slots in rank order, and waits at a second barrier before the slots
// are reused. Sums are plain float additions in rank order, so every rank
// gets bit-identical results. allreduce_sum_16 emulates the wire: each
// contribution is encoded with core/half.h (fp16 scaled by max|x| / 32768
// per message, or bf16) and decoded before the sum. sparse_allreduce_sum
// densifies each rank's list and sums. Ranks that disagree on an operation,
// or a malformed sparse list, make every rank throw the same CommError; a
// rank that throws outside an operation aborts the exchange, so the others
// fail (CommError) instead of waiting forever; a barrier waits at most 60 s
// (TimeoutError). Bytes each rank contributes are counted per rank.
//
// run_ranks(W, fn) runs fn(group) on W threads and rethrows the first
// failure (of the lowest rank) after joining them all.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "compress/compressor.h"
#include "core/error.h"
#include "core/half.h"

namespace dtrain::testing {

class Exchange {
 public:
  explicit Exchange(int size)
      : size_(size), slots_(static_cast<size_t>(size)), bytes_(static_cast<size_t>(size), 0) {}
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  int size() const { return size_; }

  struct Slot {
    std::string operation;
    size_t count = 0;
    std::vector<float> floats;
    std::vector<uint32_t> indices;
    std::vector<std::byte> bytes;
  };

  Slot& slot(int rank) { return slots_[static_cast<size_t>(rank)]; }

  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    if (aborted_) throw CommError(-1, "fake group", "the exchange was aborted");
    const uint64_t generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60),
                      [&] { return generation_ != generation || aborted_; })) {
      throw TimeoutError(-1, "fake group", std::chrono::seconds(60), "the other ranks");
    }
    if (generation_ == generation) throw CommError(-1, "fake group", "the exchange was aborted");
  }

  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    cv_.notify_all();
  }

  void add_bytes(int rank, uint64_t bytes) { bytes_[static_cast<size_t>(rank)] += bytes; }
  uint64_t bytes(int rank) const { return bytes_[static_cast<size_t>(rank)]; }

 private:
  int size_;
  std::vector<Slot> slots_;
  std::vector<uint64_t> bytes_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

class FakeGroup final : public compress::Group {
 public:
  // `exchange` is owned by run_ranks (or the test), alive while ranks run.
  FakeGroup(Exchange& exchange, int rank) : exchange_(exchange), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return exchange_.size(); }

  void allreduce_sum(std::span<float> data) override {
    post("allreduce_sum", data.size()).floats.assign(data.begin(), data.end());
    exchange_.add_bytes(rank_, 4 * data.size());
    sync_and_check();
    sum_floats(data);
    exchange_.arrive_and_wait();
  }

  void allreduce_sum_16(std::span<float> data, bool bf16) override {
    Exchange::Slot& mine =
        post(bf16 ? "allreduce_sum_16 bf16" : "allreduce_sum_16 fp16", data.size());
    mine.floats.resize(data.size());
    if (bf16) {
      for (size_t i = 0; i < data.size(); ++i)
        mine.floats[i] = bf16_to_float(float_to_bf16(data[i]));
    } else {
      float max_abs = 0.0f;
      for (const float v : data) max_abs = std::max(max_abs, std::fabs(v));
      const float scale = max_abs > 0.0f ? max_abs / 32768.0f : 1.0f;
      for (size_t i = 0; i < data.size(); ++i) {
        mine.floats[i] = fp16_to_float(float_to_fp16(data[i] / scale)) * scale;
      }
    }
    exchange_.add_bytes(rank_, 2 * data.size());
    sync_and_check();
    sum_floats(data);
    exchange_.arrive_and_wait();
  }

  std::vector<std::vector<std::byte>> allgather_bytes(std::span<const std::byte> mine) override {
    post("allgather_bytes", 0).bytes.assign(mine.begin(), mine.end());
    exchange_.add_bytes(rank_, mine.size());
    sync_and_check();
    std::vector<std::vector<std::byte>> all;
    for (int r = 0; r < size(); ++r) all.push_back(exchange_.slot(r).bytes);
    exchange_.arrive_and_wait();
    return all;
  }

  void sparse_allreduce_sum(std::span<const uint32_t> indices, std::span<const float> values,
                            std::span<float> out) override {
    Exchange::Slot& mine = post("sparse_allreduce_sum", out.size());
    mine.indices.assign(indices.begin(), indices.end());
    mine.floats.assign(values.begin(), values.end());
    exchange_.add_bytes(rank_, 8 * indices.size());
    sync_and_check();
    std::vector<float> sum(out.size(), 0.0f);
    for (int r = 0; r < size(); ++r) {
      const Exchange::Slot& s = exchange_.slot(r);
      std::vector<float> dense(out.size(), 0.0f);
      bool valid = s.indices.size() == s.floats.size();
      for (size_t i = 0; valid && i < s.indices.size(); ++i) {
        valid = s.indices[i] < out.size() && (i == 0 || s.indices[i] > s.indices[i - 1]);
        if (valid) dense[s.indices[i]] = s.floats[i];
      }
      if (!valid) {
        exchange_.arrive_and_wait();
        throw CommError(r, "sparse_allreduce_sum", "malformed sparse list");
      }
      for (size_t i = 0; i < out.size(); ++i) sum[i] += dense[i];
    }
    std::copy(sum.begin(), sum.end(), out.begin());
    exchange_.arrive_and_wait();
  }

  uint64_t bytes_sent() const { return exchange_.bytes(rank_); }

 private:
  Exchange::Slot& post(std::string operation, size_t count) {
    Exchange::Slot& mine = exchange_.slot(rank_);
    mine.operation = std::move(operation);
    mine.count = count;
    return mine;
  }

  // Every rank sees the same slots, so every rank throws (or not) alike.
  void sync_and_check() {
    exchange_.arrive_and_wait();
    const Exchange::Slot& first = exchange_.slot(0);
    for (int r = 1; r < size(); ++r) {
      const Exchange::Slot& s = exchange_.slot(r);
      if (s.operation != first.operation || s.count != first.count) {
        exchange_.arrive_and_wait();
        throw CommError(r, first.operation,
                        "rank " + std::to_string(r) + " runs " + s.operation + " of " +
                            std::to_string(s.count) + ", rank 0 " + first.operation + " of " +
                            std::to_string(first.count));
      }
    }
  }

  void sum_floats(std::span<float> data) {
    std::vector<float> sum(data.size(), 0.0f);
    for (int r = 0; r < size(); ++r) {
      const std::vector<float>& f = exchange_.slot(r).floats;
      for (size_t i = 0; i < data.size(); ++i) sum[i] += f[i];
    }
    std::copy(sum.begin(), sum.end(), data.begin());
  }

  Exchange& exchange_;
  int rank_;
};

// Runs fn(group) for ranks 0..size-1 on their own threads; rethrows the
// lowest rank's exception after all joined. Returns each rank's bytes sent.
inline std::vector<uint64_t> run_ranks(int size, const std::function<void(FakeGroup&)>& fn) {
  Exchange exchange(size);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < size; ++r) {
      threads.emplace_back([&, r] {
        FakeGroup group(exchange, r);
        try {
          fn(group);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
          exchange.abort();
        }
      });
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  std::vector<uint64_t> bytes;
  for (int r = 0; r < size; ++r) bytes.push_back(exchange.bytes(r));
  return bytes;
}

}  // namespace dtrain::testing
