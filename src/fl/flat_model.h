// A model's state as one flat float vector, in state_dict() order (every
// parameter, then every buffer), the form federated updates travel in.
// Thread safety: none on the same module. Errors: UsageError when the span's
// size is not the model's. Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "nn/module.h"

namespace dtrain::fl {

int64_t flat_size(const nn::Module& model);
std::vector<float> flatten(const nn::Module& model);
// Copies `weights` into the model's parameters and buffers.
void load_flat(nn::Module& model, std::span<const float> weights);

}  // namespace dtrain::fl
