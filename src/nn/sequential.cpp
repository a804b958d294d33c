#include "nn/sequential.h"

#include <fmt/format.h>

#include <utility>

#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/pooling.h"

namespace dtrain::nn {

Module& Sequential::operator[](size_t index) const {
  if (index >= layers_.size()) {
    fail(fmt::format("index {} is out of range (size {})", index, layers_.size()));
  }
  return *layers_[index];
}

namespace {

bool is_relu(const Module* m) { return dynamic_cast<const ReLU*>(m) != nullptr; }

}  // namespace

void Sequential::plan_steps() {
  steps_.clear();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const bool has_next = i + 1 < layers_.size();
    const bool fused =
        has_next &&
        ((dynamic_cast<const Linear*>(layers_[i]) != nullptr && is_relu(layers_[i + 1])) ||
         (is_relu(layers_[i]) && dynamic_cast<const MaxPool2d*>(layers_[i + 1]) != nullptr));
    steps_.push_back({i, fused});
    if (fused) ++i;
  }
  planned_layers_ = layers_.size();
}

Variable Sequential::run_step(const Step& step, const Variable& x) const {
  Module* layer = layers_[step.first];
  before(layer);
  if (!step.fused) return layer->forward(x);
  before(layers_[step.first + 1]);
  if (auto* linear = dynamic_cast<Linear*>(layer)) return linear->forward_relu(x);
  return static_cast<MaxPool2d*>(layers_[step.first + 1])->forward_after_relu(x);
}

Variable Sequential::forward(const Variable& input) {
  Variable x = input;
  if (trace_ == nullptr || trace_names_.size() != layers_.size()) {
    if (!fusion_) {
      for (Module* layer : layers_) {
        before(layer);
        x = layer->forward(x);
      }
      return x;
    }
    if (planned_layers_ != layers_.size()) plan_steps();
    for (const Step& step : steps_) x = run_step(step, x);
    return x;
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const bool nested = dynamic_cast<Sequential*>(layers_[i]) != nullptr;
    before(layers_[i]);
    TraceSpan span(nested ? nullptr : trace_, trace_names_[i], "layer");
    x = layers_[i]->forward(x);
  }
  return x;
}

void Sequential::set_trace(TraceSink* trace) {
  trace_ = trace;
  trace_names_.clear();
  for (Module* layer : layers_) trace_names_.push_back(layer->label());
  for (Module* layer : layers_) {
    if (auto* nested = dynamic_cast<Sequential*>(layer)) nested->set_trace(trace);
  }
}

void Sequential::set_forward_pre_hook(ForwardPreHook hook) {
  for (Module* layer : layers_) {
    if (auto* nested = dynamic_cast<Sequential*>(layer)) nested->set_forward_pre_hook(hook);
  }
  pre_hook_ = std::move(hook);
}

void Sequential::set_fusion(bool enabled) {
  fusion_ = enabled;
  for (Module* layer : layers_) {
    if (auto* nested = dynamic_cast<Sequential*>(layer)) nested->set_fusion(enabled);
  }
}

Shape Sequential::output_shape(const Shape& input) const {
  Shape shape = input;
  for (const Module* layer : layers_) shape = layer->output_shape(shape);
  return shape;
}

}  // namespace dtrain::nn
