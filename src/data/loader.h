// DataLoader: batches of a TensorDataset in a given sample order, prepared
// ahead of time by a background thread so that gathering overlaps the step.
//
// An epoch is started with an index order (usually ShardedSampler's); next()
// then returns Batch after Batch of `batch_size` samples in that order, the
// last one partial unless drop_last, and nullopt at the end of the epoch.
// Rows are gathered with one memcpy per sample.
//
// With prefetch > 0 a std::jthread prepares up to `prefetch` batches ahead
// into a bounded queue; with prefetch == 0 next() gathers synchronously. Both
// give identical batches. Starting a new epoch mid-epoch, or destroying the
// loader, stops the thread (stop_token) and joins it; queued batches are
// discarded.
//
// Errors: an exception while preparing a batch (a UsageError for an index
// outside the dataset, or std::bad_alloc) is re-thrown by the next() call
// that would have returned that batch; the epoch then ends (next() returns
// nullopt until start_epoch()). next() before start_epoch() is a UsageError.
//
// Ownership: the loader references the dataset, which its owner keeps alive
// and unchanged for the loader's lifetime (TensorDataset is immutable).
// Thread safety: one consumer thread calls start_epoch()/next(); the
// background thread is internal. Blocking: next() waits for the background
// thread's current gather (CPU work on local memory, no I/O), so it has no
// deadline.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <thread>
#include <vector>

#include "data/dataset.h"

namespace dtrain::data {

struct Batch {
  Tensor x;                      // [B, sample_shape...]
  std::vector<int64_t> y;        // B labels
  std::vector<int64_t> indices;  // the B dataset indices, in order
  int64_t size() const { return static_cast<int64_t>(y.size()); }
};

// The rows `indices` of `dataset`; UsageError on an index outside it.
Batch gather_batch(const TensorDataset& dataset, std::span<const int64_t> indices);

struct LoaderOptions {
  int64_t batch_size = 32;  // >= 1
  bool drop_last = false;   // drop the last batch when it is smaller than batch_size
  int64_t prefetch = 2;     // batches prepared ahead; 0: gather in next()
};

class DataLoader {
 public:
  // UsageError for batch_size < 1 or prefetch < 0.
  DataLoader(const TensorDataset& dataset, LoaderOptions options);
  ~DataLoader() = default;  // the jthread member stops and joins first
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Begins an epoch over `order` (dataset indices), abandoning any epoch in
  // progress.
  void start_epoch(std::vector<int64_t> order);
  // The next batch, or nullopt when the epoch is exhausted.
  std::optional<Batch> next();
  // Batches in the current epoch.
  int64_t batches_in_epoch() const { return batches_; }
  // Batches that `samples` make: ceil(samples / batch_size), or floor with drop_last.
  static int64_t batch_count(int64_t samples, int64_t batch_size, bool drop_last);

 private:
  Batch make_batch(int64_t b) const;
  void produce(std::stop_token stop);
  void stop_worker();

  const TensorDataset& dataset_;  // owned by the caller, outlives the loader
  LoaderOptions options_;
  std::vector<int64_t> order_;
  int64_t batches_ = 0;
  int64_t delivered_ = 0;
  bool started_ = false;

  // Shared with the background thread, under mutex_.
  struct Item {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };
  std::mutex mutex_;
  std::condition_variable_any changed_;
  std::deque<Item> queue_;

  std::jthread worker_;  // last: destroyed (stopped, joined) before the state it uses
};

}  // namespace dtrain::data
