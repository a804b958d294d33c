// Trainer's checkpoint side: setting aside an earlier run's checkpoints,
// resuming from the newest valid one, and taking a snapshot for the writer
// thread. The contracts are in trainer.h.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "train/trainer.h"

namespace dtrain::train {

namespace {

std::vector<int64_t> parse_counts(const std::string& text) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    out.push_back(std::stoll(text.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

std::string metadata_at(const io::Checkpoint& c, const std::string& key, const std::string& path) {
  auto it = c.metadata.find(key);
  if (it == c.metadata.end()) throw CheckpointError(path, c.step, "missing metadata '" + key + "'");
  return it->second;
}

}  // namespace

void Trainer::set_aside_earlier_checkpoints() {
  io::CheckpointDirectory dir(job_.output, std::max<int64_t>(1, job_.train.keep_checkpoints),
                              io::default_file_system(), logger_);
  if (const auto moved = dir.set_aside("earlier-run")) {
    logger_.warn(
        "training afresh (no resume): moved {} checkpoint(s) of an earlier run (steps {} "
        "to {}) from {} to {}",
        moved->steps.size(), moved->steps.front(), moved->steps.back(), job_.output, moved->folder);
  }
}

bool Trainer::resume(Position& position, const RunPlan& plan, const data::TensorDataset& train) {
  io::CheckpointDirectory dir(job_.output, std::max<int64_t>(1, job_.train.keep_checkpoints),
                              io::default_file_system(), logger_);
  const bool had_checkpoints = !dir.steps().empty();
  io::ResumeCheck check;
  check.identity = {job_.name, state_fingerprint(strategy_.model().state_dict())};
  // A partitioned epoch takes at most one step per sample.
  check.max_step = plan.partitioned ? job_.train.epochs * std::max<int64_t>(1, train.size())
                                    : plan.planned_steps;
  check.max_epoch = job_.train.epochs;
  check.force_identity = job_.force_resume;
  io::CheckpointLoadOptions options;
  options.validate = io::resume_validator(check, logger_);
  options.move_refused = chief_;  // the others only read the folder
  std::optional<io::CheckpointDirectory::Found> found = dir.load_latest(options);
  if (!found) {
    if (had_checkpoints) {
      report(
          fmt::format("no valid checkpoint in {} (refused ones are in {}/{}): starting afresh "
                      "(one of another job is taken with --force-resume)",
                      job_.output, job_.output, io::kRejectedFolder));
    }
    return false;
  }
  const io::Checkpoint& c = found->checkpoint;
  const std::string batch_size = metadata_at(c, "batch_size", found->path);
  if (batch_size != std::to_string(job_.train.batch_size)) {
    throw CheckpointError(found->path, c.step,
                          fmt::format("written with batch size {}, the job now has {}; resume with "
                                      "the same batch size or train afresh with --no-resume",
                                      batch_size, job_.train.batch_size));
  }
  try {
    strategy_.model().load_state_dict(c.section("model"), true);
    strategy_.load_optimizer_state(c.section("optimizer"));
  } catch (const UsageError& e) {
    throw CheckpointError(found->path, c.step,
                          fmt::format("does not fit this job's model: {}", e.what()));
  }
  strategy_.sync_replicas();
  strategy_.load_rank_state(find_rank_state(c));
  position.step = c.step;
  position.epoch = c.epoch;
  position.batch_in_epoch = std::stoll(metadata_at(c, "batch_in_epoch", found->path));
  restore_extras(c, found->path);
  report(position.epoch >= job_.train.epochs
             ? fmt::format("resumed from {}: the run had finished (step {})", found->path, c.step)
             : fmt::format("resumed from {} at step {}: epoch {}, batch {}", found->path, c.step,
                           c.epoch + 1, position.batch_in_epoch + 1));
  return true;
}

void Trainer::restore_extras(const io::Checkpoint& c, const std::string& path) {
  if (auto it = c.metadata.find("guard"); it != c.metadata.end() && guard_ != nullptr) {
    try {
      guard_->decode(it->second);
    } catch (const DataError& e) {
      throw CheckpointError(path, c.step, e.what());
    }
    strategy_.set_communication_level(guard_->level());
  }
  if (dp_ != nullptr) {
    if (c.metadata.contains("privacy_phases")) {
      try {
        dp_->restore(c.metadata);
      } catch (const UsageError& e) {
        throw CheckpointError(path, c.step, e.what());
      }
    } else if (c.step > 0) {
      throw CheckpointError(path, c.step,
                            "written without [privacy]: the privacy spent by its steps is "
                            "unknown; train afresh with --no-resume");
    }
  }
  resumed_part_consumed_.clear();
  if (auto it = c.metadata.find("part_consumed"); it != c.metadata.end()) {
    try {
      resumed_part_consumed_ = parse_counts(it->second);
    } catch (const std::exception&) {
      throw CheckpointError(
          path, c.step,
          fmt::format("metadata part_consumed '{}' is not a list of counts", it->second));
    }
  }
}

void Trainer::save_checkpoint(const Position& position) {
  // The snapshot owns copies of the tensors: training continues while the
  // writer thread encodes and writes it.
  io::Checkpoint c;
  c.step = position.step;
  c.epoch = position.epoch;
  c.metadata["batch_in_epoch"] = std::to_string(position.batch_in_epoch);
  c.metadata["batch_size"] = std::to_string(job_.train.batch_size);
  c.metadata["seed"] = std::to_string(job_.seed);
  if (!part_consumed_.empty())
    c.metadata["part_consumed"] = fmt::format("{}", fmt::join(part_consumed_, ","));
  if (guard_ != nullptr) c.metadata["guard"] = guard_->encode();
  if (dp_ != nullptr) {
    for (auto& [key, value] : dp_->checkpoint_metadata()) c.metadata[key] = value;
  }
  strategy_.fetch_model();
  c.add_section("model", strategy_.model().state_dict().clone());
  c.add_section("optimizer", strategy_.optimizer_state().clone());
  if (StateDict mine = strategy_.rank_state(); !mine.empty()) {
    c.add_section("rank_state", mine.clone());
  }
  io::stamp_identity(c, {job_.name, state_fingerprint(c.section("model"))});
  if (const auto bad = io::describe_non_finite(c)) {
    throw NumericError(
        fmt::format("step {}: the state to checkpoint is not finite ({}); no "
                    "checkpoint was written, the last one on disk is finite",
                    position.step, *bad));
  }
  last_checkpoint_ = std::chrono::steady_clock::now();
  writer_->submit(std::move(c));
}

}  // namespace dtrain::train
