#include "strategy/ps_strategy.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "autograd/functions.h"
#include "core/error.h"

namespace dtrain::strategy {
namespace {

constexpr const char* kSparsePrefix = ps::kCheckpointSparsePrefix;
constexpr const char* kVersionKey = ps::kCheckpointVersionKey;

// Every nn::Embedding in `module`'s tree, depth first in registration order.
void find_embeddings(nn::Module& module, std::vector<nn::Embedding*>& out) {
  if (auto* embedding = dynamic_cast<nn::Embedding*>(&module)) out.push_back(embedding);
  for (auto& [name, child] : module.named_children()) find_embeddings(*child, out);
}

std::vector<uint64_t> to_keys(std::span<const int64_t> indices) {
  return {indices.begin(), indices.end()};
}

}  // namespace

PsStrategy::PsStrategy(std::unique_ptr<nn::Module> model, ps::ClientOptions client_options,
                       const comm::JobAuth& auth, Logger& logger, PsOptions options, LossFn loss)
    : model_(std::move(model)),
      lr_(options.learning_rate),
      options_(options),
      loss_(std::move(loss)),
      // A bad worker count is the client's to report (below).
      balancer_(std::max(1, client_options.num_workers), options.dynamic_batch) {
  if (model_ == nullptr) throw UsageError("ps strategy: no model given");
  if (options_.dynamic_batch.enabled && options_.consistency != ps::Consistency::kSync) {
    throw UsageError(fmt::format(
        "ps strategy: dynamic batch sizing needs consistency 'sync', not '{}': the workers' "
        "shares come from each version's measurements, which only sync has",
        ps::to_string(options_.consistency)));
  }
  if (options_.fetch_rows_per_request < 1) {
    throw UsageError(fmt::format("ps strategy: fetch_rows_per_request must be at least 1, got {}",
                                 options_.fetch_rows_per_request));
  }
  if (!(options_.embedding_init_std >= 0.0f)) {
    throw UsageError(fmt::format("ps strategy: embedding_init_std must not be negative, got {}",
                                 options_.embedding_init_std));
  }
  logger_ = &logger;
  worker_ = client_options.worker;
  num_workers_ = client_options.num_workers;
  params_ = model_->parameters();

  // Which parameters are embedding tables (row-sparse on the servers).
  std::vector<nn::Embedding*> embeddings;
  find_embeddings(*model_, embeddings);
  std::vector<bool> sparse(params_.size(), false);
  std::vector<ps::SparseTableSpec> table_specs;
  for (nn::Embedding* e : embeddings) {
    const auto it = std::find_if(params_.begin(), params_.end(),
                                 [&](const Variable& p) { return p.impl() == e->weight().impl(); });
    DTRAIN_CHECK(it != params_.end(), "embedding {} has a weight outside the model's parameters",
                 e->label());
    const auto index = static_cast<size_t>(it - params_.begin());
    sparse[index] = true;
    tables_.push_back({e, index});
    table_specs.push_back(
        {e->name().empty() ? fmt::format("table{}", tables_.size() - 1) : e->name() + ".weight",
         e->embedding_dim(), options_.embedding_init_std});
  }
  StateDict dense;
  const auto named = model_->named_parameters();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (sparse[i]) continue;
    dense_.push_back(i);
    dense_data_.push_back(params_[i].data());
    zero_grads_.push_back(Tensor::zeros(params_[i].shape()));
    dense.insert(named[i].first, params_[i].data());
  }

  const auto connecting = std::chrono::steady_clock::now();
  client_ = std::make_unique<ps::Client>(std::move(client_options), auth, logger);
  client_->init(dense, table_specs);
  joined_step_ = client_->joined_step();
  if (joined_step_ > 0) {
    logger.warn(
        "ps worker {}: joined the running job at step {} in {:.3f} s", worker_, joined_step_,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - connecting).count());
  }
  pull_dense(0);

  for (size_t t = 0; t < tables_.size(); ++t) {
    nn::Embedding* e = tables_[t].module;
    e->set_lookup_hook([this, t, e](std::span<const int64_t> indices) {
      if (e->is_training()) pull_rows(t, indices);
    });
  }
}

PsStrategy::~PsStrategy() {
  for (Table& t : tables_) t.module->set_lookup_hook({});
}

void PsStrategy::pull_dense(uint64_t min_version) {
  version_ = client_->pull(dense_data_, min_version);
  job_totals_ = client_->last_totals();
  track_live_workers();
}

void PsStrategy::track_live_workers() {
  if (options_.consistency != ps::Consistency::kSync || options_.dynamic_batch.enabled ||
      !options_.reshard_lost_workers) {
    return;
  }
  const std::vector<ps::WorkerStep>& steps = job_totals_.workers;
  if (static_cast<int64_t>(steps.size()) != num_workers_) return;  // no version closed yet
  std::vector<bool> live(steps.size());
  for (size_t w = 0; w < steps.size(); ++w) {
    live[w] = steps[w].counted || static_cast<int64_t>(w) == worker_;
  }
  if (std::all_of(live.begin(), live.end(), [](bool b) { return b; })) live.clear();
  if (live == live_) return;
  std::string gone;
  for (size_t w = 0; w < live.size(); ++w) {
    if (!live[w]) gone += fmt::format("{}{}", gone.empty() ? "" : ", ", w);
  }
  const auto count = live.empty() ? num_workers_ : std::count(live.begin(), live.end(), true);
  logger_->warn("ps worker {}: from version {} the global batch is split over {} worker(s){}",
                worker_, version_, count,
                gone.empty() ? std::string(" (all)")
                             : fmt::format(" (worker(s) {} missed the last version)", gone));
  live_ = std::move(live);
}

std::vector<int64_t> PsStrategy::batch_split(int64_t batch_rows) const {
  if (live_.empty()) return balancer_.split(batch_rows);
  const auto count = static_cast<int64_t>(std::count(live_.begin(), live_.end(), true));
  std::vector<int64_t> rows(live_.size(), 0);
  int64_t k = 0;
  for (size_t w = 0; w < live_.size(); ++w) {
    if (!live_[w]) continue;
    rows[w] = batch_rows * (k + 1) / count - batch_rows * k / count;
    ++k;
  }
  return rows;
}

void PsStrategy::pull_rows(size_t table, std::span<const int64_t> indices) {
  std::vector<int64_t> unique(indices.begin(), indices.end());
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  if (unique.empty()) return;
  const Tensor& weight = tables_[table].module->weight().data();
  const int64_t dim = weight.size(1);
  const Tensor rows = Tensor::empty({static_cast<int64_t>(unique.size()), dim});
  client_->pull_rows(table, to_keys(unique), rows);
  const float* src = rows.data();
  float* dst = weight.data();
  for (size_t i = 0; i < unique.size(); ++i) {
    std::copy_n(src + static_cast<int64_t>(i) * dim, dim, dst + unique[i] * dim);
  }
}

void PsStrategy::push_rows(size_t table, int64_t samples) {
  Variable& weight = params_[tables_[table].param];
  if (weight.grad().defined()) {
    throw UsageError(fmt::format(
        "ps strategy: {} got a dense gradient; a table on the parameter servers takes only "
        "row-sparse gradients (use it through its lookup alone)",
        tables_[table].module->label()));
  }
  const SparseRows* grad = weight.sparse_grad();
  if (grad == nullptr || grad->indices.empty() || samples == 0) return;
  SparseRows rows{grad->indices, grad->values.clone(), grad->num_rows};
  rows.coalesce();
  client_->push_rows(table, to_keys(rows.indices), rows.values, lr_, version_);
}

StepStats PsStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  try {
    return step(inputs, targets);
  } catch (const ps::WorkerLeftOut& e) {
    throw LeftGroup(fmt::format("worker {}: {}: exiting", worker_, e.what()));
  }
}

StepStats PsStrategy::step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/true);
  model_->zero_grad();
  StepStats mine;
  double compute_s = 0.0;
  if (n > 0) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    model_->train();
    const Variable output = model_->forward(Variable(inputs));
    const Variable loss = loss_(output, targets);
    mine = {static_cast<double>(loss.item()) * static_cast<double>(n),
            count_correct(output.data(), targets), n};
    loss.backward();  // the mean gradient over this worker's rows
    check_finite_gradients(*model_);
    compute_s = account_compute(std::chrono::duration<double>(Clock::now() - start).count(), n);
  }
  // Rows first: in sync the servers hold them for the version that the dense
  // push below completes.
  for (size_t t = 0; t < tables_.size(); ++t) push_rows(t, n);
  std::vector<Tensor> grads;
  grads.reserve(dense_.size());
  for (size_t k = 0; k < dense_.size(); ++k) {
    Variable& p = params_[dense_[k]];
    grads.push_back(n > 0 && p.has_grad() ? p.dense_grad() : zero_grads_[k]);
  }
  push_dense_and_pull(grads, mine, compute_s);
  model_->zero_grad();
  return mine;
}

void PsStrategy::push_dense_and_pull(const std::vector<Tensor>& grads, const StepStats& mine,
                                     double compute_s) {
  const bool sync = options_.consistency == ps::Consistency::kSync;
  // async/ssp without dense parameters: nothing to push, no version to wait
  // for. In sync the (possibly empty) push also closes the version that
  // applies the held rows.
  if (grads.empty() && !sync) return;
  const uint64_t pushed_at = version_;
  client_->push(grads, mine.samples, lr_, pushed_at, mine.loss_sum, mine.correct, compute_s);
  pull_dense(sync ? pushed_at + 1 : 0);
  const std::vector<ps::WorkerStep>& steps = job_totals_.workers;
  if (options_.dynamic_batch.enabled && static_cast<int64_t>(steps.size()) == num_workers_) {
    std::vector<double> rows(steps.size());
    std::vector<double> seconds(steps.size());
    for (size_t w = 0; w < steps.size(); ++w) {
      rows[w] = static_cast<double>(steps[w].samples);
      seconds[w] = steps[w].compute_s;
    }
    balancer_.observe(rows, seconds);
  }
}

StepStats PsStrategy::step_totals(const StepStats& local) const {
  if (options_.consistency == ps::Consistency::kSync) {
    return {job_totals_.loss_sum, job_totals_.correct, job_totals_.samples};
  }
  const auto n = static_cast<double>(num_workers_);
  return {local.loss_sum * n, local.correct * num_workers_, local.samples * num_workers_};
}

void PsStrategy::fetch_model() {
  if (options_.consistency != ps::Consistency::kSync) pull_dense(0);
  for (size_t t = 0; t < tables_.size(); ++t) {
    const Tensor& weight = tables_[t].module->weight().data();
    const int64_t rows = weight.size(0);
    for (int64_t first = 0; first < rows; first += options_.fetch_rows_per_request) {
      const int64_t count = std::min(options_.fetch_rows_per_request, rows - first);
      std::vector<uint64_t> keys(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) keys[static_cast<size_t>(i)] = uint64_t(first + i);
      client_->pull_rows(t, keys, weight.narrow(first, count));
    }
  }
}

void PsStrategy::set_learning_rate(float lr) {
  if (!(lr >= 0.0f) || !std::isfinite(lr)) {
    throw UsageError(fmt::format("ps strategy: learning rate {} must be finite and >= 0", lr));
  }
  lr_ = lr;
}

StateDict PsStrategy::optimizer_state() {
  ps::PsState state = client_->pull_state();
  StateDict out = std::move(state.optimizer);
  out.merge(state.sparse, kSparsePrefix);
  out.metadata()[kVersionKey] = std::to_string(state.version);
  if (!options_.launch_id.empty()) out.metadata()[ps::kCheckpointLaunchKey] = options_.launch_id;
  return out;
}

void PsStrategy::load_optimizer_state(const StateDict& state) {
  // Checks the version metadata now (UsageError), on every worker.
  (void)ps::state_from_checkpoint(StateDict{}, state, {}, 0);
  if (!tables_.empty() && state.sub(kSparsePrefix).empty()) {
    throw UsageError(fmt::format(
        "ps strategy: the optimizer state holds no parameter-server rows ('{}*') for the "
        "model's {} embedding table(s): a checkpoint of another strategy cannot resume a ps "
        "job with embeddings",
        kSparsePrefix, tables_.size()));
  }
  pending_state_ = std::make_unique<StateDict>(state.clone());
}

StateDict PsStrategy::dense_state() const {
  StateDict dense;
  const auto named = model_->named_parameters();
  for (size_t i : dense_) dense.insert(named[i].first, named[i].second.data());
  return dense;
}

void PsStrategy::sync_replicas() {
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
  balancer_.reset();  // shares are runtime state: a resumed run starts equal
  pending_state_.reset();
}

std::optional<int64_t> PsStrategy::joined_at_step() const {
  if (joined_step_ == 0) return std::nullopt;
  return static_cast<int64_t>(joined_step_);
}

void PsStrategy::finish() { client_->finish(); }

}  // namespace dtrain::strategy
