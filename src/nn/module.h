// Module: the base of every layer and model. A module owns named parameters
// (leaf Variables that require gradients), named buffers (Tensors such as
// BatchNorm's running statistics), a little exact metadata ("extra state":
// counters, RNG state) and child modules. Names of nested entries are dotted
// paths, as in PyTorch: "features.0.weight", "fc2.bias".
//
// Order: parameters() and named_parameters() list a module's own parameters
// in registration order, then each child's, depth first in registration
// order; named_buffers() likewise. The order is deterministic, so two
// processes that build the same model agree on it (strategies and parameter
// servers index parameters by position).
//
// state_dict() returns a StateDict whose tensors ALIAS the live parameters
// and buffers: every parameter (named_parameters() order), then every buffer
// (named_buffers() order); the extra state goes into its metadata under the
// same dotted names ("bn1.num_batches_tracked"). clone() it to snapshot.
// load_state_dict() copies values in. It checks every key and shape before it
// changes anything, so a failed load leaves the module as it was.
//
// Shapes: output_shape(input) computes what forward() would return for an
// input of that shape, so a model built from a config can be checked before
// any data exists. Both it and forward() throw UsageError naming the layer and
// both shapes: "linear 'fc2': input (128, 300) does not match weight (256, 784)".
//
// Gradient-ready hooks: nn knows nothing about communication. A distributed
// strategy registers a hook on each parameter, which is a handle to the same
// autograd leaf the module holds, so the hook sees every backward pass:
//
//   auto params = model.parameters();
//   for (size_t i = 0; i < params.size(); ++i)
//     params[i].register_grad_ready_hook(
//         [&bucketer, i](Variable& p) { bucketer.mark_ready(i, p.grad()); });
//
// The hook fires on the thread running backward(), as soon as that
// parameter's gradient for the pass is final; the strategy keeps the returned
// ids to remove its hooks (Variable::remove_grad_ready_hook) when it detaches.
//
// Ownership: a module owns its children through std::unique_ptr; modules are
// neither copyable nor movable (children keep their path names). Parameters
// and buffers are handles shared with whoever asked for them.
// Thread safety: none; one thread builds, trains and saves a module at a time.
// Errors: UsageError for shape mismatches, duplicate or malformed names and
// bad state dicts, each naming the layer or key and the difference.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "tensor/state_dict.h"
#include "tensor/tensor.h"

namespace dtrain::nn {

class Module {
 public:
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) = delete;
  Module& operator=(Module&&) = delete;

  virtual Variable forward(const Variable& input) = 0;
  // The shape forward() returns for `input`; throws UsageError when the
  // layer cannot take it.
  virtual Shape output_shape(const Shape& input) const = 0;

  // The layer type in messages ("linear", "conv2d", "sequential").
  const std::string& kind() const { return kind_; }
  // The dotted path of this module from the root it was added to ("features.0");
  // empty for a root that was never named.
  const std::string& name() const { return name_; }
  // Names a root module; its children's names follow.
  void set_name(std::string name);
  // "linear 'fc2'", or just the kind when the module has no name.
  std::string label() const;

  std::vector<Variable> parameters() const;
  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  // Direct children, in registration order. The pointers stay valid while
  // this module lives (it owns them).
  std::vector<std::pair<std::string, Module*>> named_children() const;
  // Total number of parameter elements.
  int64_t num_parameters() const;

  // Training mode (Dropout drops, BatchNorm uses and updates batch
  // statistics) or evaluation mode; applies to every descendant.
  void train(bool training = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  StateDict state_dict() const;
  // Copies `dict`'s values into the parameters, buffers and extra state.
  // strict: every key of the module must be present and no other tensor key
  // may be. Metadata keys that belong to no module are ignored (a trainer may
  // keep its own there). A shape mismatch throws even when not strict.
  void load_state_dict(const StateDict& dict, bool strict = true);

  // Drops the gradients of every parameter.
  void zero_grad();

 protected:
  explicit Module(std::string kind) : kind_(std::move(kind)) {}

  // Registers a leaf Variable over `value` (requires_grad true) and returns
  // a handle to it. `name` must be non-empty, without '.', and unique among
  // this module's parameters, buffers and children.
  Variable register_parameter(std::string name, Tensor value);
  // Registers a buffer and returns a handle to it.
  Tensor register_buffer(std::string name, Tensor value);
  // Takes ownership of `module` and returns it; its name becomes this
  // module's name joined with `name`.
  template <class M>
  M& register_module(std::string name, std::unique_ptr<M> module) {
    M& ref = *module;
    adopt(std::move(name), std::unique_ptr<Module>(std::move(module)));
    return ref;
  }

  // Extra state: exact scalars kept in StateDict metadata, keyed by local
  // names ("num_batches_tracked"). extra_state() lists every key the module
  // saves; load_extra_state() receives the subset present in the dict and
  // must throw UsageError, naming the key, for a value it cannot parse. When
  // `apply` is false it only validates (load_state_dict checks everything
  // before changing anything).
  virtual std::map<std::string, std::string> extra_state() const { return {}; }
  virtual void load_extra_state(const std::map<std::string, std::string>& values, bool apply);

  // Throws UsageError "<label>: <problem>".
  [[noreturn]] void fail(const std::string& problem) const;

 private:
  void adopt(std::string name, std::unique_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  void rename_children();
  // Calls visit_fn(prefix, module) on `self` and every descendant, depth
  // first; prefix is the module's dotted path from `self` plus a '.'.
  template <class Self, class Visit>
  static void visit(Self& self, const std::string& prefix, const Visit& visit_fn);

  std::string kind_;
  std::string name_;
  bool training_ = true;
  std::vector<std::pair<std::string, Variable>> parameters_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

}  // namespace dtrain::nn
