// Element-wise activations as modules: ReLU, Sigmoid, Tanh and GELU (the
// tanh approximation, i.e. torch.nn.GELU(approximate='tanh')).
//
// Shapes: any -> the same. No parameters, no state.
// Thread safety: see module.h. Errors: none of their own.
#pragma once

#include "nn/module.h"

namespace dtrain::nn {

class Activation : public Module {
 public:
  Shape output_shape(const Shape& input) const override { return input; }

 protected:
  using Module::Module;
};

class ReLU : public Activation {
 public:
  ReLU() : Activation("relu") {}
  Variable forward(const Variable& input) override;
};

class Sigmoid : public Activation {
 public:
  Sigmoid() : Activation("sigmoid") {}
  Variable forward(const Variable& input) override;
};

class Tanh : public Activation {
 public:
  Tanh() : Activation("tanh") {}
  Variable forward(const Variable& input) override;
};

class GELU : public Activation {
 public:
  GELU() : Activation("gelu") {}
  Variable forward(const Variable& input) override;
};

}  // namespace dtrain::nn
