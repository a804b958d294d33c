#include "nn/embedding.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "nn/init.h"

namespace dtrain::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, Rng& rng)
    : Module("embedding"), num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {
  if (num_embeddings <= 0 || embedding_dim <= 0) {
    fail(fmt::format("num_embeddings {} and embedding_dim {} must be positive", num_embeddings,
                     embedding_dim));
  }
  weight_ = register_parameter("weight", Tensor::empty({num_embeddings, embedding_dim}));
  init::normal(weight_.data(), 0.0f, 1.0f, rng);
}

Shape Embedding::output_shape(const Shape& input) const {
  Shape out = input;
  out.push_back(embedding_dim_);
  return out;
}

Variable Embedding::forward_indices(std::span<const int64_t> indices) {
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= num_embeddings_) {
      fail(fmt::format("index {} at position {} is out of range [0, {})", indices[i], i,
                       num_embeddings_));
    }
  }
  if (lookup_hook_) lookup_hook_(indices);
  return dtrain::embedding(weight_, indices);
}

Variable Embedding::forward(const Variable& input) {
  const float* values = input.data().data();
  std::vector<int64_t> indices(static_cast<size_t>(input.numel()));
  for (size_t i = 0; i < indices.size(); ++i) {
    const float value = values[i];
    if (!(std::floor(value) == value)) {
      fail(fmt::format("index {} at position {} is not an integer", value, i));
    }
    // Range is checked by forward_indices; clamp only to keep the cast defined.
    indices[i] = static_cast<int64_t>(std::fmax(-1.0f, std::fmin(value, 9.0e18f)));
  }
  Variable rows = forward_indices(indices);
  return dtrain::reshape(rows, output_shape(input.shape()));
}

}  // namespace dtrain::nn
