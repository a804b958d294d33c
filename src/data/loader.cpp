#include "data/loader.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"

namespace dtrain::data {

Batch gather_batch(const TensorDataset& dataset, std::span<const int64_t> indices) {
  Batch batch;
  Shape shape = dataset.sample_shape();
  shape.insert(shape.begin(), static_cast<int64_t>(indices.size()));
  batch.x = Tensor::empty(std::move(shape));
  batch.y.reserve(indices.size());
  batch.indices.assign(indices.begin(), indices.end());
  const int64_t row = dataset.sample_numel();
  const float* src = dataset.features().data();
  float* dst = batch.x.data();
  for (size_t i = 0; i < indices.size(); ++i) {
    const int64_t index = indices[i];
    if (index < 0 || index >= dataset.size()) {
      throw UsageError(
          fmt::format("data loader: sample index {} is outside the dataset's {} "
                      "samples",
                      index, dataset.size()));
    }
    std::memcpy(dst + static_cast<int64_t>(i) * row, src + index * row,
                static_cast<size_t>(row) * sizeof(float));
    batch.y.push_back(dataset.labels()[static_cast<size_t>(index)]);
  }
  return batch;
}

int64_t DataLoader::batch_count(int64_t samples, int64_t batch_size, bool drop_last) {
  return drop_last ? samples / batch_size : (samples + batch_size - 1) / batch_size;
}

DataLoader::DataLoader(const TensorDataset& dataset, LoaderOptions options)
    : dataset_(dataset), options_(options) {
  if (options_.batch_size < 1 || options_.prefetch < 0) {
    throw UsageError(
        fmt::format("data loader: batch_size must be >= 1 and prefetch >= 0, got "
                    "batch_size {} and prefetch {}",
                    options_.batch_size, options_.prefetch));
  }
}

void DataLoader::stop_worker() {
  if (worker_.joinable()) {
    worker_.request_stop();  // wakes a wait on changed_ that holds the stop token
    worker_.join();
  }
  queue_.clear();
}

void DataLoader::start_epoch(std::vector<int64_t> order) {
  stop_worker();
  order_ = std::move(order);
  batches_ =
      batch_count(static_cast<int64_t>(order_.size()), options_.batch_size, options_.drop_last);
  delivered_ = 0;
  started_ = true;
  if (options_.prefetch > 0 && batches_ > 0) {
    worker_ = std::jthread([this](std::stop_token stop) { produce(std::move(stop)); });
  }
}

Batch DataLoader::make_batch(int64_t b) const {
  const int64_t begin = b * options_.batch_size;
  const int64_t end = std::min(begin + options_.batch_size, static_cast<int64_t>(order_.size()));
  return gather_batch(dataset_, std::span<const int64_t>(order_).subspan(
                                    static_cast<size_t>(begin), static_cast<size_t>(end - begin)));
}

void DataLoader::produce(std::stop_token stop) {
  for (int64_t b = 0; b < batches_ && !stop.stop_requested(); ++b) {
    Item item;
    try {
      item.batch = make_batch(b);
    } catch (...) {
      item.error = std::current_exception();
    }
    const bool failed = item.error != nullptr;
    {
      std::unique_lock lock(mutex_);
      if (!changed_.wait(lock, stop,
                         [&] { return static_cast<int64_t>(queue_.size()) < options_.prefetch; })) {
        return;  // stop requested
      }
      queue_.push_back(std::move(item));
    }
    changed_.notify_all();
    if (failed) return;
  }
}

std::optional<Batch> DataLoader::next() {
  if (!started_) throw UsageError("data loader: next() called before start_epoch()");
  if (delivered_ >= batches_) return std::nullopt;
  if (options_.prefetch == 0) {
    try {
      Batch batch = make_batch(delivered_);
      ++delivered_;
      return batch;
    } catch (...) {
      delivered_ = batches_;
      throw;
    }
  }
  Item item;
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !queue_.empty(); });
    item = std::move(queue_.front());
    queue_.pop_front();
  }
  changed_.notify_all();
  if (item.error) {
    delivered_ = batches_;
    std::rethrow_exception(item.error);
  }
  ++delivered_;
  return std::move(item.batch);
}

}  // namespace dtrain::data
