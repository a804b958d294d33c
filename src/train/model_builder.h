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
// Thread safety: pure functions.
#pragma once

#include <memory>

#include "core/rng.h"
#include "nn/sequential.h"
#include "train/job_config.h"

namespace dtrain::train {

std::unique_ptr<nn::Sequential> build_model(const ModelConfig& config, Rng& rng,
                                            const std::string& source = "job");

}  // namespace dtrain::train
