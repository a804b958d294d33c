// UpdateRule: an optimizer's update rule on tensors, for a fixed list of
// parameters known by their shapes: update(index, param, grad) applies one
// step to parameter `index` from a dense gradient, update_sparse() from a
// row-sparse one (embedding tables). It knows no autograd: a
// parameter-server shard applies it to its tensors as gradients arrive, and
// nn::Optimizer (nn/optimizer.h) binds it to a model's Variables.
//
// State (momentum buffers, moments, accumulators) is per parameter index,
// created at the parameter's first update, like torch. state_dict() returns
// the buffers (aliasing the live ones) as "state.<i>.<buffer>" and, in the
// metadata, the exact scalars: "optimizer" (the kind), "lr" (shortest
// round-trip decimal), "num_parameters" and "state.<i>.step". load_state_dict()
// copies them into fresh tensors, so an optimizer restored mid-run continues
// bit for bit as the original would have.
//
// One pass: each rule's dense update (Sgd, Adam, AdamW, Adagrad) is a single
// loop over the parameter's elements that reads the gradient once and reads
// and writes the parameter and its state buffers once (weight decay,
// momentum or moments, and the step fused), over memory that is contiguous
// per parameter; it allocates nothing after the parameter's first update.
// Why per parameter and not one flat buffer over all parameters: the
// parameters and the state could be views of one storage
// (Module::load_state_dict copies in place, StateDict entries may be views),
// but the gradients cannot without changing autograd: a leaf's gradient is
// the tensor its backward kernel produced this step (autograd/variable.h),
// so a flat gradient would cost a copy per step, or every backward kernel
// would have to write into a slot given to it. The flat loop would save
// only the per-parameter call (well under a microsecond for each of a
// model's tensors, against a step of milliseconds). The check that every
// gradient is finite (strategy::check_finite_gradients) stays a pass of its
// own before the update: fused into it, a NaN found in a late parameter
// would leave the earlier ones updated.
//
// Ownership: owns its state. Not copyable.
// Thread safety: none; one thread updates through a rule at a time. Distinct
// rules over distinct parameters are independent.
// Errors: UsageError for an index out of range, a gradient whose shape is not
// the parameter's, sparse rows outside the table, invalid hyperparameters
// (constructors) and state dicts of another kind, size or shape (naming the
// key and both shapes). A failed load_state_dict changes nothing.
// Blocking: never.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/sparse_rows.h"
#include "tensor/state_dict.h"
#include "tensor/tensor.h"

namespace dtrain::optim {

class UpdateRule {
 public:
  virtual ~UpdateRule() = default;
  UpdateRule(const UpdateRule&) = delete;
  UpdateRule& operator=(const UpdateRule&) = delete;

  float lr() const { return lr_; }
  // lr >= 0; takes effect at the next update.
  void set_lr(float lr);

  // "sgd", "adam", "adamw", "adagrad".
  const std::string& kind() const { return kind_; }
  size_t num_parameters() const { return shapes_.size(); }
  const Shape& shape(size_t index) const { return shapes_.at(index); }
  // Updates applied so far to parameter `index` (dense or sparse).
  int64_t step_count(size_t index) const;

  // One step for parameter `index`: `param` must have shape(index) (it
  // normally is the parameter's data); `grad` the same shape.
  virtual void update(size_t index, const Tensor& param, const Tensor& grad) = 0;
  // The same for a row-sparse gradient of a [rows, ...] parameter; each
  // optimizer documents how it treats untouched rows.
  virtual void update_sparse(size_t index, const Tensor& param, const SparseRows& grad) = 0;

  StateDict state_dict() const;
  void load_state_dict(const StateDict& dict);

  // One parameter's state copied aside, to take an update back (a strategy
  // that updates some parameters before it knows that every gradient of the
  // step is finite). Its tensors are reused by the next save_state().
  struct SavedState {
    int64_t steps = 0;
    bool has_buffers = false;  // false: the buffers did not exist yet
    std::vector<Tensor> buffers;
  };
  // Copies parameter `index`'s step count and buffers into `saved`.
  void save_state(size_t index, SavedState& saved) const;
  // Puts back what save_state(index, saved) copied: the step count, the
  // buffers' values (in place, so handles from state_dict() stay live), or
  // no buffers when there were none.
  void restore_state(size_t index, const SavedState& saved);

 protected:
  // buffer_names: the per-parameter state tensors this optimizer keeps, each
  // of the parameter's shape ("momentum_buffer"; "exp_avg", "exp_avg_sq").
  UpdateRule(std::string kind, std::vector<Shape> shapes, float lr,
             std::vector<std::string> buffer_names);

  // Throws UsageError unless index is in range and grad and param have
  // shape(index).
  void check_dense(size_t index, const Tensor& param, const Tensor& grad) const;
  // Same for a sparse gradient: rows within the table, values [k, row...].
  void check_sparse(size_t index, const Tensor& param, const SparseRows& grad) const;
  // The state buffers of parameter `index`, created filled with `initial`
  // when missing. Sets *created (when given) to whether they were created now.
  std::vector<Tensor>& state(size_t index, float initial, bool* created = nullptr);
  // Elements per row of a [rows, ...] parameter.
  static int64_t row_numel(const Tensor& param);
  // Increments and returns the step count of parameter `index`.
  int64_t next_step(size_t index) { return ++steps_[index]; }
  // Throws UsageError "<kind>: <problem>".
  [[noreturn]] void fail(const std::string& problem) const;

 private:
  std::string kind_;
  std::vector<Shape> shapes_;
  float lr_;
  std::vector<std::string> buffer_names_;
  std::vector<std::vector<Tensor>> state_;  // [parameter][buffer]; empty until first update
  std::vector<int64_t> steps_;
};

// `grad` with duplicate indices summed and indices sorted; returns `grad`
// itself (no copy) when it is already so.
SparseRows coalesced(const SparseRows& grad);

}  // namespace dtrain::optim
