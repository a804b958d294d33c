#include "optim/adagrad.h"

#include <fmt/format.h>

#include <cmath>

namespace dtrain::optim {

Adagrad::Adagrad(std::vector<Shape> shapes, const AdagradOptions& options)
    : UpdateRule("adagrad", std::move(shapes), options.lr, {"sum"}), options_(options) {
  if (!(options.lr_decay >= 0.0f) || !(options.weight_decay >= 0.0f) ||
      !(options.initial_accumulator_value >= 0.0f) || !(options.eps >= 0.0f)) {
    fail(fmt::format(
        "invalid lr_decay {}, weight_decay {}, initial_accumulator_value {} or eps "
        "{} (all must be non-negative)",
        options.lr_decay, options.weight_decay, options.initial_accumulator_value, options.eps));
  }
}

double Adagrad::current_lr(int64_t step) const {
  return static_cast<double>(lr()) /
         (1.0 + static_cast<double>(step - 1) * static_cast<double>(options_.lr_decay));
}

void Adagrad::update(size_t index, const Tensor& param, const Tensor& grad) {
  check_dense(index, param, grad);
  const auto neg_clr = static_cast<float>(-current_lr(next_step(index)));
  float* __restrict sum = state(index, options_.initial_accumulator_value)[0].data();
  float* __restrict p = param.data();
  const float* __restrict g = grad.data();
  const int64_t n = param.numel();
  const float wd = options_.weight_decay;
  const float eps = options_.eps;
  for (int64_t j = 0; j < n; ++j) {
    const float gj = g[j] + wd * p[j];
    const float s = sum[j] + gj * gj;
    sum[j] = s;
    p[j] += neg_clr * gj / (std::sqrt(s) + eps);
  }
}

void Adagrad::update_sparse(size_t index, const Tensor& param, const SparseRows& raw_grad) {
  check_sparse(index, param, raw_grad);
  if (options_.weight_decay != 0.0f) {
    fail(
        fmt::format("parameter {}: weight_decay {} cannot be combined with a sparse gradient "
                    "(as in torch.optim.Adagrad)",
                    index, options_.weight_decay));
  }
  const SparseRows grad = coalesced(raw_grad);
  const auto neg_clr = static_cast<float>(-current_lr(next_step(index)));
  Tensor& sums = state(index, options_.initial_accumulator_value)[0];
  const int64_t row = row_numel(param);
  const float eps = options_.eps;
  for (size_t k = 0; k < grad.indices.size(); ++k) {
    const int64_t offset = grad.indices[k] * row;
    float* __restrict p = param.data() + offset;
    float* __restrict sum = sums.data() + offset;
    const float* __restrict g = grad.values.data() + static_cast<int64_t>(k) * row;
    for (int64_t j = 0; j < row; ++j) {
      const float s = sum[j] + g[j] * g[j];
      sum[j] = s;
      p[j] += neg_clr * (g[j] / (std::sqrt(s) + eps));
    }
  }
}

}  // namespace dtrain::optim
