// Dropout: in training, zeroes each element with probability p and scales
// the others by 1 / (1 - p); in evaluation, the identity (torch's nn.Dropout).
//
// Reproducibility: the module owns its Rng, split from the Rng given to the
// constructor, so a model built from one seed drops the same elements on
// every run. The Rng's state is extra state ("rng" in state_dict metadata,
// four 64-bit words in hex), so a restored checkpoint continues the same
// stream; rng() exposes it too.
// Shapes: any -> the same. Thread safety and errors: see module.h.
#pragma once

#include "core/rng.h"
#include "nn/module.h"

namespace dtrain::nn {

class Dropout : public Module {
 public:
  // 0 <= p < 1. Draws one value from `rng` to seed its own.
  Dropout(float p, Rng& rng);

  Variable forward(const Variable& input) override;
  Shape output_shape(const Shape& input) const override { return input; }

  float p() const { return p_; }
  Rng& rng() { return rng_; }

 protected:
  std::map<std::string, std::string> extra_state() const override;
  void load_extra_state(const std::map<std::string, std::string>& values, bool apply) override;

 private:
  float p_;
  Rng rng_;
};

}  // namespace dtrain::nn
