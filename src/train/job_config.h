// JobConfig: everything a training job needs, as plain structs. The command
// line fills it from a TOML job file (train/job_file.h) and --set overrides;
// C++ users may fill it directly. Every field has a default that works.
// Thread safety: a value type.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config_table.h"
#include "data/ctr.h"
#include "fl/fl_config.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer_config.h"
#include "strategy/compression.h"

namespace dtrain::strategy {
class StrategySpec;
}  // namespace dtrain::strategy

namespace dtrain::train {

// One layer of a sequential model. Which fields matter depends on `type`:
//   linear:      out_features (in_features inferred from the previous layer,
//                or checked against in_features when given), bias
//   conv2d:      out_channels, kernel, stride, padding, bias (in_channels
//                inferred or checked)
//   maxpool2d, avgpool2d: kernel, stride (default = kernel), padding
//   dropout:     p
//   batchnorm1d, batchnorm2d: (features inferred)
//   embedding:   num_embeddings, embedding_dim; input (batch, ids...) of
//                integer-valued floats -> (batch, ids..., embedding_dim)
//   relu, sigmoid, tanh, gelu, flatten: none
struct LayerConfig {
  std::string type;
  std::string name;         // default: the layer's index in the model, as torch.nn.Sequential
  int64_t in_features = 0;  // 0: infer
  int64_t out_features = 0;
  int64_t in_channels = 0;  // 0: infer
  int64_t out_channels = 0;
  int64_t kernel = 0;
  int64_t stride = 0;  // 0: conv 1, pooling = kernel
  int64_t padding = 0;
  bool bias = true;
  float p = 0.5f;
  int64_t num_embeddings = 0;  // embedding: rows of the table
  int64_t embedding_dim = 0;   // embedding: width of a row
  int64_t line = 0;            // where it was defined, for messages (0: unknown)
};

struct ModelConfig {
  std::vector<int64_t> input_shape;  // one sample, e.g. {1, 28, 28}
  std::vector<LayerConfig> layers;
};

struct DataConfig {
  std::string dataset = "mnist";  // mnist | csv | synthetic | ctr
  std::string path = "data/mnist";
  std::string test_path;               // csv: the held-out file (optional)
  std::string label_column = "label";  // csv
  int64_t train_limit = 0;             // 0: every sample
  int64_t test_limit = 0;
  bool normalize = true;             // mnist: (x - 0.1307) / 0.3081
  int64_t synthetic_samples = 4096;  // synthetic: Gaussian blobs
  int64_t synthetic_features = 16;
  int64_t synthetic_classes = 4;
  // Each worker trains on its own part of the training set, split by this
  // partitioner (data/partition.h, docs/partitioning.md): "" (off: slices
  // of a shared global batch), iid | label | dirichlet | quantity | shards.
  std::string partition;
  int64_t classes_per_worker = 2;  // partition = "label"
  double dirichlet_alpha = 0.5;    // partition = "dirichlet"
  double quantity_sigma = 1.0;     // partition = "quantity"
  int64_t shards_per_worker = 2;   // partition = "shards"
  data::CtrOptions ctr;            // ctr: synthetic clicks (data/ctr.h), keys ctr_*
};

struct TrainConfig {
  int64_t epochs = 1;
  int64_t batch_size = 128;  // global batch (split across workers)
  int64_t eval_batch_size = 1000;
  int64_t log_every_steps = 100;
  int64_t max_steps = 0;               // 0: no limit (stop after epochs)
  int64_t checkpoint_every_steps = 0;  // 0: only at the end of each epoch
  // Also a checkpoint after the first step that ends this many seconds
  // after the previous checkpoint (rank 0's clock); 0: off.
  double checkpoint_every_seconds = 0.0;
  int64_t keep_checkpoints = 3;
  int64_t threads = 1;  // intra-op threads per worker (train::set_compute_threads)
  bool drop_last = false;
  // `dtrain train --workers N`: how often the launcher starts the job again
  // (resuming from its newest checkpoint) after a worker failed; 0: never.
  int64_t max_restarts = 0;
  // Per-class loss weights on imbalanced data: "none", or "balanced"
  // (w_c = N / (C n_c) from the training set's label counts; the loss is
  // the mean over samples of w_t * cross entropy).
  std::string class_weights = "none";
  // `dtrain train --workers N` (allreduce): elastic mode (docs/elastic.md):
  // the survivors of a failed worker continue without a restart, a new
  // worker (max_restarts of them) joins at a step boundary; the job stops
  // once fewer than min_workers run (0: every worker, N).
  bool elastic = false;
  int64_t min_workers = 0;
  // TensorBoard event files under <output>/tensorboard (docs/observability.md):
  // the chief's scalars, every worker's throughput, and every
  // histogram_every_steps steps (0: off) weight and gradient histograms.
  bool tensorboard = true;
  int64_t histogram_every_steps = 0;
  // A per-rank Chrome-trace timeline (docs/observability.md#timeline): "" off;
  // "auto": <output>/trace/rank-<r>.json; else a file path ("-rank<r>" is
  // inserted before its extension when the job has several workers).
  // trace_steps "N:M": the updates recorded (set-up before them too).
  std::string trace;
  std::string trace_steps = "1:50";
};

// The keys every strategy shares ([distributed]); each strategy's own
// options live in its table ([distributed.<name>], strategy/registry.h).
struct DistributedConfig {
  // A registered strategy (strategy::strategy_names()): local | mirrored |
  // allreduce | ps. Empty: allreduce for a job of several workers or
  // processes, else local.
  std::string strategy;
  int64_t workers = 1;         // replicas (mirrored) or worker processes
  int64_t timeout_ms = 60000;  // bound on every wait for a peer
  // A peer silent for this long is declared dead: an allreduce group fails
  // naming it (or drops it, in elastic mode), ps servers close their versions
  // without it. Heartbeats go out at a quarter of it (at most every second).
  int64_t heartbeat_timeout_ms = 5000;
  // allreduce, and ps in sync without backup workers: dynamic batch sizing
  // (docs/allreduce-strategy.md, docs/parameter-server.md): the global
  // batch stays fixed and is split so that every worker's predicted step
  // time (a fixed cost plus a cost per row, fitted to its measurements;
  // smoothing: weight of the previous re-balancing period's observations,
  // [0, 1)) is the same, re-balanced every rebalance_every updates, within
  // [min_share, max_share] of the global batch.
  bool dynamic_batch = false;
  int64_t rebalance_every = 10;
  double smoothing = 0.5;
  double min_share = 0.01;
  double max_share = 1.0;
  // "RANK=FACTOR": that worker computes FACTOR times slower (it sleeps
  // FACTOR - 1 times its compute time after each step's compute); RANK
  // "all": every worker no entry names. For tests and benchmarks;
  // --slowdown adds entries.
  std::vector<std::string> slowdown;
  // An emulated slow link for tests and benchmarks (comm/transport/
  // link_shaper.h): every message a process sends waits its turn on a
  // link of link_mbps megabits per second and arrives link_latency_ms
  // later; shared memory is not used. 0: off.
  double link_mbps = 0.0;
  double link_latency_ms = 0.0;
  // "RANK=FACTOR": that worker's link is FACTOR times slower (link_mbps /
  // FACTOR, link_latency_ms x FACTOR); needs link_mbps. For benchmarks
  // ("one link 10x slower"); --slow-link adds entries.
  std::vector<std::string> slow_link;
  // Each registered strategy's options, by name, as read from the job file
  // ([distributed.<name>]); a strategy missing here runs with its defaults.
  std::map<std::string, std::shared_ptr<const strategy::StrategySpec>> strategies;
};

// The convergence guard (train/convergence_guard.h): watches the training
// loss of a compressed run and, when it turns non-finite or its mean over
// `window` updates rises above the best such mean by more than `margin`
// times the larger of that best and the run's first window mean, restores the last good weights
// kept in memory (taken every `snapshot_every` healthy updates), runs one setting weaker for
// `hold_steps` updates, then steps back towards the job's setting.
struct GuardConfig {
  bool enabled = false;
  int64_t window = 20;
  double margin = 0.5;
  int64_t snapshot_every = 50;
  int64_t hold_steps = 500;
};

// [compression]: what the strategy sends (strategy/compression.h).
struct CompressionConfig {
  strategy::CompressionSettings settings;
  GuardConfig guard;
};

// [security] (docs/security.md).
struct SecurityConfig {
  // CURVE (CurveZMQ) on every link of the job, with keys derived from the
  // job secret (comm/wire/curve.h); a launched job passes it to its
  // processes as DTRAIN_ENCRYPT=1.
  bool encrypt = false;
  // A key file holding the job secret (comm/wire/key_file.h, `dtrain keygen`),
  // relative to the working directory like every path of a job file; every
  // process of the job takes its secret from it, and dtrain's launcher passes
  // its workers the path, not the secret. "" none (DTRAIN_KEY_FILE, or
  // DTRAIN_JOB_SECRET).
  std::string key_file;
};

// [privacy]: DP-SGD (train/dp_sgd.h, docs/privacy.md), strategy local or
// allreduce.
struct PrivacyConfig {
  bool enabled = false;
  double noise_multiplier = 0.0;  // sigma; 0: solved from target_epsilon
  double max_grad_norm = 1.0;     // C, the per-sample clipping norm
  double delta = 1e-5;
  // 0: no budget. Otherwise training stops before a step that would bring
  // the (Balle) epsilon above it, and sigma is solved from it when
  // noise_multiplier is 0.
  double target_epsilon = 0.0;
};

struct JobConfig {
  std::string name = "job";
  std::string source;  // the job file, for messages
  // Where each key was written ("train.epochs" -> its line), for messages.
  KeyLines lines;
  uint64_t seed = 1;
  std::string output = "runs/job";
  bool resume = true;  // resume from the newest valid checkpoint in output
  // Resume even from a checkpoint of another job name or model (a warning
  // instead of refusing it); the step and epoch bounds still apply.
  bool force_resume = false;
  ModelConfig model;
  DataConfig data;
  optim::OptimizerConfig optimizer;
  // schedule.lr is set from optimizer.lr; a cosine schedule's total_steps
  // of 0 means the whole run (epochs x steps per epoch).
  optim::LrScheduleConfig schedule;
  TrainConfig train;
  DistributedConfig distributed;
  CompressionConfig compression;
  SecurityConfig security;
  // [fl]: a federated job (`dtrain fl`, fl/fl_config.h).
  fl::FlConfig fl;
  PrivacyConfig privacy;
};

}  // namespace dtrain::train
