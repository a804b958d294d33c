// Job files: a TOML description of a training job, read into a JobConfig.
//
//   [job]          name, seed, output, resume
//   [model]        input_shape = [1, 28, 28]; [[model.layers]] type = "linear", ...
//   [data]         dataset, path, train_limit, test_limit, normalize, partition, ...
//   [optimizer]    type, lr, momentum, nesterov, weight_decay, beta1, beta2, eps, ...
//   [schedule]     type, warmup_steps, step_size, gamma, eta_min, total_steps
//   [train]        epochs, batch_size, eval_batch_size, log_every_steps, max_steps, ...
//   [distributed]  strategy, workers, timeout_ms, heartbeat_timeout_ms, dynamic_batch,
//                  rebalance_every, smoothing, min_share, max_share, slowdown,
//                  link_mbps, link_latency_ms, slow_link
//   [distributed.<strategy>]  that strategy's options (strategy/registry.h), e.g.
//                  [distributed.allreduce] bucket_bytes, accumulation_steps, backend;
//                  [distributed.ps] servers, consistency, staleness, backup_workers.
//   [fl]           a federated job: clients, fraction, rounds, local_epochs, ...
//                  (fl/fl_config.h)
//                  The same keys written flat in [distributed] (the old form) still
//                  work; each such key adds a deprecation note to JobFile::notes.
//
// Every key is checked: an unknown key, a wrong type or a bad value throws
// ConfigError naming the file, the dotted key and its line. Overrides
// ("train.epochs=3") are applied before checking, as if written in the file;
// their values are TOML values ("0.1", "true", "[1, 28, 28]") or, failing
// that, bare strings.
// Thread safety: pure functions. Blocking: reads one file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/job_config.h"

namespace dtrain::train {

struct JobFile {
  JobConfig job;
  // Deprecation notes ("job.toml:12: 'distributed.bucket_bytes' is
  // deprecated: ..."), for the caller to log.
  std::vector<std::string> notes;
};

// One "RANK=FACTOR" slowdown entry (--slowdown, distributed.slowdown): a
// rank >= 0, or "all" (kAllRanks) for every rank an entry naming it does not
// set, and a factor >= 1. ConfigError naming `source`, `key` and the entry.
struct Slowdown {
  static constexpr int64_t kAllRanks = -1;
  int64_t rank = 0;
  double factor = 1.0;
};
Slowdown parse_slowdown(const std::string& entry, const std::string& source,
                        const std::string& key);

// One "RANK=FACTOR" slow-link entry (--slow-link, distributed.slow_link): a
// worker rank >= 0 whose emulated link is FACTOR (>= 1) times slower than
// distributed.link_mbps / link_latency_ms. ConfigError naming `source`,
// `key` and the entry.
struct SlowLink {
  int64_t rank = 0;
  double factor = 1.0;
};
SlowLink parse_slow_link(const std::string& entry, const std::string& source,
                         const std::string& key);

// Reads a job file (a regular file of at most 16 MiB).
JobFile read_job_file(const std::string& path, const std::vector<std::string>& overrides);
JobFile parse_job(const std::string& toml_text, const std::string& source_name,
                  const std::vector<std::string>& overrides);

}  // namespace dtrain::train
