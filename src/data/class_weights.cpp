#include "data/class_weights.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain::data {

std::vector<float> balanced_class_weights(std::span<const int64_t> labels, int64_t num_classes) {
  if (num_classes < 1 || num_classes > kMaxClasses) {
    throw UsageError(fmt::format("balanced class weights: {} classes is outside [1, {}]",
                                 num_classes, kMaxClasses));
  }
  std::vector<int64_t> counts(static_cast<size_t>(num_classes), 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    const int64_t c = labels[i];
    if (c < 0 || c >= num_classes) {
      throw UsageError(fmt::format(
          "balanced class weights: label {} of sample {} is outside [0, {})", c, i, num_classes));
    }
    ++counts[static_cast<size_t>(c)];
  }
  const auto n = static_cast<double>(labels.size());
  std::vector<float> weights(counts.size(), 0.0f);
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] > 0) {
      weights[c] = static_cast<float>(
          n / (static_cast<double>(num_classes) * static_cast<double>(counts[c])));
    }
  }
  return weights;
}

}  // namespace dtrain::data
