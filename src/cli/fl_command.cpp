#include "cli/fl_command.h"

#include <fmt/format.h>

#include <chrono>

#include "core/error.h"
#include "core/log.h"
#include "io/output_lock.h"
#include "train/job_file.h"
#include "train/run_fl.h"

namespace dtrain::cli {

std::vector<std::string> fl_overrides(const FlCommandOptions& options) {
  std::vector<std::string> overrides = options.overrides;
  if (options.clients) overrides.push_back(fmt::format("fl.clients={}", *options.clients));
  if (options.fraction) overrides.push_back(fmt::format("fl.fraction={}", *options.fraction));
  if (options.rounds) overrides.push_back(fmt::format("fl.rounds={}", *options.rounds));
  if (options.threads) overrides.push_back(fmt::format("fl.threads={}", *options.threads));
  return overrides;
}

int run_fl_command(const FlCommandOptions& options, std::ostream& out) {
  const auto started = std::chrono::system_clock::now();
  Logger& logger = Logger::stderr_logger();
  train::JobFile file = train::read_job_file(options.job_file, fl_overrides(options));
  for (const std::string& note : file.notes) logger.warn("{}", note);
  train::JobConfig job = std::move(file.job);
  if (options.output) {
    if (options.output->empty()) {
      throw UsageError(
          "--output must name a folder (it receives the checkpoints, the metrics and the final "
          "weights)");
    }
    job.output = *options.output;
  }
  if (options.resume) job.resume = *options.resume;
  std::string command_line;
  for (const std::string& arg : options.argv) {
    command_line += (command_line.empty() ? "" : " ") + arg;
  }
  const io::OutputLock lock =
      io::OutputLock::acquire(job.output, io::this_process_record(command_line, started), logger);
  train::FlRunOptions run;
  run.out = options.progress == "none" ? nullptr : &out;
  run.logger = &logger;
  return train::run_fl(job, run);
}

}  // namespace dtrain::cli
