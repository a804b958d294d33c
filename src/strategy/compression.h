// How a strategy cuts what it sends (docs/compression.md): a compressor for
// its gradients (compress/compressor.h), dense updates before it starts,
// and local SGD (periodic averaging). The job file's [compression] table
// becomes one CompressionSettings (train/job_file.cpp); the allreduce and ps
// strategies take it in their options.
//
// Local SGD (Lin et al. 2020, "Don't use large mini-batches, use local
// SGD"; post-local SGD): after `start_step` dense updates, each worker takes
// `local_steps` updates on its own, then the workers' models are averaged
// (allreduce), or, for ps, each worker pushes what it moved over those steps
// as one gradient.
//
// The convergence guard (train/convergence_guard.h) weakens the settings
// when the loss goes wrong: weakened(level) is the setting `level` steps
// weaker (rank x2, density x4, levels x4, local steps /2 per level; a
// method without a weaker form goes dense), dense from kDenseLevel on.
// Thread safety: values. Errors: none (options are validated by
// compress::validate and the job file).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "compress/compressor.h"
#include "tensor/state_dict.h"

namespace dtrain::strategy {

struct CompressionSettings {
  compress::Options codec;  // method kNone: gradients go dense
  // Updates sent dense before the compressor and local SGD start (PyTorch's
  // start_powerSGD_iter; post-local SGD's warm-up).
  int64_t start_step = 0;
  // H: each worker takes H updates on its own between two averagings; 1
  // averages gradients every update (no local SGD).
  int64_t local_steps = 1;

  bool compresses() const { return codec.method != compress::Method::kNone; }
  bool local_sgd() const { return local_steps > 1; }
  bool active() const { return compresses() || local_sgd(); }
  // Whether update `step` (0-based, counted over the whole run) is past the
  // dense warm-up.
  bool started(int64_t step) const { return active() && step >= start_step; }
  // The settings `level` steps weaker (level 0: these); inactive (dense) at
  // level >= kDenseLevel or when the method has no weaker form.
  CompressionSettings weakened(int level) const;
  // "powersgd rank 4", "topk density 0.01 + EF", "local SGD H=8", "dense".
  std::string describe() const;

  static constexpr int kDenseLevel = 3;
};

// A compressor's state (compress::State) as a StateDict for checkpoints:
// each array a 1-D tensor, each metadata entry kept, and "workers" (the
// group it was written in: residuals mean nothing in another).
StateDict compressor_state_dict(const compress::State& state, int64_t workers);
// Back: nullopt, with `why` set, when `dict` was written for another number
// of workers or holds nothing.
std::optional<compress::State> compressor_state_from(const StateDict& dict, int64_t workers,
                                                     std::string& why);

}  // namespace dtrain::strategy
