// Linear: y = x W^T + b, PyTorch's nn.Linear.
//
// Shapes: x [N, I] -> y [N, O]; weight [O, I], bias [O].
// Initialisation (torch's default): weight ~ U(-1/sqrt(I), 1/sqrt(I))
// (kaiming_uniform, a = sqrt(5)), then bias ~ U(-1/sqrt(I), 1/sqrt(I)), drawn
// in that order from the Rng given to the constructor.
// Thread safety and errors: see module.h; an input whose last extent is not
// I throws "linear 'fc2': input (128, 300) does not match weight (256, 784)".
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "nn/module.h"

namespace dtrain::nn {

class Linear : public Module {
 public:
  // in_features, out_features > 0. `rng` is only used during construction.
  Linear(int64_t in_features, int64_t out_features, Rng& rng, bool bias = true);

  Variable forward(const Variable& input) override;
  // relu(forward(input)) as one fused function (dtrain::linear_relu), the
  // same bits; Sequential calls it for a Linear followed by a ReLU.
  Variable forward_relu(const Variable& input);
  Shape output_shape(const Shape& input) const override;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const Variable& weight() const { return weight_; }
  // Undefined when built without bias.
  const Variable& bias() const { return bias_; }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Variable weight_;
  Variable bias_;
};

}  // namespace dtrain::nn
