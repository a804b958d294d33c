#include "nn/flatten.h"

#include <fmt/format.h>

#include "autograd/functions.h"

namespace dtrain::nn {

Shape Flatten::output_shape(const Shape& input) const {
  if (input.size() < 2) {
    fail(fmt::format("input {} needs a batch dimension and at least one more", shape_str(input)));
  }
  int64_t features = 1;
  for (size_t d = 1; d < input.size(); ++d) features *= input[d];
  return {input[0], features};
}

Variable Flatten::forward(const Variable& input) {
  output_shape(input.shape());
  return dtrain::flatten(input);
}

}  // namespace dtrain::nn
