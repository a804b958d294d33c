// The differentiable functions. Each records one autograd Node whose
// backward rule is written beside its forward (functions.cpp and its
// neighbours), and each is checked against central finite differences in
// tests/autograd.
//
// Shape legend: N batch, C channels, H/W height/width, K kernel size,
// I/O input/output features, V vocabulary (embedding rows), D embedding width.
// Errors: UsageError naming both shapes when inputs do not fit.
// Thread safety: see variable.h.
#pragma once

#include <cstdint>
#include <span>

#include "autograd/variable.h"
#include "core/rng.h"

namespace dtrain {

// ---- arithmetic (b broadcasts when it has the shape of a's trailing dims,
// or is a one-element tensor) ----
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable add_scalar(const Variable& a, float s);
Variable mul_scalar(const Variable& a, float s);
Variable neg(const Variable& a);
Variable square(const Variable& a);
Variable exp(const Variable& a);
Variable log(const Variable& a);

inline Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
inline Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
inline Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
inline Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }
inline Variable operator*(const Variable& a, float s) { return mul_scalar(a, s); }
inline Variable operator-(const Variable& a) { return neg(a); }

// ---- linear algebra ----
// [N, I] x [I, O] -> [N, O]
Variable matmul(const Variable& a, const Variable& b);
// y = x w^T + b: x [N, I], weight [O, I], bias [O] or undefined -> [N, O].
Variable linear(const Variable& x, const Variable& weight, const Variable& bias);
// relu(linear(x, weight, bias)): the ReLU applied to the product in place and
// its mask folded into the backward pass, with the same output and gradient
// bits. nn::Sequential uses it for Linear + ReLU.
Variable linear_relu(const Variable& x, const Variable& weight, const Variable& bias);

// ---- activations ----
Variable relu(const Variable& x);
Variable sigmoid(const Variable& x);
Variable tanh(const Variable& x);
Variable gelu(const Variable& x);  // tanh approximation, as torch's approximate='tanh'
// Along the last dimension.
Variable softmax(const Variable& x);
Variable log_softmax(const Variable& x);
// Zeroes each element with probability p in training and scales the rest by
// 1/(1-p); identity when !training or p == 0.
Variable dropout(const Variable& x, float p, bool training, Rng& rng);

// ---- reductions ----
Variable sum(const Variable& x);   // all elements -> scalar
Variable mean(const Variable& x);  // all elements -> scalar
// Sum over dimension 0: [N, ...] -> [...]
Variable sum_rows(const Variable& x);

// ---- shape ----
Variable reshape(const Variable& x, Shape shape);
// [N, ...] -> [N, prod(...)]
Variable flatten(const Variable& x);

// ---- convolution and pooling (NCHW) ----
// x [N, C, H, W], weight [O, C, K, K], bias [O] or undefined
// -> [N, O, (H + 2p - K)/s + 1, (W + 2p - K)/s + 1]
Variable conv2d(const Variable& x, const Variable& weight, const Variable& bias, int64_t stride,
                int64_t padding);
Variable max_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding = 0);
// max_pool2d(relu(x), ...) in one pass over x, with the same output and
// gradient bits (max and ReLU commute; a window whose maximum is not
// positive routes no gradient). nn::Sequential uses it for ReLU + MaxPool2d.
Variable relu_max_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding = 0);
Variable avg_pool2d(const Variable& x, int64_t kernel, int64_t stride, int64_t padding = 0);

// ---- normalisation ----
// x [N, C] or [N, C, H, W]; gamma, beta [C]. In training, normalises with the
// batch statistics and updates running_mean/running_var (biased mean,
// unbiased var, like torch) in place with `momentum`; otherwise uses them.
Variable batch_norm(const Variable& x, const Variable& gamma, const Variable& beta,
                    const Tensor& running_mean, const Tensor& running_var, bool training,
                    float momentum, float eps);

// ---- embedding ----
// weight [V, D], indices (each in [0, V)) -> [indices.size(), D]. Its
// gradient is row-sparse: only the touched rows (SparseRows on the weight).
Variable embedding(const Variable& weight, std::span<const int64_t> indices);

// ---- losses (mean over the batch) ----
// logits [N, C], targets N class ids in [0, C). Fused, numerically stable
// log-softmax + negative log-likelihood. class_weights (size C, optional)
// weight each sample by its class's weight and normalise by their sum, as
// torch.nn.functional.cross_entropy(weight=...) does.
Variable cross_entropy(const Variable& logits, std::span<const int64_t> targets,
                       std::span<const float> class_weights = {});
// mean((pred - target)^2); same shapes.
Variable mse_loss(const Variable& pred, const Variable& target);
// Binary cross-entropy on logits (stable): pred [N] or [N, 1], target same.
Variable binary_cross_entropy_with_logits(const Variable& logits, const Variable& target);

}  // namespace dtrain
