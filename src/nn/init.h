// Parameter initialisation, drawing from a dtrain::Rng so that the same seed
// gives the same weights bit for bit on every platform. The layers use these
// with PyTorch's defaults (Linear and Conv2d: kaiming_uniform with
// a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound
// for their bias; Embedding: N(0, 1)).
//
// Each function fills every element of the tensor in order (element 0
// first), one draw per element.
// Thread safety: as the Tensor and Rng passed in (neither may be shared).
// Errors: UsageError for a shape without fans (fewer than 2 dimensions where
// fans are needed) or invalid bounds.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "tensor/tensor.h"

namespace dtrain::nn::init {

// For a weight [O, I, k...]: fan_in = I * prod(k), fan_out = O * prod(k).
int64_t fan_in(const Shape& shape);
int64_t fan_out(const Shape& shape);

// U[low, high).
void uniform(const Tensor& tensor, float low, float high, Rng& rng);
// N(mean, stddev^2).
void normal(const Tensor& tensor, float mean, float stddev, Rng& rng);
void constant(const Tensor& tensor, float value);
// torch.nn.init.kaiming_uniform_(mode='fan_in', nonlinearity='leaky_relu'):
// U(-b, b) with b = sqrt(2 / (1 + a^2)) * sqrt(3 / fan_in).
void kaiming_uniform(const Tensor& tensor, float a, Rng& rng);
// torch.nn.init.xavier_uniform_: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).
void xavier_uniform(const Tensor& tensor, float gain, Rng& rng);

}  // namespace dtrain::nn::init
