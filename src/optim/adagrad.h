// Adagrad (Duchi et al. 2011) with torch.optim.Adagrad's semantics, per
// parameter with its own step count t:
//
//   g = grad + weight_decay * p
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum = sum + g^2                       (sum starts at initial_accumulator_value)
//   p = p - clr * g / (sqrt(sum) + eps)
//
// Sparse gradients update only the touched rows' accumulators and weights
// (duplicate rows are summed first), exactly as torch does; the step count
// advances. As in torch, weight decay cannot be combined with sparse
// gradients (UsageError).
// State: "sum" per parameter, and its step count.
// Thread safety, errors: see optimizer.h; lr_decay, weight_decay,
// initial_accumulator_value and eps must be non-negative.
#pragma once

#include "optim/update_rule.h"

namespace dtrain::optim {

struct AdagradOptions {
  float lr = 1e-2f;
  float lr_decay = 0.0f;
  float weight_decay = 0.0f;
  float initial_accumulator_value = 0.0f;
  float eps = 1e-10f;
};

class Adagrad : public UpdateRule {
 public:
  Adagrad(std::vector<Shape> shapes, const AdagradOptions& options = {});

  void update(size_t index, const Tensor& param, const Tensor& grad) override;
  void update_sparse(size_t index, const Tensor& param, const SparseRows& grad) override;

  const AdagradOptions& options() const { return options_; }

 private:
  // lr / (1 + (t - 1) * lr_decay), in double as torch computes it.
  double current_lr(int64_t step) const;

  AdagradOptions options_;
};

}  // namespace dtrain::optim
