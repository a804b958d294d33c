// `dtrain fl JOB`: a federated job simulated in this process (thousands of
// virtual clients on a thread pool; train/run_fl.h, docs/federated.md).
// Flags override the job's [fl] keys through the job file's own checks, so a
// bad value is a ConfigError naming the key (fl.clients, fl.fraction, ...).
// Holds the output folder's lock (io::OutputLock) for the run's life.
// Errors: dtrain::Error kinds, mapped to exit codes by main(). Blocking: runs
// the whole job.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace dtrain::cli {

struct FlCommandOptions {
  std::string job_file;
  std::vector<std::string> overrides;  // "key=value", as --set
  std::optional<int64_t> clients;      // fl.clients
  std::optional<double> fraction;      // fl.fraction
  std::optional<int64_t> rounds;       // fl.rounds
  std::optional<int64_t> threads;      // fl.threads
  std::optional<std::string> output;   // job.output
  std::optional<bool> resume;          // job.resume
  std::string progress = "plain";      // plain | none
  std::vector<std::string> argv;       // for the lock's record
};

// The job with the flags applied (as --set overrides of their keys).
std::vector<std::string> fl_overrides(const FlCommandOptions& options);

int run_fl_command(const FlCommandOptions& options, std::ostream& out);

}  // namespace dtrain::cli
