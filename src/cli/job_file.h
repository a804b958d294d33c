// Job files: a TOML description of a training job, read into a JobConfig.
//
//   [job]        name, seed, output, resume
//   [model]      input_shape = [1, 28, 28]; [[model.layers]] type = "linear", ...
//   [data]       dataset, path, train_limit, test_limit, normalize, ...
//   [optimizer]  type, lr, momentum, nesterov, weight_decay, beta1, beta2, eps
//   [schedule]   type, warmup_steps, step_size, gamma, eta_min, total_steps
//   [train]      epochs, batch_size, eval_batch_size, log_every_steps, max_steps, ...
//   [distributed] strategy, workers, bucket_bytes, timeout_ms, accumulation_steps, backend,
//                dynamic_batch, slowdown, ...; ps: servers, consistency, staleness,
//                backup_workers
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

namespace dtrain::cli {

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

train::JobConfig read_job_file(const std::string& path, const std::vector<std::string>& overrides);
train::JobConfig parse_job(const std::string& toml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides);

}  // namespace dtrain::cli
