// The optimizer configurations the ps tests compare runs with: SGD with
// momentum and Adam, each with state the servers must carry exactly (a
// takeover, a replacement or an overlapped push that lost a buffer would
// show in the last bits). Header only; values, no state.
#pragma once

#include "optim/optimizer_config.h"

namespace dtrain::testing {

// SGD, lr 0.05, momentum 0.9.
inline optim::OptimizerConfig momentum() {
  optim::OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.05f;
  c.momentum = 0.9f;
  return c;
}

// Adam, lr 0.01 (default betas and epsilon).
inline optim::OptimizerConfig adam() {
  optim::OptimizerConfig c;
  c.type = "adam";
  c.lr = 0.01f;
  return c;
}

}  // namespace dtrain::testing
