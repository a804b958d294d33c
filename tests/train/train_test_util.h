// Helpers shared by the train tests: model layers for the job configs they
// build in code. Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "train/job_config.h"

namespace dtrain::train::test_util {

// A layer of `type` named `name`; out_features for linear layers (0: none).
inline LayerConfig layer(std::string type, std::string name, int64_t out_features = 0) {
  LayerConfig l;
  l.type = std::move(type);
  l.name = std::move(name);
  l.out_features = out_features;
  return l;
}

}  // namespace dtrain::train::test_util
