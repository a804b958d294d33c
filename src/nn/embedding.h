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
// Lookup hook: an optional callback that forward() and forward_indices()
// call with the batch's indices (already range-checked, possibly repeated)
// before the lookup reads the table. A strategy whose table lives elsewhere
// (the parameter server's row-sparse tables) uses it to fetch exactly those
// rows into weight() first; nn itself knows nothing of where they come from.
// An exception the hook throws propagates out of forward() before any graph
// is recorded.
// Thread safety: see module.h. Errors: UsageError naming the layer, the
// offending index and its position when an index is out of [0, V) or not an
// integer.
#pragma once

#include <cstdint>
#include <functional>
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

  using LookupHook = std::function<void(std::span<const int64_t> indices)>;
  // Installs `hook` (see the header comment), replacing any previous one; an
  // empty function removes it. Whatever the hook captures must stay valid
  // while it is installed.
  void set_lookup_hook(LookupHook hook) { lookup_hook_ = std::move(hook); }

 private:
  int64_t num_embeddings_;
  int64_t embedding_dim_;
  Variable weight_;
  LookupHook lookup_hook_;
};

}  // namespace dtrain::nn
