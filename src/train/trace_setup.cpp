#include "train/trace_setup.h"

namespace dtrain::train {

std::unique_ptr<obs::TraceWriter> open_trace(const JobConfig& job, int64_t rank, int64_t workers) {
  const std::string& setting = job.train.trace;
  if (setting.empty()) return nullptr;
  const std::string path = obs::trace_path_for_rank(setting == "auto" ? std::string() : setting,
                                                    job.output, rank, workers);
  return std::make_unique<obs::TraceWriter>(path, rank,
                                            obs::parse_trace_steps(job.train.trace_steps));
}

}  // namespace dtrain::train
