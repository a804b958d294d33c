#include "nn/activation.h"

#include "autograd/functions.h"

namespace dtrain::nn {

Variable ReLU::forward(const Variable& input) { return dtrain::relu(input); }
Variable Sigmoid::forward(const Variable& input) { return dtrain::sigmoid(input); }
Variable Tanh::forward(const Variable& input) { return dtrain::tanh(input); }
Variable GELU::forward(const Variable& input) { return dtrain::gelu(input); }

}  // namespace dtrain::nn
