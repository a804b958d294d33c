// Losses (mean over the batch): forward beside backward.
//
// cross_entropy: logits [N, C], targets [N], class weights w [C] (or all 1)
//   forward   logp = log_softmax(logits),  loss = -sum_i w[t_i] logp[i, t_i] / sum_i w[t_i]
//   backward  glogits[i] = gy * w[t_i] / sum_i w[t_i] * (softmax(logits)[i] - onehot(t_i))
// mse_loss: pred, target [any, same]: loss = mean((pred - target)^2)
//   backward  gpred = 2 gy (pred - target) / n,  gtarget = -gpred
// binary_cross_entropy_with_logits: x, t [N] or [N, 1]
//   forward   loss = mean(max(x, 0) - x t + log(1 + exp(-|x|)))   (never overflows)
//   backward  gx = gy (sigmoid(x) - t) / n,  gt = -gy x / n
#include <fmt/format.h>

#include <cmath>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "core/error.h"
#include "tensor/ops.h"

namespace dtrain {

using autograd::InputGrad;
using autograd::needs_graph;
using autograd::record;

Variable cross_entropy(const Variable& logits, std::span<const int64_t> targets,
                       std::span<const float> class_weights) {
  if (!logits.defined()) throw UsageError("cross_entropy: the logits are undefined");
  const Tensor& z = logits.data();
  if (z.dim() != 2) {
    throw UsageError(fmt::format("cross_entropy: logits {} are not [N, C]", shape_str(z.shape())));
  }
  const int64_t n = z.size(0);
  const int64_t classes = z.size(1);
  if (static_cast<int64_t>(targets.size()) != n) {
    throw UsageError(fmt::format("cross_entropy: {} targets for logits {}", targets.size(),
                                 shape_str(z.shape())));
  }
  if (n == 0) throw UsageError("cross_entropy: empty batch");
  if (!class_weights.empty() && static_cast<int64_t>(class_weights.size()) != classes) {
    throw UsageError(fmt::format("cross_entropy: {} class weights for logits {}",
                                 class_weights.size(), shape_str(z.shape())));
  }
  std::vector<float> weight(static_cast<size_t>(n), 1.0f);
  double weight_sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = targets[i];
    if (t < 0 || t >= classes) {
      throw UsageError(fmt::format("cross_entropy: target {} (sample {}) is out of range [0, {})",
                                   t, i, classes));
    }
    if (!class_weights.empty()) weight[i] = class_weights[t];
    weight_sum += weight[i];
  }
  Tensor probs = Tensor::empty(z.shape());  // log-probabilities, then probabilities
  ops::log_softmax_rows(z.data(), probs.data(), n, classes);
  double loss = 0.0;
  for (int64_t i = 0; i < n; ++i) loss -= weight[i] * probs.data()[i * classes + targets[i]];
  Tensor out = Tensor::scalar(static_cast<float>(loss / weight_sum));
  if (!needs_graph({&logits})) return Variable(std::move(out));
  float* ps = probs.data();
  for (int64_t i = 0; i < n * classes; ++i) ps[i] = std::exp(ps[i]);
  return record("cross_entropy", {&logits}, std::move(out),
                [probs, weight = std::move(weight),
                 ids = std::vector<int64_t>(targets.begin(), targets.end()), weight_sum, n,
                 classes](const Tensor& gy, std::span<InputGrad> grads) {
                  const auto scale = static_cast<float>(gy.item() / weight_sum);
                  Tensor gz = Tensor::empty(probs.shape());
                  for (int64_t i = 0; i < n; ++i) {
                    const float s = scale * weight[i];
                    const float* p = probs.data() + i * classes;
                    float* g = gz.data() + i * classes;
                    for (int64_t c = 0; c < classes; ++c) g[c] = s * p[c];
                    g[ids[i]] -= s;
                  }
                  grads[0].set(std::move(gz));
                });
}

namespace {

void check_pair(const Variable& a, const Variable& b, const char* what) {
  if (!a.defined() || !b.defined()) {
    throw UsageError(fmt::format("{}: prediction or target is undefined", what));
  }
  if (a.shape() != b.shape()) {
    throw UsageError(fmt::format("{}: prediction {} does not match target {}", what,
                                 shape_str(a.shape()), shape_str(b.shape())));
  }
  if (a.numel() == 0) throw UsageError(fmt::format("{}: empty input", what));
}

}  // namespace

Variable mse_loss(const Variable& pred, const Variable& target) {
  check_pair(pred, target, "mse_loss");
  const Tensor& p = pred.data();
  const Tensor& t = target.data();
  const int64_t n = p.numel();
  Tensor diff = Tensor::empty(p.shape());
  ops::sub(p.data(), t.data(), diff.data(), n);
  Tensor out = Tensor::scalar(static_cast<float>(ops::dot(diff.data(), diff.data(), n) / n));
  if (!needs_graph({&pred, &target})) return Variable(std::move(out));
  return record("mse_loss", {&pred, &target}, std::move(out),
                [diff, n](const Tensor& gy, std::span<InputGrad> grads) {
                  const float scale = 2.0f * gy.item() / static_cast<float>(n);
                  if (grads[0].needed) {
                    Tensor g = Tensor::empty(diff.shape());
                    ops::affine(diff.data(), scale, 0.0f, g.data(), n);
                    grads[0].set(std::move(g));
                  }
                  if (grads[1].needed) {
                    Tensor g = Tensor::empty(diff.shape());
                    ops::affine(diff.data(), -scale, 0.0f, g.data(), n);
                    grads[1].set(std::move(g));
                  }
                });
}

Variable binary_cross_entropy_with_logits(const Variable& logits, const Variable& target) {
  check_pair(logits, target, "binary_cross_entropy_with_logits");
  const Tensor& x = logits.data();
  const Tensor& t = target.data();
  if (x.dim() == 0 || x.dim() > 2 || (x.dim() == 2 && x.size(1) != 1)) {
    throw UsageError(
        fmt::format("binary_cross_entropy_with_logits: logits {} are neither [N] nor [N, 1]",
                    shape_str(x.shape())));
  }
  const int64_t n = x.numel();
  double loss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x.data()[i];
    loss += std::max(v, 0.0f) - v * t.data()[i] + std::log1p(std::exp(-std::fabs(v)));
  }
  Tensor out = Tensor::scalar(static_cast<float>(loss / n));
  if (!needs_graph({&logits, &target})) return Variable(std::move(out));
  return record("binary_cross_entropy_with_logits", {&logits, &target}, std::move(out),
                [x, t, n](const Tensor& gy, std::span<InputGrad> grads) {
                  const float scale = gy.item() / static_cast<float>(n);
                  if (grads[0].needed) {
                    Tensor g = Tensor::empty(x.shape());
                    ops::sigmoid(x.data(), g.data(), n);
                    for (int64_t i = 0; i < n; ++i) {
                      g.data()[i] = scale * (g.data()[i] - t.data()[i]);
                    }
                    grads[0].set(std::move(g));
                  }
                  if (grads[1].needed) {
                    Tensor g = Tensor::empty(t.shape());
                    ops::affine(x.data(), -scale, 0.0f, g.data(), n);
                    grads[1].set(std::move(g));
                  }
                });
}

}  // namespace dtrain
