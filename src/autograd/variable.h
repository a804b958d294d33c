// Variable: a Tensor that records how it was computed, so that backward()
// can fill the gradient of every leaf that requires one.
//
// A Variable is a handle (copies alias, as torch.Tensor does). Leaves are
// made by the user (parameters, inputs); non-leaves are made by the
// differentiable functions in autograd/functions.h, each of which records a
// Node whose backward rule sits beside its forward.
//
// Gradients of leaves accumulate (+=) across backward() calls until
// zero_grad(). A leaf may receive a row-sparse gradient (embedding lookups):
// then sparse_grad() holds the touched rows and grad() stays undefined unless
// a dense contribution also arrives, in which case both are kept and
// dense_grad() folds them into one dense tensor.
//
// Gradient-ready hooks: a hook registered on a leaf fires during backward()
// as soon as that leaf's gradient for this backward pass is final (every
// node that uses it has run), in reverse order of use; a distributed strategy
// starts communicating a bucket from there. Hooks run on the thread calling
// backward(); they must not call backward() themselves.
//
// Thread safety: one graph is built and differentiated by one thread at a
// time; distinct graphs on distinct threads are independent.
// Errors: UsageError for backward() on a non-scalar without a seed gradient,
// or on a graph that was already freed.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/trace.h"
#include "tensor/sparse_rows.h"
#include "tensor/tensor.h"

namespace dtrain {

namespace autograd {
struct Node;
struct VariableImpl;
}  // namespace autograd

class Variable {
 public:
  using GradReadyHook = std::function<void(Variable&)>;

  Variable() = default;
  // A leaf. requires_grad: whether backward() should compute its gradient.
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const;
  const Shape& shape() const { return data().shape(); }
  int64_t dim() const { return data().dim(); }
  int64_t size(int64_t d) const { return data().size(d); }
  int64_t numel() const { return data().numel(); }
  float item() const { return data().item(); }

  bool requires_grad() const;
  void set_requires_grad(bool requires_grad);
  bool is_leaf() const;

  // Dense gradient; undefined until a dense contribution arrives.
  const Tensor& grad() const;
  // Row-sparse gradient, or nullptr.
  const SparseRows* sparse_grad() const;
  // The whole gradient as one dense tensor (zeros if none arrived yet);
  // folds a sparse part into the dense one.
  const Tensor& dense_grad();
  bool has_grad() const;
  // Replaces the gradient (strategies write the averaged gradient back).
  void set_grad(Tensor grad);
  // Drops both dense and sparse gradients (they re-accumulate from zero).
  void zero_grad();

  // Reverse-mode differentiation from this variable. Without an argument the
  // variable must hold one element and the seed is 1.
  void backward() const;
  void backward(const Tensor& grad_output) const;
  // backward() recording each node's gradient rule as an "autograd" span
  // named by its op into `trace` (core/trace.h; null: not traced).
  void backward(TraceSink* trace) const;

  // See the header comment. Returns an id for remove_grad_ready_hook().
  int64_t register_grad_ready_hook(GradReadyHook hook);
  void remove_grad_ready_hook(int64_t id);

  // The same data with no history and requires_grad false.
  Variable detach() const;

  // Internal: used by autograd functions.
  const std::shared_ptr<autograd::VariableImpl>& impl() const { return impl_; }
  explicit Variable(std::shared_ptr<autograd::VariableImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<autograd::VariableImpl> impl_;
};

// While alive on a thread, functions record no graph (evaluation, optimizer
// updates). Nests.
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
bool grad_mode_enabled();

}  // namespace dtrain
