#include "nn/sequential.h"

#include <fmt/format.h>

namespace dtrain::nn {

Module& Sequential::operator[](size_t index) const {
  if (index >= layers_.size()) {
    fail(fmt::format("index {} is out of range (size {})", index, layers_.size()));
  }
  return *layers_[index];
}

Variable Sequential::forward(const Variable& input) {
  Variable x = input;
  if (trace_ == nullptr || trace_names_.size() != layers_.size()) {
    for (Module* layer : layers_) x = layer->forward(x);
    return x;
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const bool nested = dynamic_cast<Sequential*>(layers_[i]) != nullptr;
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

Shape Sequential::output_shape(const Shape& input) const {
  Shape shape = input;
  for (const Module* layer : layers_) shape = layer->output_shape(shape);
  return shape;
}

}  // namespace dtrain::nn
