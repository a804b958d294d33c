// Internal to autograd: the graph node, the shared state behind a Variable,
// and record(), the one way a differentiable function adds itself to the
// graph. Only autograd's own .cpp files include this header.
//
// A Node is the backward half of one function call: `inputs` are the edges
// to the VariableImpls it read (nullptr for an input that needs no
// gradient), `backward` turns the gradient of the function's single output
// into gradients of those inputs. backward() in variable.cpp runs the nodes
// in reverse topological order and then frees each one (its closure, with
// the tensors it saved, and its edges).
// Thread safety: see variable.h (one graph, one thread at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "tensor/sparse_rows.h"
#include "tensor/tensor.h"

namespace dtrain::autograd {

// The gradient a backward rule produces for one input.
struct InputGrad {
  // Whether the input needs a gradient at all; a rule skips the work if not.
  bool needed = false;
  // Dense gradient with the input's shape.
  Tensor dense;
  // True when `dense` is freshly allocated and referenced nowhere else, so
  // the engine may keep it as an accumulator without copying.
  bool fresh = false;
  // Row-sparse gradient (embedding); used instead of `dense` when set.
  std::optional<SparseRows> sparse;

  void set(Tensor g, bool is_fresh = true) {
    dense = std::move(g);
    fresh = is_fresh;
  }
};

using BackwardFn = std::function<void(const Tensor& grad_output, std::span<InputGrad> grads)>;

struct Node {
  const char* name = "";
  std::vector<std::shared_ptr<VariableImpl>> inputs;
  BackwardFn backward;
  bool released = false;
};

struct VariableImpl {
  Tensor data;
  Tensor grad;
  std::optional<SparseRows> sparse_grad;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  std::vector<std::pair<int64_t, Variable::GradReadyHook>> hooks;
  int64_t next_hook_id = 0;
};

// Whether a call with these inputs must record a node: grad mode is on and
// at least one (defined) input requires a gradient.
bool needs_graph(std::initializer_list<const Variable*> inputs);

// Wraps `output` in a Variable whose grad_fn runs `backward`. Call it only
// when needs_graph() said so; undefined inputs (an absent bias) get no edge.
Variable record(const char* name, std::initializer_list<const Variable*> inputs, Tensor output,
                BackwardFn backward);

}  // namespace dtrain::autograd
