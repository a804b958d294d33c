// Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), with
// torch.optim.Adam / torch.optim.AdamW's semantics (amsgrad off), per
// parameter with its own step count t:
//
//   Adam:  g = grad + weight_decay * p                  (L2, coupled)
//   AdamW: p = p * (1 - lr * weight_decay)              (decoupled)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// Sparse gradients are applied lazily, as torch.optim.SparseAdam does: only
// the touched rows' moments and weights change (untouched rows' moments do
// not decay), the step count advances, and the update is SparseAdam's
//   p = p - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps).
// Weight decay touches only those rows too (coupled for Adam, decoupled for
// AdamW); torch's SparseAdam has no weight decay.
// State: "exp_avg" (m) and "exp_avg_sq" (v) per parameter, and its step count.
// Thread safety, errors: see optimizer.h; betas must lie in [0, 1), eps and
// weight_decay be non-negative.
#pragma once

#include "optim/update_rule.h"

namespace dtrain::optim {

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

class Adam : public UpdateRule {
 public:
  Adam(std::vector<Shape> shapes, const AdamOptions& options = {});

  void update(size_t index, const Tensor& param, const Tensor& grad) override;
  void update_sparse(size_t index, const Tensor& param, const SparseRows& grad) override;

  const AdamOptions& options() const { return options_; }

 protected:
  Adam(std::string kind, std::vector<Shape> shapes, const AdamOptions& options,
       bool decoupled_weight_decay);

 private:
  AdamOptions options_;
  bool decoupled_;
};

class AdamW : public Adam {
 public:
  // torch.optim.AdamW's defaults (weight_decay 0.01).
  static AdamOptions defaults() {
    AdamOptions options;
    options.weight_decay = 0.01f;
    return options;
  }
  AdamW(std::vector<Shape> shapes, const AdamOptions& options = defaults())
      : Adam("adamw", std::move(shapes), options, /*decoupled_weight_decay=*/true) {}
};

}  // namespace dtrain::optim
