#include "strategy/strategy.h"

#include <fmt/format.h>

#include "autograd/functions.h"
#include "core/error.h"

namespace dtrain::strategy {

int64_t count_correct(const Tensor& output, std::span<const int64_t> targets) {
  const int64_t n = static_cast<int64_t>(targets.size());
  if (output.dim() != 2 || output.size(0) != n) {
    throw UsageError(fmt::format("count_correct: output {} does not match {} targets",
                                 shape_str(output.shape()), n));
  }
  const int64_t classes = output.size(1);
  const float* row = output.data();
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i, row += classes) {
    int64_t best = 0;
    for (int64_t c = 1; c < classes; ++c) {
      if (row[c] > row[best]) best = c;
    }
    correct += best == targets[static_cast<size_t>(i)] ? 1 : 0;
  }
  return correct;
}

LossFn cross_entropy_loss() {
  return [](const Variable& output, std::span<const int64_t> targets) {
    return cross_entropy(output, targets);
  };
}

}  // namespace dtrain::strategy
