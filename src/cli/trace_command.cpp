#include "cli/trace_command.h"

#include <fmt/format.h>

#include "io/atomic_file.h"
#include "io/file_system.h"
#include "obs/trace_file.h"

namespace dtrain::cli {
namespace {

std::vector<obs::TraceFile> read_all(const std::vector<std::string>& files) {
  std::vector<obs::TraceFile> traces;
  traces.reserve(files.size());
  for (const std::string& f : files) traces.push_back(obs::read_trace_file(f));
  return traces;
}

// A --set value: a TOML string where it needs no escaping, else bare.
std::string toml_string(const std::string& value) {
  if (value.find_first_of("\"\\") != std::string::npos) return value;
  return "\"" + value + "\"";
}

}  // namespace

void add_trace_flags(CLI::App& train_cmd, TraceFlags& flags) {
  train_cmd
      .add_option("--trace", flags.trace,
                  "Write a Chrome-trace timeline per worker to FILE (\"-rank<r>\" before the "
                  "extension with several workers; \"auto\": <output>/trace/rank-<r>.json); "
                  "same as --set train.trace=FILE")
      ->type_name("FILE");
  train_cmd
      .add_option("--trace-steps", flags.trace_steps,
                  "The updates the timeline records (default 1:50; train.trace_steps)")
      ->type_name("N:M");
}

void apply_trace_flags(const TraceFlags& flags, TrainOptions& train) {
  if (!flags.trace.empty()) train.overrides.push_back("train.trace=" + toml_string(flags.trace));
  if (!flags.trace_steps.empty()) {
    train.overrides.push_back("train.trace_steps=" + toml_string(flags.trace_steps));
  }
}

TraceCommands add_trace_command(CLI::App& app, TraceCommandOptions& options) {
  CLI::App* trace = app.add_subcommand("trace", "Merge and summarise the timelines of a run");
  trace->require_subcommand(1);
  TraceCommands c;
  c.merge = trace->add_subcommand(
      "merge", "Merge the ranks' trace files into one Chrome trace on rank 0's clock");
  c.merge->add_option("files", options.files, "The ranks' trace files")
      ->required()
      ->check(CLI::ExistingFile);
  c.merge->add_option("-o,--output", options.output, "The merged trace")->required();
  c.merge->add_flag("--stats", options.stats, "Also print the per-rank statistics");
  c.stats = trace->add_subcommand(
      "stats", "Per rank: backward, bucket reduces and their hidden share, waits, ps push/pull");
  c.stats->add_option("files", options.files, "A merged trace or the ranks' trace files")
      ->required()
      ->check(CLI::ExistingFile);
  return c;
}

int run_trace_merge(const TraceCommandOptions& options, std::ostream& out, std::ostream& err) {
  const std::vector<obs::TraceFile> traces = read_all(options.files);
  const obs::MergeResult merged = obs::merge_traces(traces);
  for (const std::string& note : merged.notes) err << "dtrain trace merge: " << note << "\n";
  io::write_file_atomic(io::default_file_system(), options.output, merged.json);
  size_t events = 0;
  for (const obs::TraceFile& t : traces) events += t.events.size();
  out << fmt::format("merged {} events of {} ranks into {}\n", events, traces.size(),
                     options.output);
  if (options.stats) {
    std::vector<nlohmann::json> all;
    for (const obs::TraceFile& t : traces) all.insert(all.end(), t.events.begin(), t.events.end());
    out << obs::format_trace_stats(obs::trace_stats(all));
  }
  return 0;
}

int run_trace_stats(const TraceCommandOptions& options, std::ostream& out, std::ostream& err) {
  std::vector<nlohmann::json> all;
  for (const obs::TraceFile& t : read_all(options.files)) {
    if (t.truncated) err << "dtrain trace stats: " << t.path << ": the last line was cut\n";
    all.insert(all.end(), t.events.begin(), t.events.end());
  }
  out << obs::format_trace_stats(obs::trace_stats(all));
  return 0;
}

}  // namespace dtrain::cli
