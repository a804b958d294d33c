#include "data/dataset.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"

namespace dtrain::data {

TensorDataset::TensorDataset(Tensor features, std::vector<int64_t> labels, int64_t num_classes)
    : features_(std::move(features)), labels_(std::move(labels)), num_classes_(num_classes) {
  if (!features_.defined() || features_.dim() < 1) {
    throw UsageError("dataset: features need a sample dimension (at least 1-D)");
  }
  if (features_.size(0) != size()) {
    throw UsageError(fmt::format("dataset: features {} hold {} samples, but there are {} labels",
                                 shape_str(features_.shape()), features_.size(0), size()));
  }
  if (num_classes_ < 1) {
    throw UsageError(fmt::format("dataset: num_classes must be at least 1, got {}", num_classes_));
  }
  for (size_t i = 0; i < labels_.size(); ++i) {
    if (labels_[i] < 0 || labels_[i] >= num_classes_) {
      throw UsageError(fmt::format("dataset: label {} of sample {} is outside [0, {})", labels_[i],
                                   i, num_classes_));
    }
  }
  sample_numel_ = size() > 0 ? features_.numel() / size() : shape_numel(sample_shape());
}

Shape TensorDataset::sample_shape() const {
  if (!features_.defined()) return {};
  return Shape(features_.shape().begin() + 1, features_.shape().end());
}

TensorDataset TensorDataset::slice(int64_t start, int64_t length) const {
  if (start < 0 || length < 0 || start + length > size()) {
    throw UsageError(fmt::format("dataset: slice [{}, {}) outside the {} samples", start,
                                 start + length, size()));
  }
  return TensorDataset(
      features_.narrow(start, length),
      std::vector<int64_t>(labels_.begin() + start, labels_.begin() + start + length),
      num_classes_);
}

TensorDataset TensorDataset::subset(std::span<const int64_t> indices) const {
  Shape shape = features_.shape();
  shape[0] = static_cast<int64_t>(indices.size());
  Tensor features = Tensor::empty(shape);
  std::vector<int64_t> labels;
  labels.reserve(indices.size());
  const size_t row_bytes = static_cast<size_t>(sample_numel_) * sizeof(float);
  for (size_t i = 0; i < indices.size(); ++i) {
    const int64_t index = indices[i];
    if (index < 0 || index >= size()) {
      throw UsageError(fmt::format("dataset: index {} outside [0, {})", index, size()));
    }
    std::memcpy(features.data() + static_cast<int64_t>(i) * sample_numel_,
                features_.data() + index * sample_numel_, row_bytes);
    labels.push_back(labels_[static_cast<size_t>(index)]);
  }
  return TensorDataset(std::move(features), std::move(labels), num_classes_);
}

}  // namespace dtrain::data
