// SGD: stochastic gradient descent with momentum, dampening, Nesterov
// momentum and (L2) weight decay, with exactly torch.optim.SGD's semantics:
//
//   g = grad + weight_decay * p
//   if momentum != 0:
//     buf = g                                  at the parameter's first update
//     buf = momentum * buf + (1 - dampening) * g   afterwards
//     g = nesterov ? g + momentum * buf : buf
//   p = p - lr * g
//
// Sparse gradients: without momentum and weight decay only the touched rows
// change (duplicate rows add up), exactly as the dense rule on the equivalent
// dense gradient. With momentum or weight decay every row's update depends
// on state or weights, so the sparse gradient is densified and the dense rule
// applies (torch does the same).
// State: "momentum_buffer" per parameter (only when momentum != 0).
// Threads: a dense update of at least 2^16 elements is split over the
// intra-op threads (tensor/intra_op.h); element-wise, so bit-identical.
// Thread safety, errors: see optimizer.h. Nesterov needs momentum > 0 and
// dampening 0 (UsageError otherwise, as torch).
#pragma once

#include "optim/update_rule.h"

namespace dtrain::optim {

struct SgdOptions {
  float lr = 0.01f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  bool nesterov = false;
  float weight_decay = 0.0f;
};

class Sgd : public UpdateRule {
 public:
  Sgd(std::vector<Shape> shapes, const SgdOptions& options);

  void update(size_t index, const Tensor& param, const Tensor& grad) override;
  void update_sparse(size_t index, const Tensor& param, const SparseRows& grad) override;

  const SgdOptions& options() const { return options_; }

 private:
  SgdOptions options_;
};

}  // namespace dtrain::optim
