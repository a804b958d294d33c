// The Trainer's convergence guard and every rank's own state
// (train/trainer.h): snapshots, rescues, and the rank state written beside
// the checkpoints.
#include <fmt/format.h>

#include <cmath>

#include "io/checkpoint.h"
#include "io/file_system.h"
#include "train/trainer.h"

namespace dtrain::train {

void Trainer::take_snapshot(int64_t step) {
  snapshot_.step = step;
  snapshot_.model = strategy_.model().state_dict().clone();
  snapshot_.optimizer = strategy_.optimizer_state().clone();
  snapshot_.rank = strategy_.rank_state().clone();
}

void Trainer::save_rank_state(const Position& position) {
  StateDict state = strategy_.rank_state();
  if (state.empty()) return;
  if (rank_writer_ == nullptr) {
    rank_writer_ = std::make_unique<CheckpointWriter>(
        fmt::format("{}/rank-{}", job_.output, rank_),
        std::max<int64_t>(1, job_.train.keep_checkpoints), io::default_file_system(), logger_);
  }
  io::Checkpoint c;
  c.step = position.step;
  c.epoch = position.epoch;
  c.add_section("rank_state", state.clone());
  rank_writer_->submit(std::move(c));
}

std::optional<StateDict> Trainer::find_rank_state(const io::Checkpoint& c) const {
  if (chief_) {
    if (!c.has_section("rank_state")) return std::nullopt;
    return c.section("rank_state");
  }
  const io::CheckpointDirectory dir(fmt::format("{}/rank-{}", job_.output, rank_), 1,
                                    io::default_file_system(), logger_);
  const std::string path = dir.path_for(c.step);
  try {
    if (!io::default_file_system().exists(path)) return std::nullopt;
    io::Checkpoint mine = io::read_checkpoint(path);
    if (mine.step != c.step || !mine.has_section("rank_state")) return std::nullopt;
    return mine.section("rank_state");
  } catch (const Error& e) {
    logger_.warn("rank {}: cannot read {}: {}", rank_, path, e.what());
    return std::nullopt;
  }
}

bool Trainer::guard_update(int64_t step, const strategy::StepStats& stats) {
  const double loss = stats.samples > 0 ? stats.loss_sum / double(stats.samples)
                                        : (std::isfinite(stats.loss_sum) ? 0.0 : stats.loss_sum);
  if (stats.samples == 0 && std::isfinite(loss)) return true;  // nothing was learnt
  if (!guard_->diverged(loss)) {
    if (guard_->snapshot_due(step)) take_snapshot(step);
    if (guard_->relax(step)) {
      strategy_.set_communication_level(guard_->level());
      report(
          fmt::format("step {}: convergence guard: the fallback's hold is over; continuing "
                      "with {}",
                      step, strategy_.communication()));
    }
    return true;
  }
  GuardEvent event;
  event.step = step;
  event.restored_step = snapshot_.step;
  event.reason = std::isfinite(loss)
                     ? fmt::format("the loss rose to {:.4g} over the last {} updates", loss,
                                   job_.compression.guard.window)
                     : "the loss or the gradient is not finite";
  event.from = strategy_.communication();
  strategy_.model().load_state_dict(snapshot_.model, true);
  strategy_.load_optimizer_state(snapshot_.optimizer);
  strategy_.load_rank_state(snapshot_.rank);
  guard_->rescued(step);
  strategy_.set_communication_level(guard_->level());
  event.to = strategy_.communication();
  event.hold_steps = job_.compression.guard.hold_steps;
  report(
      fmt::format("step {}: convergence guard: {} under {}; restored the weights of step {} "
                  "and continue with {} for {} updates (rescue {})",
                  step, event.reason, event.from, event.restored_step, event.to, event.hold_steps,
                  guard_->rescues()));
  for (Callback* c : callbacks_) c->on_guard(event);
  return false;
}

}  // namespace dtrain::train
