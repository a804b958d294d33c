// PsStrategy's checkpoints (ps_strategy.h holds the contract): the servers'
// whole state as the optimizer state, the worker's compression counters and
// residuals, and the servers re-initialised from a checkpoint on resume.
#include <fmt/format.h>

#include <charconv>
#include <string>

#include "core/error.h"
#include "strategy/ps_strategy.h"

namespace dtrain::strategy {
namespace {

constexpr const char* kSparsePrefix = ps::kCheckpointSparsePrefix;
constexpr const char* kVersionKey = ps::kCheckpointVersionKey;

}  // namespace

StateDict PsStrategy::optimizer_state() {
  sync_params();
  ps::PsState state = client_->pull_state();
  StateDict out = std::move(state.optimizer);
  out.merge(state.sparse, kSparsePrefix);
  out.metadata()[kVersionKey] = std::to_string(state.version);
  if (!options_.launch_id.empty()) out.metadata()[ps::kCheckpointLaunchKey] = options_.launch_id;
  save_compression(out);
  return out;
}

namespace {

// The worker's own part of the optimizer state (ps_strategy.h).
constexpr const char* kMethodKey = "compress/method";
constexpr const char* kWorkersKey = "compress/workers";
constexpr const char* kStepKey = "compress/step";

int64_t metadata_number(const StateDict& state, const std::string& key) {
  const std::string& text = state.metadata().at(key);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 0) {
    throw UsageError(
        fmt::format("ps strategy: optimizer state metadata '{}' is '{}', not a count", key, text));
  }
  return value;
}

}  // namespace

void PsStrategy::save_compression(StateDict& out) const {
  const CompressionSettings& c = options_.compression;
  if (!c.active()) return;
  out.metadata()[kMethodKey] = std::string(compress::to_string(c.codec.method));
  out.metadata()[kWorkersKey] = std::to_string(num_workers_);
  out.metadata()[kStepKey] = std::to_string(updates_);
}

void PsStrategy::load_compression(const StateDict& state) {
  pending_updates_.reset();
  const CompressionSettings& c = options_.compression;
  if (!c.active() || state.metadata().count(kStepKey) == 0) return;
  pending_updates_ = metadata_number(state, kStepKey);
}

StateDict PsStrategy::rank_state() const {
  if (!options_.compression.compresses()) return {};
  return compressor_state_dict(client_->compression_state(), num_workers_);
}

void PsStrategy::load_rank_state(const std::optional<StateDict>& state) {
  if (!options_.compression.compresses()) return;
  std::string why = "the checkpoint holds no compressor state for this worker";
  const std::optional<compress::State> saved =
      state ? compressor_state_from(*state, num_workers_, why) : std::nullopt;
  if (saved) {
    client_->load_compression_state(*saved);
    return;
  }
  client_->reset_compression();
  logger_->warn("ps worker {}: {}: its residuals start afresh", worker_, why);
}

void PsStrategy::load_optimizer_state(const StateDict& state) {
  sync_params();
  // Checks the version metadata now (UsageError), on every worker.
  (void)ps::state_from_checkpoint(StateDict{}, state, {}, 0);
  if (!tables_.empty() && state.sub(kSparsePrefix).empty()) {
    throw UsageError(fmt::format(
        "ps strategy: the optimizer state holds no parameter-server rows ('{}*') for the "
        "model's {} embedding table(s): a checkpoint of another strategy cannot resume a ps "
        "job with embeddings",
        kSparsePrefix, tables_.size()));
  }
  load_compression(state);
  pending_state_ = std::make_unique<StateDict>(state.clone());
}

StateDict PsStrategy::dense_state() const {
  StateDict dense;
  const auto named = model_->named_parameters();
  for (size_t i : dense_) dense.insert(named[i].first, named[i].second.data());
  return dense;
}

void PsStrategy::sync_replicas() {
  sync_params();
  if (pending_state_ == nullptr) {
    throw UsageError(
        "ps strategy: sync_replicas() needs the checkpoint's optimizer state first "
        "(load_optimizer_state): the servers are re-initialised from both");
  }
  // The servers' version after the load: the checkpoint's, and at least 1,
  // so that workers waiting for it never take the servers' fresh version 0.
  const StateDict dense = dense_state();
  std::vector<std::string> names;
  for (const auto& [name, tensor] : dense) names.push_back(name);
  const ps::PsState state = ps::state_from_checkpoint(dense, *pending_state_, names, 1);
  if (worker_ == 0) client_->load_state(state);
  pull_dense(state.version);
  updates_ = pending_updates_.value_or(
      options_.consistency == ps::Consistency::kSync ? updates_at_version(version_) : updates_);
  pending_updates_.reset();
  round_ = {};
  round_compute_s_ = 0.0;
  row_prefetch_.clear();  // rows of the servers' state before the load
  balancer_.reset();      // shares are runtime state: a resumed run starts equal
  pending_state_.reset();
}

}  // namespace dtrain::strategy
