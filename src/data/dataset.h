// TensorDataset: an in-memory labelled dataset, features as one float Tensor
// [N, ...] (sample i is row i) and one int64 class label per sample.
//
// Every reader in data/ (IDX, CSV, synthetic) produces one; loaders gather
// rows from it by index. Labels lie in [0, num_classes), checked on
// construction (UsageError naming the first bad label).
//
// Ownership: holds a Tensor handle (shared storage) and owns its labels;
// slice() shares storage, subset() copies. Thread safety: immutable after
// construction, so any number of threads may read it (loaders do).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tensor/tensor.h"

namespace dtrain::data {

class TensorDataset {
 public:
  TensorDataset() = default;  // empty: size() == 0
  // `features` has at least one dimension and size(0) == labels.size().
  TensorDataset(Tensor features, std::vector<int64_t> labels, int64_t num_classes);

  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  // Shape of one sample: features' shape without dimension 0.
  Shape sample_shape() const;
  // Floats per sample.
  int64_t sample_numel() const { return sample_numel_; }
  int64_t num_classes() const { return num_classes_; }
  const Tensor& features() const { return features_; }
  const std::vector<int64_t>& labels() const { return labels_; }

  // Samples [start, start + length), sharing the feature storage.
  TensorDataset slice(int64_t start, int64_t length) const;
  // The samples at `indices` (copied, in that order); UsageError on an index
  // outside [0, size()).
  TensorDataset subset(std::span<const int64_t> indices) const;

 private:
  Tensor features_;
  std::vector<int64_t> labels_;
  int64_t num_classes_ = 0;
  int64_t sample_numel_ = 0;
};

}  // namespace dtrain::data
