// Embedding: a lookup table of V rows of width D, torch's nn.Embedding
// (no padding_idx, no max_norm).
//
// Shapes: indices [...] -> [..., D]; weight [V, D]. forward_indices() takes
// the indices as integers and returns [count, D]; forward() takes a Variable
// holding integer-valued floats (so an Embedding can sit in a Sequential).
// The gradient of the weight is row-sparse: after backward() the weight's
// sparse_grad() holds only the looked-up rows (dtrain::embedding).
// Initialisation: N(0, 1) from the Rng given to the constructor (torch's
// default).
// Thread safety: see module.h. Errors: UsageError naming the layer, the
// offending index and its position when an index is out of [0, V) or not an
// integer.
#pragma once

#include <cstdint>
#include <span>

#include "core/rng.h"
#include "nn/module.h"

namespace dtrain::nn {

class Embedding : public Module {
 public:
  // num_embeddings, embedding_dim > 0. `rng` is only used during construction.
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Rng& rng);

  Variable forward_indices(std::span<const int64_t> indices);
  Variable forward(const Variable& input) override;
  Shape output_shape(const Shape& input) const override;

  int64_t num_embeddings() const { return num_embeddings_; }
  int64_t embedding_dim() const { return embedding_dim_; }
  const Variable& weight() const { return weight_; }

 private:
  int64_t num_embeddings_;
  int64_t embedding_dim_;
  Variable weight_;
};

}  // namespace dtrain::nn
