// AllReduceStrategy's state across workers and checkpoints
// (allreduce_strategy.h): the broadcast that makes every replica start from
// rank 0's weights and buffers, and what a checkpoint holds of the group
// (the optimizer, the compression step and level) and of each rank (its
// compressor's residuals).
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "strategy/allreduce_strategy.h"
#include "strategy/compression.h"

namespace dtrain::strategy {

void AllReduceStrategy::broadcast_state(bool parameters) {
  if (collectives_.size() == 1) return;
  std::vector<Tensor> tensors;
  if (parameters) {
    for (const Variable& p : params_) tensors.push_back(p.data());
  }
  for (auto& [name, buffer] : model_->named_buffers()) tensors.push_back(buffer);
  size_t total = 0;
  for (const Tensor& t : tensors) total += static_cast<size_t>(t.numel());
  if (total == 0) return;
  std::vector<float> flat(total);
  size_t offset = 0;
  for (const Tensor& t : tensors) {
    std::copy_n(t.data(), t.numel(), flat.begin() + static_cast<std::ptrdiff_t>(offset));
    offset += static_cast<size_t>(t.numel());
  }
  collectives_.broadcast(flat, 0);
  offset = 0;
  for (const Tensor& t : tensors) {
    std::copy_n(flat.begin() + static_cast<std::ptrdiff_t>(offset), t.numel(), t.data());
    offset += static_cast<size_t>(t.numel());
  }
}

void AllReduceStrategy::sync_replicas() {
  check_usable("sync_replicas");
  try {
    broadcast_state(true);
  } catch (const CommError& e) {
    failure_ = e.what();
    throw;
  }
  micro_step_ = 0;
  window_ = {};
  window_compute_s_ = 0.0;
  optimizer_->zero_grad();
}

StateDict AllReduceStrategy::optimizer_state() {
  StateDict state = optimizer_->state_dict();
  if (!options_.compression.active()) return state;
  // The group's: the same on every worker. Each worker's residuals are its
  // rank_state().
  state.metadata()["compress/step"] = std::to_string(run_updates_);
  state.metadata()["compress/level"] = std::to_string(level_);
  return state;
}

void AllReduceStrategy::load_optimizer_state(const StateDict& state) {
  StateDict own = state;  // handles: no copy of the tensors
  std::erase_if(own.metadata(), [](const auto& kv) { return kv.first.rfind("compress/", 0) == 0; });
  optimizer_->load_state_dict(own);
  if (!options_.compression.active()) return;
  const auto& meta = state.metadata();
  const auto step = meta.find("compress/step");
  run_updates_ = step == meta.end() ? 0 : std::stoll(step->second);
  const auto level = meta.find("compress/level");
  set_communication_level(level == meta.end() ? 0 : std::stoi(level->second));
}

StateDict AllReduceStrategy::rank_state() const {
  if (reducer_ == nullptr) return {};
  return compressor_state_dict(reducer_->compressor().save(), collectives_.size());
}

void AllReduceStrategy::load_rank_state(const std::optional<StateDict>& state) {
  if (reducer_ == nullptr) return;
  std::string why = "the checkpoint holds no compressor state for this rank";
  const std::optional<compress::State> saved =
      state ? compressor_state_from(*state, collectives_.size(), why) : std::nullopt;
  if (saved) {
    reducer_->compressor().load(*saved);
    return;
  }
  reducer_->compressor().reset();
  if (options_.logger != nullptr) {
    options_.logger->warn("rank {}: {}: residuals and warm starts start afresh", rank(), why);
  }
}

}  // namespace dtrain::strategy
