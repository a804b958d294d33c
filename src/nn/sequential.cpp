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
  for (Module* layer : layers_) x = layer->forward(x);
  return x;
}

Shape Sequential::output_shape(const Shape& input) const {
  Shape shape = input;
  for (const Module* layer : layers_) shape = layer->output_shape(shape);
  return shape;
}

}  // namespace dtrain::nn
