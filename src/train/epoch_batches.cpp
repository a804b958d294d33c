#include "train/epoch_batches.h"

#include <algorithm>
#include <tuple>

#include "data/sampler.h"

namespace dtrain::train {

EpochBatches::EpochBatches(const data::TensorDataset& train, data::DataLoader& loader,
                           const strategy::Strategy& strategy, uint64_t seed, int64_t epoch,
                           int64_t batch_size, int64_t done_batches)
    : train_(train), loader_(&loader), strategy_(strategy), batch_size_(batch_size) {
  std::vector<int64_t> order = data::shuffled_order(train.size(), seed, epoch);
  const int64_t skip =
      std::min<int64_t>(done_batches * batch_size, static_cast<int64_t>(order.size()));
  order.erase(order.begin(), order.begin() + skip);
  loader_->start_epoch(std::move(order));
}

EpochBatches::EpochBatches(const data::TensorDataset& train,
                           const std::vector<std::vector<int64_t>>& parts,
                           const strategy::Strategy& strategy, uint64_t seed, int64_t epoch,
                           int64_t batch_size, const std::vector<int64_t>& consumed)
    : train_(train), strategy_(strategy), batch_size_(batch_size) {
  parts_ = std::make_unique<PartitionedEpoch>(parts, strategy.rank(), seed, epoch);
  if (!consumed.empty()) parts_->skip(consumed);
}

std::optional<StepBatch> EpochBatches::next() {
  StepBatch s;
  if (parts_) {
    if (parts_->exhausted()) return std::nullopt;
    s.split = strategy_.batch_split(batch_size_);
    s.batch = data::gather_batch(train_, parts_->take(s.split));
    s.hi = s.batch.size();
  } else {
    std::optional<data::Batch> batch = peeked_ ? std::move(*peeked_) : loader_->next();
    peeked_.reset();
    peeked_step_ = {};
    if (!batch) return std::nullopt;
    s.batch = std::move(*batch);
    s.split = strategy_.batch_split(s.batch.size());
    std::tie(s.lo, s.hi) = strategy_.row_range(s.batch.size());
  }
  last_split_ = s.split;
  return s;
}

const StepBatch* EpochBatches::peek() {
  if (parts_) return nullptr;
  if (!peeked_) {
    peeked_ = loader_->next();
    if (*peeked_) {
      peeked_step_.batch = **peeked_;  // shares the tensors
      peeked_step_.split = strategy_.batch_split(peeked_step_.batch.size());
      std::tie(peeked_step_.lo, peeked_step_.hi) = strategy_.row_range(peeked_step_.batch.size());
    }
  }
  return *peeked_ ? &peeked_step_ : nullptr;
}

std::vector<int64_t> EpochBatches::consumed() const {
  return parts_ ? parts_->consumed() : std::vector<int64_t>{};
}

}  // namespace dtrain::train
