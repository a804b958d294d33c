// Variable, the backward engine and grad mode.
//
// backward() in three phases:
//  1. Discovery: an iterative depth-first walk from the root's node over the
//     edges gives the nodes in post-order, and counts for every leaf how many
//     edges of this graph point to it (its pending contributions).
//  2. Execution: nodes run in reverse post-order (a topological order, so a
//     node's output gradient is complete when it runs). Each input gradient
//     goes either to the producing node's accumulator or into the leaf's
//     .grad (+=); when a leaf's pending count reaches zero its gradient is
//     final for this pass and its gradient-ready hooks fire right there,
//     before the remaining nodes run.
//  3. Release: each node drops its closure (the tensors it saved) and its
//     edges as soon as it has run; a second backward() through it throws.
//
// Grad mode is a thread_local flag, as in PyTorch: NoGradGuard is scoped to
// the calling thread and costs no synchronisation.
#include "autograd/variable.h"

#include <fmt/format.h>

#include <unordered_map>
#include <utility>

#include "autograd/node.h"
#include "core/error.h"
#include "tensor/ops.h"

namespace dtrain {
namespace {

thread_local bool t_grad_enabled = true;

autograd::VariableImpl& checked(const std::shared_ptr<autograd::VariableImpl>& impl,
                                const char* what) {
  if (!impl) throw UsageError(fmt::format("{}: the Variable is undefined", what));
  return *impl;
}

// Adds `g` into a gradient slot that may be empty. `fresh` says `g` is
// referenced nowhere else, so it can become the slot without a copy.
void accumulate(Tensor& slot, bool& slot_fresh, const Tensor& g, bool fresh) {
  if (!slot.defined()) {
    slot = g;
    slot_fresh = fresh;
    return;
  }
  if (!slot_fresh) {
    Tensor sum = Tensor::empty(slot.shape());
    ops::add(slot.data(), g.data(), sum.data(), sum.numel());
    slot = std::move(sum);
    slot_fresh = true;
    return;
  }
  ops::add_inplace(slot.data(), g.data(), slot.numel());
}

void append_sparse(autograd::VariableImpl& leaf, SparseRows rows) {
  if (!leaf.sparse_grad) {
    leaf.sparse_grad = std::move(rows);
    return;
  }
  SparseRows& have = *leaf.sparse_grad;
  Shape shape = have.values.shape();
  shape[0] += rows.values.size(0);
  Tensor values = Tensor::empty(shape);
  const int64_t old_count = have.values.numel();
  std::copy_n(have.values.data(), old_count, values.data());
  std::copy_n(rows.values.data(), rows.values.numel(), values.data() + old_count);
  have.indices.insert(have.indices.end(), rows.indices.begin(), rows.indices.end());
  have.values = std::move(values);
}

void fire_hooks(const std::shared_ptr<autograd::VariableImpl>& leaf) {
  if (leaf->hooks.empty()) return;
  Variable handle(leaf);
  // Copy: a hook may (un)register hooks.
  auto hooks = leaf->hooks;
  for (auto& [id, hook] : hooks) hook(handle);
}

struct NodeState {
  Tensor grad;
  bool fresh = false;
};

using NodeStates = std::unordered_map<autograd::Node*, NodeState>;
using PendingLeaves = std::unordered_map<autograd::VariableImpl*, int64_t>;

// Phase 1, discovery: the nodes behind `root` in post-order, each with an
// empty state, and per leaf the number of gradients it will receive.
// Owning: releasing a node's edges may drop the last other reference to
// the nodes behind it, which still have to run.
std::vector<std::shared_ptr<autograd::Node>> discover(const std::shared_ptr<autograd::Node>& root,
                                                      NodeStates& state, PendingLeaves& pending) {
  using autograd::Node;
  struct Frame {
    std::shared_ptr<Node> node;
    size_t next_input;
  };
  std::vector<std::shared_ptr<Node>> post_order;
  std::vector<Frame> stack;
  auto visit = [&](const std::shared_ptr<Node>& node) {
    if (node->released) {
      throw UsageError(fmt::format(
          "backward: the graph through '{}' was already freed by an earlier backward(); "
          "run the forward pass again to differentiate again",
          node->name));
    }
    state.emplace(node.get(), NodeState{});
    stack.push_back({node, 0});
  };
  visit(root);
  while (!stack.empty()) {
    Frame& top = stack.back();
    if (top.next_input == top.node->inputs.size()) {
      post_order.push_back(std::move(top.node));
      stack.pop_back();
      continue;
    }
    const auto& input = top.node->inputs[top.next_input++];
    if (!input) continue;
    if (input->grad_fn) {
      if (state.find(input->grad_fn.get()) == state.end()) visit(input->grad_fn);
    } else {
      ++pending[input.get()];
    }
  }
  return post_order;
}

// A leaf's .grad is always its own storage: accumulate in place.
void accumulate_leaf(autograd::VariableImpl& leaf, Tensor grad, bool fresh) {
  if (!leaf.grad.defined()) {
    leaf.grad = fresh ? std::move(grad) : grad.clone();
  } else {
    ops::add_inplace(leaf.grad.data(), grad.data(), leaf.grad.numel());
  }
}

// Checks what `node` produced for its input `i` and hands it on: to the
// node that computed the input, or into the leaf's .grad (firing its hooks
// once its last gradient arrived).
void pass_on(const autograd::Node& node, size_t i, autograd::InputGrad& g, NodeStates& state,
             PendingLeaves& pending) {
  const std::shared_ptr<autograd::VariableImpl>& input = node.inputs[i];
  if (g.sparse && input->grad_fn) {
    // A row-sparse gradient for a computed tensor: densify it.
    Tensor dense = Tensor::zeros(input->data.shape());
    g.sparse->add_to(dense);
    g.set(std::move(dense));
    g.sparse.reset();
  }
  DTRAIN_CHECK(g.sparse || g.dense.defined(), "backward: '{}' produced no gradient for input {}",
               node.name, i);
  DTRAIN_CHECK(g.sparse || g.dense.shape() == input->data.shape(),
               "backward: '{}' produced a gradient {} for input {} of shape {}", node.name,
               shape_str(g.dense.shape()), i, shape_str(input->data.shape()));
  if (input->grad_fn) {
    NodeState& target = state[input->grad_fn.get()];
    accumulate(target.grad, target.fresh, g.dense, g.fresh);
    return;
  }
  if (g.sparse) {
    append_sparse(*input, std::move(*g.sparse));
  } else {
    accumulate_leaf(*input, std::move(g.dense), g.fresh);
  }
  if (--pending[input.get()] == 0) fire_hooks(input);
}

void run_backward(const std::shared_ptr<autograd::VariableImpl>& root, Tensor seed, bool seed_fresh,
                  TraceSink* trace = nullptr) {
  if (!root->grad_fn) {
    if (!root->requires_grad) {
      throw UsageError("backward: the variable does not require grad and has no grad_fn");
    }
    accumulate_leaf(*root, std::move(seed), seed_fresh);
    fire_hooks(root);
    return;
  }

  NodeStates state;
  PendingLeaves pending;
  const std::vector<std::shared_ptr<autograd::Node>> post_order =
      discover(root->grad_fn, state, pending);

  // Phase 2: execution in reverse post-order, and phase 3: release.
  state[root->grad_fn.get()] = NodeState{std::move(seed), seed_fresh};
  std::vector<autograd::InputGrad> grads;
  for (auto it = post_order.rbegin(); it != post_order.rend(); ++it) {
    autograd::Node* node = it->get();
    NodeState& mine = state[node];
    grads.assign(node->inputs.size(), autograd::InputGrad{});
    for (size_t i = 0; i < node->inputs.size(); ++i) grads[i].needed = node->inputs[i] != nullptr;
    DTRAIN_CHECK(mine.grad.defined(), "backward: node '{}' received no gradient", node->name);
    {
      TraceSpan span(trace, node->name, "autograd");
      node->backward(mine.grad, grads);
    }
    mine.grad = Tensor();
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      if (node->inputs[i]) pass_on(*node, i, grads[i], state, pending);
    }
    node->backward = nullptr;
    node->inputs.clear();
    node->inputs.shrink_to_fit();
    node->released = true;
  }
}

}  // namespace

Variable::Variable(Tensor data, bool requires_grad)
    : impl_(std::make_shared<autograd::VariableImpl>()) {
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

const Tensor& Variable::data() const { return checked(impl_, "Variable::data").data; }

bool Variable::requires_grad() const {
  const auto& impl = checked(impl_, "Variable::requires_grad");
  return impl.requires_grad || impl.grad_fn != nullptr;
}

void Variable::set_requires_grad(bool requires_grad) {
  auto& impl = checked(impl_, "Variable::set_requires_grad");
  if (impl.grad_fn) {
    throw UsageError(fmt::format(
        "set_requires_grad: only leaves can change requires_grad; this variable is the output "
        "of '{}' (use detach())",
        impl.grad_fn->name));
  }
  impl.requires_grad = requires_grad;
}

bool Variable::is_leaf() const { return checked(impl_, "Variable::is_leaf").grad_fn == nullptr; }

const Tensor& Variable::grad() const { return checked(impl_, "Variable::grad").grad; }

const SparseRows* Variable::sparse_grad() const {
  const auto& impl = checked(impl_, "Variable::sparse_grad");
  return impl.sparse_grad ? &*impl.sparse_grad : nullptr;
}

const Tensor& Variable::dense_grad() {
  auto& impl = checked(impl_, "Variable::dense_grad");
  if (!impl.grad.defined()) impl.grad = Tensor::zeros(impl.data.shape());
  if (impl.sparse_grad) {
    impl.sparse_grad->add_to(impl.grad);
    impl.sparse_grad.reset();
  }
  return impl.grad;
}

bool Variable::has_grad() const {
  const auto& impl = checked(impl_, "Variable::has_grad");
  return impl.grad.defined() || impl.sparse_grad.has_value();
}

void Variable::set_grad(Tensor grad) {
  auto& impl = checked(impl_, "Variable::set_grad");
  if (grad.defined()) check_same_shape(impl.data, grad, "set_grad");
  impl.grad = std::move(grad);
  impl.sparse_grad.reset();
}

void Variable::zero_grad() {
  auto& impl = checked(impl_, "Variable::zero_grad");
  impl.grad = Tensor();
  impl.sparse_grad.reset();
}

void Variable::backward() const { backward(static_cast<TraceSink*>(nullptr)); }

void Variable::backward(TraceSink* trace) const {
  const auto& impl = checked(impl_, "backward");
  if (impl.data.numel() != 1) {
    throw UsageError(fmt::format(
        "backward: the variable has shape {}; call backward(grad_output) for a non-scalar",
        shape_str(impl.data.shape())));
  }
  run_backward(impl_, Tensor::ones(impl.data.shape()), true, trace);
}

void Variable::backward(const Tensor& grad_output) const {
  const auto& impl = checked(impl_, "backward");
  check_same_shape(impl.data, grad_output, "backward: grad_output");
  run_backward(impl_, grad_output, false);
}

int64_t Variable::register_grad_ready_hook(GradReadyHook hook) {
  auto& impl = checked(impl_, "register_grad_ready_hook");
  const int64_t id = impl.next_hook_id++;
  impl.hooks.emplace_back(id, std::move(hook));
  return id;
}

void Variable::remove_grad_ready_hook(int64_t id) {
  auto& impl = checked(impl_, "remove_grad_ready_hook");
  for (auto it = impl.hooks.begin(); it != impl.hooks.end(); ++it) {
    if (it->first == id) {
      impl.hooks.erase(it);
      return;
    }
  }
  throw UsageError(fmt::format("remove_grad_ready_hook: no hook with id {}", id));
}

Variable Variable::detach() const { return Variable(checked(impl_, "detach").data, false); }

NoGradGuard::NoGradGuard() : previous_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = previous_; }
bool grad_mode_enabled() { return t_grad_enabled; }

namespace autograd {

bool needs_graph(std::initializer_list<const Variable*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Variable* v : inputs) {
    if (v->defined() && v->requires_grad()) return true;
  }
  return false;
}

Variable record(const char* name, std::initializer_list<const Variable*> inputs, Tensor output,
                BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  node->inputs.reserve(inputs.size());
  for (const Variable* v : inputs) {
    node->inputs.push_back(v->defined() && v->requires_grad() ? v->impl() : nullptr);
  }
  auto impl = std::make_shared<VariableImpl>();
  impl->data = std::move(output);
  impl->requires_grad = true;
  impl->grad_fn = std::move(node);
  return Variable(std::move(impl));
}

}  // namespace autograd
}  // namespace dtrain
