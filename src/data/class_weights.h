// Class weights for imbalanced labels: the "balanced" heuristic of King &
// Zeng (2001), as scikit-learn's compute_class_weight("balanced"):
//     w_c = N / (C n_c)
// for N labels, C classes and n_c labels of class c, so that every class
// carries the same total weight N / C and the weights average to 1 over the
// samples. A class without samples gets weight 0 (it never is a target).
//
// Thread safety: a pure function. Errors: UsageError for num_classes < 1 or
// a label outside [0, num_classes). Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace dtrain::data {

std::vector<float> balanced_class_weights(std::span<const int64_t> labels, int64_t num_classes);

}  // namespace dtrain::data
