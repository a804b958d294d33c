// Sequential: runs its children in order, each on the previous one's
// output, like torch.nn.Sequential. Children are named by the caller
// ("fc1") or, by default, by their index ("0", "1", ...), so parameters are
// "0.weight", "2.bias", ... as in torch.
//
// output_shape() chains the children's output_shape(), so a whole model can
// be checked against an input shape before training; the first child that
// cannot take its input throws, naming itself.
// Fusion: forward() runs two adjacent layers as one function where that
// saves a pass over memory and gives the same bits: Linear then ReLU
// (dtrain::linear_relu) and ReLU then MaxPool2d (dtrain::relu_max_pool2d).
// A traced forward (set_trace) runs layer by layer, so that every layer gets
// its span; set_fusion(false) does so always.
// Forward pre-hook (set_forward_pre_hook): called with each child, on the
// thread running forward(), right before that child first reads its
// parameters (both children of a fused pair, before the pair runs); nested
// Sequentials pass it on to their children instead. A strategy whose
// parameters arrive while forward runs (strategy/ps_overlap.h) waits there;
// nn knows nothing about why. Exceptions from the hook leave forward().
// Ownership: the Sequential owns its children; add() returns a reference that
// stays valid while the Sequential lives.
// Thread safety and errors: see module.h.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/trace.h"
#include "nn/module.h"

namespace dtrain::nn {

class Sequential : public Module {
 public:
  Sequential() : Module("sequential") {}

  template <class M>
  M& add(std::string name, std::unique_ptr<M> module) {
    M& ref = register_module(std::move(name), std::move(module));
    layers_.push_back(&ref);
    return ref;
  }
  // Named by its index.
  template <class M>
  M& add(std::unique_ptr<M> module) {
    return add(std::to_string(layers_.size()), std::move(module));
  }

  size_t size() const { return layers_.size(); }
  Module& operator[](size_t index) const;

  Variable forward(const Variable& input) override;
  // Records each layer's forward as a "layer" span named by its label()
  // into `trace` (core/trace.h), or nothing when null. `trace` must outlive
  // this module or be reset first. Applies to nested Sequentials too.
  void set_trace(TraceSink* trace);
  // On by default; applies to nested Sequentials too.
  void set_fusion(bool enabled);
  // `hook(child)` before each child's forward (header); an empty function
  // removes it. Applies to nested Sequentials too.
  using ForwardPreHook = std::function<void(Module& child)>;
  void set_forward_pre_hook(ForwardPreHook hook);
  Shape output_shape(const Shape& input) const override;

 private:
  // One call of forward(): layers_[first], or with `fused` layers_[first]
  // and layers_[first + 1] as one function.
  struct Step {
    size_t first = 0;
    bool fused = false;
  };
  void plan_steps();
  Variable run_step(const Step& step, const Variable& x) const;

  std::vector<Module*> layers_;  // owned by Module's children
  std::vector<Step> steps_;      // the fused plan of layers_, rebuilt when layers_ grows
  size_t planned_layers_ = 0;
  bool fusion_ = true;
  TraceSink* trace_ = nullptr;
  std::vector<std::string> trace_names_;  // per layer: its label() ("linear 'fc1'")
  ForwardPreHook pre_hook_;
  void before(Module* layer) const {
    if (pre_hook_ && dynamic_cast<Sequential*>(layer) == nullptr) pre_hook_(*layer);
  }
};

}  // namespace dtrain::nn
