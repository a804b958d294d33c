#include "optim/adam.h"

#include <fmt/format.h>

#include <cmath>

namespace dtrain::optim {

Adam::Adam(std::vector<Shape> shapes, const AdamOptions& options)
    : Adam("adam", std::move(shapes), options, /*decoupled_weight_decay=*/false) {}

Adam::Adam(std::string kind, std::vector<Shape> shapes, const AdamOptions& options,
           bool decoupled_weight_decay)
    : UpdateRule(std::move(kind), std::move(shapes), options.lr, {"exp_avg", "exp_avg_sq"}),
      options_(options),
      decoupled_(decoupled_weight_decay) {
  if (!(options.beta1 >= 0.0f && options.beta1 < 1.0f) ||
      !(options.beta2 >= 0.0f && options.beta2 < 1.0f) || !(options.eps >= 0.0f) ||
      !(options.weight_decay >= 0.0f)) {
    fail(
        fmt::format("invalid beta1 {}, beta2 {}, eps {} or weight_decay {} (betas must lie in "
                    "[0, 1), eps and weight_decay be non-negative)",
                    options.beta1, options.beta2, options.eps, options.weight_decay));
  }
}

void Adam::update(size_t index, const Tensor& param, const Tensor& grad) {
  check_dense(index, param, grad);
  const auto t = static_cast<double>(next_step(index));
  std::vector<Tensor>& moments = state(index, 0.0f);
  float* __restrict p = param.data();
  const float* __restrict g = grad.data();
  float* __restrict m = moments[0].data();
  float* __restrict v = moments[1].data();
  const int64_t n = param.numel();

  // Scalars are formed in double, as torch does in Python, then rounded once.
  const double lr = this->lr();
  const float beta1 = options_.beta1;
  const float beta2 = options_.beta2;
  const auto one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const auto one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const auto step_size = static_cast<float>(lr / (1.0 - std::pow(double{beta1}, t)));
  const auto bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(double{beta2}, t)));
  const float eps = options_.eps;
  const float coupled_wd = decoupled_ ? 0.0f : options_.weight_decay;
  const auto decay = static_cast<float>(decoupled_ ? 1.0 - lr * options_.weight_decay : 1.0);

  for (int64_t j = 0; j < n; ++j) {
    const float pj = p[j] * decay;
    const float gj = g[j] + coupled_wd * pj;
    const float mj = beta1 * m[j] + one_minus_beta1 * gj;
    const float vj = beta2 * v[j] + one_minus_beta2 * gj * gj;
    m[j] = mj;
    v[j] = vj;
    p[j] = pj - step_size * mj / (std::sqrt(vj) / bias_correction2_sqrt + eps);
  }
}

void Adam::update_sparse(size_t index, const Tensor& param, const SparseRows& raw_grad) {
  check_sparse(index, param, raw_grad);
  const SparseRows grad = coalesced(raw_grad);
  const auto t = static_cast<double>(next_step(index));
  std::vector<Tensor>& moments = state(index, 0.0f);
  const int64_t row = row_numel(param);

  const double lr = this->lr();
  const auto one_minus_beta1 = static_cast<float>(1.0 - options_.beta1);
  const auto one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  const auto neg_step_size =
      static_cast<float>(-lr * std::sqrt(1.0 - std::pow(double{options_.beta2}, t)) /
                         (1.0 - std::pow(double{options_.beta1}, t)));
  const float eps = options_.eps;
  const float coupled_wd = decoupled_ ? 0.0f : options_.weight_decay;
  const auto decay = static_cast<float>(decoupled_ ? 1.0 - lr * options_.weight_decay : 1.0);

  for (size_t k = 0; k < grad.indices.size(); ++k) {
    const int64_t offset = grad.indices[k] * row;
    float* __restrict p = param.data() + offset;
    float* __restrict m = moments[0].data() + offset;
    float* __restrict v = moments[1].data() + offset;
    const float* __restrict g = grad.values.data() + static_cast<int64_t>(k) * row;
    for (int64_t j = 0; j < row; ++j) {
      const float pj = p[j] * decay;
      const float gj = g[j] + coupled_wd * pj;
      const float mj = m[j] + (gj - m[j]) * one_minus_beta1;
      const float vj = v[j] + (gj * gj - v[j]) * one_minus_beta2;
      m[j] = mj;
      v[j] = vj;
      p[j] = pj + neg_step_size * (mj / (std::sqrt(vj) + eps));
    }
  }
}

}  // namespace dtrain::optim
