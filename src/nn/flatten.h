// Flatten: [N, d1, d2, ...] -> [N, d1 * d2 * ...], torch's nn.Flatten().
// No parameters. Thread safety and errors: see module.h; the input needs a
// batch dimension and at least one more.
#pragma once

#include "nn/module.h"

namespace dtrain::nn {

class Flatten : public Module {
 public:
  Flatten() : Module("flatten") {}
  Variable forward(const Variable& input) override;
  Shape output_shape(const Shape& input) const override;
};

}  // namespace dtrain::nn
