// JobConfig: everything a training job needs, as plain structs. The command
// line fills it from a TOML job file (cli/job_file.h) and --set overrides;
// C++ users may fill it directly. Every field has a default that works.
// Thread safety: a value type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "optim/lr_schedule.h"
#include "optim/optimizer_config.h"

namespace dtrain::train {

// One layer of a sequential model. Which fields matter depends on `type`:
//   linear:      out_features (in_features inferred from the previous layer,
//                or checked against in_features when given), bias
//   conv2d:      out_channels, kernel, stride, padding, bias (in_channels
//                inferred or checked)
//   maxpool2d, avgpool2d: kernel, stride (default = kernel), padding
//   dropout:     p
//   batchnorm1d, batchnorm2d: (features inferred)
//   relu, sigmoid, tanh, gelu, flatten: none
struct LayerConfig {
  std::string type;
  std::string name;  // default: the layer's index in the model, as torch.nn.Sequential
  int64_t in_features = 0;   // 0: infer
  int64_t out_features = 0;
  int64_t in_channels = 0;   // 0: infer
  int64_t out_channels = 0;
  int64_t kernel = 0;
  int64_t stride = 0;        // 0: conv 1, pooling = kernel
  int64_t padding = 0;
  bool bias = true;
  float p = 0.5f;
  int64_t line = 0;          // where it was defined, for messages (0: unknown)
};

struct ModelConfig {
  std::vector<int64_t> input_shape;  // one sample, e.g. {1, 28, 28}
  std::vector<LayerConfig> layers;
};

struct DataConfig {
  std::string dataset = "mnist";  // mnist | csv | synthetic
  std::string path = "data/mnist";
  std::string test_path;          // csv: the held-out file (optional)
  std::string label_column = "label";  // csv
  int64_t train_limit = 0;        // 0: every sample
  int64_t test_limit = 0;
  bool normalize = true;          // mnist: (x - 0.1307) / 0.3081
  int64_t synthetic_samples = 4096;  // synthetic: Gaussian blobs
  int64_t synthetic_features = 16;
  int64_t synthetic_classes = 4;
};

struct TrainConfig {
  int64_t epochs = 1;
  int64_t batch_size = 128;       // global batch (split across workers)
  int64_t eval_batch_size = 1000;
  int64_t log_every_steps = 100;
  int64_t max_steps = 0;          // 0: no limit (stop after epochs)
  int64_t checkpoint_every_steps = 0;  // 0: only at the end of each epoch
  // Also a checkpoint after the first step that ends this many seconds
  // after the previous checkpoint (rank 0's clock); 0: off.
  double checkpoint_every_seconds = 0.0;
  int64_t keep_checkpoints = 3;
  int64_t threads = 1;            // BLAS threads per worker
  bool drop_last = false;
  // `dtrain train --workers N`: how often the launcher starts the job again
  // (resuming from its newest checkpoint) after a worker failed; 0: never.
  int64_t max_restarts = 0;
  // `dtrain train --workers N` (allreduce): elastic mode (docs/elastic.md):
  // the survivors of a failed worker continue without a restart, a new
  // worker (max_restarts of them) joins at a step boundary; the job stops
  // once fewer than min_workers run (0: every worker, N).
  bool elastic = false;
  int64_t min_workers = 0;
};

struct DistributedConfig {
  std::string strategy = "local";  // local | mirrored | allreduce
  int64_t workers = 1;             // replicas (mirrored) or processes (allreduce)
  int64_t bucket_bytes = 1 << 20;  // allreduce: gradient bucket size
  int64_t timeout_ms = 60000;      // allreduce: bound on every collective
  int64_t accumulation_steps = 1;  // allreduce: micro-batches per update
  // allreduce: "native" (dtrain's collectives: deadlines, shared memory on
  // one host, ZeroMQ across hosts) or "mpi" (MPI_Allreduce, for a job
  // started by mpirun on a fast fabric; MPI calls have no deadline).
  std::string backend = "native";
};

struct JobConfig {
  std::string name = "job";
  std::string source;   // the job file, for messages
  uint64_t seed = 1;
  std::string output = "runs/job";
  bool resume = true;   // resume from the newest valid checkpoint in output
  ModelConfig model;
  DataConfig data;
  optim::OptimizerConfig optimizer;
  // schedule.lr is set from optimizer.lr; a cosine schedule's total_steps
  // of 0 means the whole run (epochs x steps per epoch).
  optim::LrScheduleConfig schedule;
  TrainConfig train;
  DistributedConfig distributed;
};

}  // namespace dtrain::train
