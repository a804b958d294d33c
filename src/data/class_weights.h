// Class weights for imbalanced labels: the "balanced" heuristic of King &
// Zeng (2001), as scikit-learn's compute_class_weight("balanced"):
//     w_c = N / (C n_c)
// for N labels, C classes and n_c labels of class c, so that every class
// carries the same total weight N / C and the weights average to 1 over the
// samples. A class without samples gets weight 0 (it never is a target).
//
// Thread safety: a pure function. Errors: UsageError for num_classes outside
// [1, kMaxClasses] (before anything is allocated) or a label outside
// [0, num_classes). Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::data {

// The most classes a dataset may have: a bound on the per-class tables
// (counts, weights, a classifier's outputs) that a label read from a file can
// make dtrain allocate. Readers refuse larger labels with a DataError.
inline constexpr int64_t kMaxClasses = int64_t{1} << 20;

std::vector<float> balanced_class_weights(std::span<const int64_t> labels, int64_t num_classes);

}  // namespace dtrain::data
