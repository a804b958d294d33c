// Builds the model of a job from its config: a Sequential whose layer sizes
// are inferred from model.input_shape.
//
// Shapes are propagated from a batch of one sample through every layer's
// output_shape() before anything trains, so a layer that does not fit throws
// ConfigError naming the job file, the layer's line, the layer and both shapes.
// Weights are drawn from `rng` in layer order: the same seed gives the same
// model bit for bit. An embedding layer takes ids (integer-valued floats) of
// any shape and appends its embedding_dim; ids outside [0, num_embeddings)
// are caught when data arrives (UsageError from nn::Embedding), not here.
//
// Sizes are checked before anything is allocated: a layer whose parameters
// (with batch-norm statistics) would take more than kMaxModelBytes, a model
// whose layers together would, or a sample whose input or any layer's output
// would, throws ConfigError naming the layer's key (model.layers[1].out_features)
// and the bytes it would need, instead of failing in the allocator.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <memory>

#include "core/rng.h"
#include "nn/sequential.h"
#include "train/job_config.h"

namespace dtrain::train {

// The most bytes of float32 parameters a model, or of activations one sample,
// may take: 64 GiB, far beyond what dtrain trains on a CPU, far below what
// overflows a size computation.
inline constexpr uint64_t kMaxModelBytes = uint64_t{64} << 30;

std::unique_ptr<nn::Sequential> build_model(const ModelConfig& config, Rng& rng,
                                            const std::string& source = "job");

}  // namespace dtrain::train
