#include "train/rank_metrics.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/file_system.h"

namespace dtrain::train {

RankMetricsWriter::RankMetricsWriter(const std::string& output, int64_t slot,
                                     int64_t log_every_steps, int64_t batch_size,
                                     std::function<int64_t()> group_rank)
    : path_(fmt::format("{}/ranks/rank-{}.jsonl", output, slot)),
      log_every_steps_(log_every_steps),
      batch_size_(batch_size),
      group_rank_(std::move(group_rank)) {
  io::default_file_system().create_directories(output + "/ranks");
  out_.open(path_, std::ios::app);
  if (!out_) throw Error(fmt::format("cannot open the rank metrics file {} for appending", path_));
}

void RankMetricsWriter::on_step_end(const StepInfo& s) {
  if (log_every_steps_ <= 0 || s.step % log_every_steps_ != 0) return;
  const int64_t rank = group_rank_ ? group_rank_() : 0;
  int64_t rows = s.split.empty() ? batch_size_ : 0;
  if (rank >= 0 && static_cast<size_t>(rank) < s.split.size()) {
    rows = s.split[static_cast<size_t>(rank)];
  }
  nlohmann::json line{
      {"time",
       std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count()},
      {"step", s.step},
      {"samples_per_s", s.samples_per_s},
      {"rows", rows},
      {"bytes_per_step", s.bytes_per_step},
      {"group_rank", rank}};
  out_ << line.dump() << '\n';
  out_.flush();
  if (!out_) throw Error(fmt::format("cannot write the rank metrics file {}", path_));
}

}  // namespace dtrain::train
