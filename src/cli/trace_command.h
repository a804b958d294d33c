// `dtrain trace merge` and `dtrain trace stats` (obs/trace_file.h), and the
// timeline flags of `dtrain train` (--trace FILE, --trace-steps N:M, which
// become the job keys train.trace and train.trace_steps).
//
// Errors: io::FileError for a file that cannot be read or written,
// DataError for a trace file that is malformed beyond a cut last line.
// Blocking: file I/O only.
#pragma once

#include <CLI/CLI.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace dtrain::cli {

struct TraceFlags {
  std::string trace;        // --trace FILE
  std::string trace_steps;  // --trace-steps N:M
};

// Adds --trace and --trace-steps to `train_cmd`.
void add_trace_flags(CLI::App& train_cmd, TraceFlags& flags);
// Turns the flags given into --set overrides of `train`.
void apply_trace_flags(const TraceFlags& flags, TrainOptions& train);

struct TraceCommandOptions {
  std::vector<std::string> files;
  std::string output;  // merge: -o FILE
  bool stats = false;  // merge: also print the statistics
};

struct TraceCommands {
  CLI::App* merge = nullptr;
  CLI::App* stats = nullptr;
};
TraceCommands add_trace_command(CLI::App& app, TraceCommandOptions& options);

// Merges options.files into options.output; notes (a cut last line, a
// missing clock offset) go to `err`, one line each. Returns 0.
int run_trace_merge(const TraceCommandOptions& options, std::ostream& out, std::ostream& err);
// Prints the per-rank statistics of options.files (one trace or several
// ranks' files, merged first). Returns 0.
int run_trace_stats(const TraceCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace dtrain::cli
