#include "strategy/ps_strategy.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <string>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/trace.h"
#include "nn/sequential.h"

namespace dtrain::strategy {
namespace {

// Every nn::Embedding in `module`'s tree, depth first in registration order.
void find_embeddings(nn::Module& module, std::vector<nn::Embedding*>& out) {
  if (auto* embedding = dynamic_cast<nn::Embedding*>(&module)) out.push_back(embedding);
  for (auto& [name, child] : module.named_children()) find_embeddings(*child, out);
}

std::vector<PsRowPrefetch::TableShape> table_shapes(const std::vector<nn::Embedding*>& tables) {
  std::vector<PsRowPrefetch::TableShape> shapes;
  for (const nn::Embedding* e : tables) shapes.push_back({e->num_embeddings(), e->embedding_dim()});
  return shapes;
}

std::vector<uint64_t> to_keys(std::span<const int64_t> indices) {
  return {indices.begin(), indices.end()};
}

// Local SGD's limits (docs/parameter-server.md "Local SGD"): ConfigError
// naming the key.
void check_compression(const PsOptions& o, bool has_tables) {
  const CompressionSettings& c = o.compression;
  if (c.start_step < 0) {
    throw ConfigError(fmt::format(
        "compression.start_step = {}: must be >= 0 (the dense updates before compression)",
        c.start_step));
  }
  if (c.local_steps < 1) {
    throw ConfigError(
        fmt::format("compression.local_steps = {}: must be >= 1 (1: no local SGD)", c.local_steps));
  }
  if (!c.local_sgd()) return;
  auto refuse = [&](const std::string& why) {
    throw ConfigError(
        fmt::format("compression.local_steps = {} with the ps strategy: {}", c.local_steps, why));
  };
  if (o.consistency != ps::Consistency::kSync) {
    refuse(
        fmt::format("local SGD needs consistency 'sync', not '{}' (a round's movement is "
                    "averaged over the workers of one version)",
                    ps::to_string(o.consistency)));
  }
  if (has_tables) {
    refuse(
        "the model has embedding tables, whose rows live on the servers; local SGD "
        "trains dense parameters only");
  }
  if (o.dynamic_batch.enabled) {
    refuse("dynamic batch sizing measures every version, and local SGD closes one per round");
  }
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
  lookups_.resize(tables_.size());
  row_prefetch_ = PsRowPrefetch(table_shapes(embeddings));
  StateDict dense;
  const auto named = model_->named_parameters();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (sparse[i]) continue;
    dense_.push_back(i);
    dense_data_.push_back(params_[i].data());
    zero_grads_.push_back(Tensor::zeros(params_[i].shape()));
    dense.insert(named[i].first, params_[i].data());
  }

  check_compression(options_, !tables_.empty());
  if (options_.compression.compresses()) client_options.compression = options_.compression.codec;
  if (client_options.trace == nullptr) client_options.trace = options_.trace;

  const auto connecting = std::chrono::steady_clock::now();
  client_ = std::make_unique<ps::Client>(std::move(client_options), auth, logger);
  client_->init(dense, table_specs);
  joined_step_ = client_->joined_step();
  if (joined_step_ > 0) {
    logger.warn(
        "ps worker {}: joined the running job at step {} in {:.3f} s", worker_, joined_step_,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - connecting).count());
  }
  if (options_.trace != nullptr) align_trace_clock();
  pull_dense(0);
  updates_ = options_.consistency == ps::Consistency::kSync ? updates_at_version(version_)
                                                            : static_cast<int64_t>(joined_step_);

  for (size_t t = 0; t < tables_.size(); ++t) {
    nn::Embedding* e = tables_[t].module;
    e->set_lookup_hook([this, t, e](std::span<const int64_t> indices) {
      if (e->is_training()) pull_rows(t, indices);
    });
  }
  if (overlap_applies()) start_overlap();
}

void PsStrategy::start_overlap() {
  std::vector<Variable> dense_params;
  for (size_t i : dense_) dense_params.push_back(params_[i]);
  overlap_ = std::make_unique<PsOverlap>(*client_, std::move(dense_params), zero_grads_);
  if (auto* sequential = dynamic_cast<nn::Sequential*>(model_.get())) {
    sequential->set_forward_pre_hook([this](nn::Module& layer) { overlap_->before_layer(layer); });
    layer_waits_ = true;
  }
}

bool PsStrategy::overlap_applies() const {
  if (!options_.overlap) return false;
  std::string why;
  if (options_.consistency != ps::Consistency::kSync) {
    why = fmt::format("consistency is '{}', not 'sync'", ps::to_string(options_.consistency));
  } else if (!tables_.empty()) {
    why = "the model has embedding tables (their rows ride with the last request)";
  } else if (options_.compression.active()) {
    why = fmt::format("pushes are compressed or averaged locally ({})",
                      options_.compression.describe());
  } else if (options_.dynamic_batch.enabled) {
    why = "dynamic batch sizing needs each push's measured compute time";
  }
  if (why.empty()) {
    if (worker_ == 0) {
      logger_->info(
          "ps worker 0: each server's push leaves during backward once its range is "
          "final (distributed.ps.overlap)");
    }
    return true;
  }
  if (worker_ == 0) {
    logger_->info(
        "ps worker 0: distributed.ps.overlap ignored: {}; one request per server "
        "after backward",
        why);
  }
  return false;
}

void PsStrategy::finish_overlapped(uint64_t bytes_before) {
  // Server 0's reply: the first layers and the step's totals (step_totals,
  // the next batch_split); the other servers' in the next forward.
  overlap_->end_backward(dense_data_);
  overlap_->wait_server(0);
  after_pull();
  uint64_t dense = 0;
  for (const Tensor& g : zero_grads_) dense += static_cast<uint64_t>(g.numel()) * sizeof(float);
  last_comm_ = {client_->bytes_sent() - bytes_before, dense};
}

void PsStrategy::sync_params() {
  if (overlap_ == nullptr) return;
  if (const std::optional<uint64_t> version = overlap_->settle()) {
    version_ = *version;
    after_pull();
  }
}

PsStrategy::~PsStrategy() {
  for (Table& t : tables_) t.module->set_lookup_hook({});
  if (layer_waits_) static_cast<nn::Sequential&>(*model_).set_forward_pre_hook({});
}

void PsStrategy::align_trace_clock() {
  TraceSpan span(options_.trace, "clock_sync", "setup");
  CristianEstimate estimate;
  for (int i = 0; i < 8; ++i) {
    const int64_t t0 = trace_now_us();
    const ps::ServerStats stats = client_->stats(0);
    estimate.add(t0, stats.clock_us, trace_now_us());
  }
  options_.trace->set_clock_offset(estimate.offset_us(), estimate.rtt_us());
}

void PsStrategy::pull_dense(uint64_t min_version) {
  TraceSpan span(options_.trace, "pull", "ps");
  version_ = client_->pull(dense_data_, min_version);
  after_pull();
}

void PsStrategy::after_pull() {
  job_totals_ = client_->last_totals();
  track_live_workers();
  if (options_.compression.local_sgd()) {
    anchor_.clear();
    for (const Tensor& t : dense_data_) anchor_.push_back(t.clone());
  }
}

int64_t PsStrategy::updates_at_version(uint64_t version) const {
  const auto v = static_cast<int64_t>(version);
  const CompressionSettings& c = options_.compression;
  // One version per dense update before start_step, one per round after.
  if (!c.local_sgd() || v <= c.start_step) return v;
  return c.start_step + (v - c.start_step) * c.local_steps;
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
  lookups_[table] = RowIndex::of(indices);
  const std::vector<int64_t>& unique = lookups_[table].unique;
  if (unique.empty()) return;
  const Tensor& weight = tables_[table].module->weight().data();
  const int64_t dim = weight.size(1);
  const Tensor rows = Tensor::empty({static_cast<int64_t>(unique.size()), dim});
  if (row_prefetch_.take(table, unique, weight)) return;
  TraceSpan span(options_.trace, "pull_rows", "ps");
  client_->pull_rows(table, to_keys(unique), rows);
  const float* src = rows.data();
  float* dst = weight.data();
  for (size_t i = 0; i < unique.size(); ++i) {
    std::copy_n(src + static_cast<int64_t>(i) * dim, dim, dst + unique[i] * dim);
  }
}

std::vector<PsStrategy::RowGrads> PsStrategy::row_grads(int64_t samples) {
  std::vector<RowGrads> out;
  for (size_t table = 0; table < tables_.size(); ++table) {
    Variable& weight = params_[tables_[table].param];
    if (weight.grad().defined()) {
      throw UsageError(fmt::format(
          "ps strategy: {} got a dense gradient; a table on the parameter servers takes only "
          "row-sparse gradients (use it through its lookup alone)",
          tables_[table].module->label()));
    }
    const SparseRows* grad = weight.sparse_grad();
    if (grad == nullptr || grad->indices.empty() || samples == 0) continue;
    // Summed per row as SparseRows::coalesce() would, bit for bit; through
    // the lookup's index when the gradient has exactly its rows (one lookup
    // of the table in the step), without sorting again.
    std::optional<RowIndex> fresh;
    if (!lookups_[table].same_indices(grad->indices)) fresh = RowIndex::of(grad->indices);
    const RowIndex& rows = fresh ? *fresh : lookups_[table];
    out.push_back(RowGrads{table, to_keys(rows.unique), rows.sum_rows(grad->values)});
  }
  return out;
}

StepStats PsStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  try {
    return step(inputs, targets);
  } catch (const ps::WorkerLeftOut& e) {
    row_prefetch_.clear();
    throw LeftGroup(fmt::format("worker {}: {}: exiting", worker_, e.what()));
  } catch (...) {
    row_prefetch_.clear();
    throw;
  }
}

bool PsStrategy::wants_next_inputs() const {
  return options_.prefetch_rows && !tables_.empty() && !options_.compression.active();
}

StepStats PsStrategy::step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/true);
  model_->zero_grad();
  StepStats mine;
  double compute_s = 0.0;
  const bool overlapped = overlap_ != nullptr && n > 0;
  const uint64_t bytes_before = client_->bytes_sent();
  // The last step's replies still in flight: taken by the forward's
  // per-layer waits where there are some, here otherwise.
  if (!(overlapped && layer_waits_)) sync_params();
  if (n > 0) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    model_->train();
    TraceSpan forward(options_.trace, "forward", "step");
    const Variable output = model_->forward(Variable(inputs));
    const Variable loss = loss_(output, targets);
    mine = {static_cast<double>(loss.item()) * static_cast<double>(n),
            count_correct(output.data(), targets), n};
    forward.end();
    sync_params();  // parameters forward did not use; version_ for the push
    for (size_t t = 0; t < tables_.size(); ++t) row_prefetch_.observe(t, lookups_[t], inputs);
    // Overlapped: the hooks send each server's request during backward.
    if (overlapped)
      overlap_->arm({n, lr_, version_, mine.loss_sum, mine.correct, 0.0, {}}, version_ + 1);
    try {
      TraceSpan backward(options_.trace, "backward", "step");
      loss.backward(options_.trace);  // the mean gradient over this worker's rows
      backward.end();
      check_finite_gradients(*model_);
    } catch (...) {
      if (overlapped) overlap_->disarm();
      throw;
    }
    compute_s = account_compute(std::chrono::duration<double>(Clock::now() - start).count(), n);
  }
  row_prefetch_.drop_ready();  // this step's lookups are done
  // Rows first: in sync the servers hold them for the version that the dense
  // push completes (they travel in the same request).
  const std::vector<RowGrads> rows = row_grads(n);
  std::vector<Tensor> grads;
  grads.reserve(dense_.size());
  for (size_t k = 0; k < dense_.size(); ++k) {
    Variable& p = params_[dense_[k]];
    grads.push_back(n > 0 && p.has_grad() ? p.dense_grad() : zero_grads_[k]);
  }
  const CompressionSettings& c = options_.compression;
  const bool started = c.started(updates_);
  last_step_local_ = started && c.local_sgd();
  if (overlapped) {
    finish_overlapped(bytes_before);
  } else if (last_step_local_) {
    uint64_t dense = 0;  // a round's end overwrites it with what it sent
    for (const Tensor& g : grads) dense += static_cast<uint64_t>(g.numel()) * sizeof(float);
    last_comm_ = {0, dense};
    local_sgd_step(grads, mine, compute_s,
                   (updates_ - c.start_step) % c.local_steps == c.local_steps - 1);
  } else {
    push_dense_and_pull(grads, mine, compute_s,
                        {started && c.compresses(), updates_ - c.start_step}, rows);
  }
  ++updates_;
  model_->zero_grad();
  return mine;
}

void PsStrategy::local_sgd_step(const std::vector<Tensor>& grads, const StepStats& mine,
                                double compute_s, bool round_ends) {
  for (size_t k = 0; k < grads.size(); ++k) {
    float* p = dense_data_[k].data();
    const float* g = grads[k].data();
    const int64_t n = dense_data_[k].numel();
    for (int64_t i = 0; i < n; ++i) p[i] -= lr_ * g[i];
  }
  round_ += mine;
  round_compute_s_ += compute_s;
  if (!round_ends) return;
  // The round's movement as a gradient: the servers' SGD step with lr_ then
  // moves them by the workers' (sample-weighted) mean movement.
  const float scale = lr_ > 0.0f ? 1.0f / lr_ : 0.0f;
  std::vector<Tensor> moved;
  moved.reserve(grads.size());
  for (size_t k = 0; k < grads.size(); ++k) {
    Tensor d = Tensor::empty(dense_data_[k].shape());
    const float* a = anchor_[k].data();
    const float* p = dense_data_[k].data();
    float* out = d.data();
    for (int64_t i = 0; i < d.numel(); ++i) out[i] = (a[i] - p[i]) * scale;
    moved.push_back(std::move(d));
  }
  const CompressionSettings& c = options_.compression;
  const StepStats round = round_;
  const double round_compute_s = round_compute_s_;
  round_ = {};
  round_compute_s_ = 0.0;
  push_dense_and_pull(moved, round, round_compute_s, {c.compresses(), updates_ - c.start_step});
}

void PsStrategy::push_dense_and_pull(const std::vector<Tensor>& grads, const StepStats& mine,
                                     double compute_s, ps::PushCompression compression,
                                     std::span<const RowGrads> rows) {
  const bool sync = options_.consistency == ps::Consistency::kSync;
  // async/ssp without dense parameters: the rows alone, no version to wait
  // for. In sync the (possibly empty) push also closes the version that
  // applies the held rows.
  if (grads.empty() && !sync) {
    for (const RowGrads& r : rows) client_->push_rows(r.table, r.keys, r.values, lr_, version_);
    return;
  }
  const uint64_t pushed_at = version_;
  const uint64_t bytes_before = client_->bytes_sent();
  // One request per server: the rows, the push and the pull behind it (the
  // client traces the halves).
  const ps::DensePush push{mine.samples, lr_,       pushed_at,  mine.loss_sum,
                           mine.correct, compute_s, compression};
  std::vector<ps::Client::RowPush> row_pushes;
  row_pushes.reserve(rows.size());
  for (const RowGrads& r : rows) row_pushes.push_back({r.table, r.keys, r.values});
  const std::span<const ps::Client::RowPull> prefetch =
      compression.compressed ? std::span<const ps::Client::RowPull>() : row_prefetch_.requests();
  version_ = client_->push_step(row_pushes, grads, push, dense_data_, sync ? pushed_at + 1 : 0,
                                nullptr, prefetch);
  row_prefetch_.arrived();
  after_pull();
  uint64_t dense = 0;
  for (const Tensor& g : grads) dense += static_cast<uint64_t>(g.numel()) * sizeof(float);
  last_comm_ = {client_->bytes_sent() - bytes_before, dense};
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
  if (options_.consistency == ps::Consistency::kSync && !last_step_local_) {
    return {job_totals_.loss_sum, job_totals_.correct, job_totals_.samples};
  }
  const auto n = static_cast<double>(num_workers_);
  return {local.loss_sum * n, local.correct * num_workers_, local.samples * num_workers_};
}

void PsStrategy::fetch_model() {
  sync_params();
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

std::optional<int64_t> PsStrategy::joined_at_step() const {
  if (joined_step_ == 0) return std::nullopt;
  return static_cast<int64_t>(joined_step_);
}

void PsStrategy::finish() {
  sync_params();
  if (row_prefetch_.hits() + row_prefetch_.misses() > 0) {
    logger_->info("ps worker {}: {} lookups took prefetched rows, {} pulled them again", worker_,
                  row_prefetch_.hits(), row_prefetch_.misses());
  }
  client_->finish();
}

}  // namespace dtrain::strategy
