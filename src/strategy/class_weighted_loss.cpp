#include "strategy/class_weighted_loss.h"

#include <fmt/format.h>

#include <cmath>
#include <utility>

#include "autograd/functions.h"
#include "core/error.h"

namespace dtrain::strategy {

LossFn class_weighted_cross_entropy_loss(std::vector<float> class_weights) {
  for (size_t c = 0; c < class_weights.size(); ++c) {
    if (!(class_weights[c] >= 0.0f) || !std::isfinite(class_weights[c])) {
      throw UsageError(fmt::format("class weight {} of class {} is not a finite number >= 0",
                                   class_weights[c], c));
    }
  }
  return [weights = std::move(class_weights)](const Variable& output,
                                              std::span<const int64_t> targets) {
    const Variable normalised = cross_entropy(output, targets, weights);
    // cross_entropy has checked the targets against the classes.
    double weight_sum = 0.0;
    for (int64_t t : targets) weight_sum += weights[static_cast<size_t>(t)];
    return mul_scalar(normalised,
                      static_cast<float>(weight_sum / static_cast<double>(targets.size())));
  };
}

}  // namespace dtrain::strategy
