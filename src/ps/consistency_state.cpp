#include "ps/consistency_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>

namespace dtrain::ps {

namespace {

int64_t ms_between(ConsistencyState::Clock::time_point from,
                   ConsistencyState::Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

}  // namespace

ConsistencyState::ConsistencyState(const ServerOptions& options, Logger& logger,
                                   Clock::time_point start)
    : options_(options), logger_(logger) {
  workers_.resize(static_cast<size_t>(options_.num_workers));
  for (Worker& w : workers_) w.last_heard = start;
  held_.resize(static_cast<size_t>(options_.num_workers));
}

void ConsistencyState::heard(uint32_t worker, Clock::time_point now) {
  workers_[worker].last_heard = now;
  workers_[worker].heard = true;
}

void ConsistencyState::join(uint32_t worker) {
  Worker& w = workers_[worker];
  if (w.state != WorkerState::kLive) {
    logger_.info("ps server {}: worker {} rejoined at version {} (it was {})", options_.server,
                 worker, version_, to_string(w.state));
    // SSP: rejoin at the slowest live worker's clock, so it neither blocks the
    // others nor is held back by its own missed steps.
    if (live_workers() > 0) w.clock = std::max(w.clock, min_live_clock());
    w.state = WorkerState::kLive;
  }
  // A restarted worker may say hello before its predecessor was declared dead,
  // and after that predecessor's push for the current version went in.
  if (w.pushed_version == version_) {
    w.rejoined_at = version_;
  } else {
    w.rejoined_at.reset();
  }
}

void ConsistencyState::finish(uint32_t worker) {
  workers_[worker].state = WorkerState::kFinished;
  logger_.info("ps server {}: worker {} finished at version {}", options_.server, worker, version_);
}

void ConsistencyState::check_liveness(Clock::time_point now) {
  for (size_t i = 0; i < workers_.size(); ++i) {
    Worker& w = workers_[i];
    if (w.state != WorkerState::kLive) continue;
    const int64_t silent = ms_between(w.last_heard, now);
    const int64_t limit =
        w.heard ? options_.heartbeat_timeout.count() : options_.rejoin_window().count();
    if (silent > limit) {
      w.state = WorkerState::kDead;
      logger_.warn(
          "ps server {}: worker {} declared dead at version {}: silent for {} ms ({} {} ms)",
          options_.server, i, version_, silent,
          w.heard ? "heartbeat timeout" : "never heard from; join timeout", limit);
    }
  }
}

Admission ConsistencyState::admit_push(uint32_t worker, Message& m) {
  Worker& w = workers_[worker];
  if (options_.consistency != Consistency::kSync) {
    ++version_;
    ++w.clock;
    ++pushes_applied_;
    return Admission::kApplyNow;
  }
  const bool already_in = w.pushed_version == version_;
  if (m.version == version_ && already_in && w.rejoined_at == version_) {
    // Its previous incarnation pushed for this version before dying; that
    // gradient stands, the new one is dropped like a backup worker's.
    w.rejoined_at.reset();
    ++pushes_dropped_;
    logger_.info(
        "ps server {}: dropped the push of rejoined worker {} for version {}: its "
        "previous incarnation already pushed",
        options_.server, worker, m.version);
    return Admission::kDropped;
  }
  if (m.version == version_) {
    if (already_in) {
      throw Refusal(fmt::format("duplicate push from worker {} for version {}", worker, m.version));
    }
    Contribution& c = held_[worker];
    c.pushed = true;
    c.samples = m.samples;
    c.lr = m.lr;
    c.loss_sum = m.loss_sum;
    c.correct = m.correct;
    c.compute_s = m.compute_s;
    c.grad = std::move(m.floats);
    c.grad_bytes = m.float_bytes;
    c.grad_owner = m.payload_owner;
    ++pushes_in_version_;
    ++pushes_applied_;
    w.pushed_version = version_;
    ++w.clock;
    return Admission::kHeld;
  }
  if (m.version + 1 == version_ && w.pushed_version != m.version) {
    w.pushed_version = m.version;
    ++w.clock;
    ++pushes_dropped_;
    logger_.info("ps server {}: dropped the late push of worker {} for version {} (now {})",
                 options_.server, worker, m.version, version_);
    return Admission::kDropped;
  }
  if (m.version + 1 == version_) {
    throw Refusal(fmt::format("duplicate push from worker {} for version {}", worker, m.version));
  }
  throw Refusal(fmt::format("{} push for version {}: server {} is at version {}",
                            m.version < version_ ? "stale" : "future", m.version, options_.server,
                            version_));
}

Admission ConsistencyState::admit_rows(uint32_t worker, Message& m) {
  if (options_.consistency != Consistency::kSync) return Admission::kApplyNow;
  const Worker& w = workers_[worker];
  const bool late = m.version + 1 == version_ && w.pushed_version != m.version;
  const bool superseded = m.version == version_ && w.rejoined_at == version_;
  if (late || superseded) {
    // The version closed without this worker (backup workers), or its
    // previous incarnation's rows already stand: nothing is held.
    logger_.info("ps server {}: dropped the row push of worker {} for version {} (now {}{})",
                 options_.server, worker, m.version, version_,
                 late ? "" : "; its previous incarnation already pushed");
    return Admission::kDropped;
  }
  if (m.version != version_) {
    throw Refusal(fmt::format("{} row push for version {}: server {} is at version {}",
                              m.version < version_ ? "stale" : "future", m.version, options_.server,
                              version_));
  }
  if (held_[worker].pushed) {
    throw Refusal(
        fmt::format("row push from worker {} for version {} after its dense push; rows go first",
                    worker, m.version));
  }
  held_[worker].rows.push_back(HeldRows{m.table, std::move(m.keys), std::move(m.floats)});
  return Admission::kHeld;
}

std::optional<VersionUpdate> ConsistencyState::close_version() {
  if (options_.consistency != Consistency::kSync) return std::nullopt;
  const size_t live = live_workers();
  const size_t backup = static_cast<size_t>(options_.backup_workers);
  const size_t needed = live > backup + 1 ? live - backup : 1;
  if (pushes_in_version_ == 0 || pushes_in_version_ < needed) return std::nullopt;
  // Sum in worker-index order: the same pushes give the same bits whatever
  // order they arrived in.
  VersionUpdate update;
  double samples_sum = 0.0;
  StepTotals totals;
  totals.workers.resize(held_.size());
  for (size_t w = 0; w < held_.size(); ++w) {
    const Contribution& c = held_[w];
    if (!c.pushed) continue;
    totals.workers[w] = {c.samples, c.compute_s, true};
    if (update.grad.empty()) {
      update.lr = c.lr;
      update.grad.assign(c.grad_bytes.empty() ? c.grad.size() : c.grad_bytes.size() / sizeof(float),
                         0.0f);
    }
    add_scaled(update.grad, static_cast<float>(c.samples), c);
    samples_sum += static_cast<double>(c.samples);
    totals.loss_sum += c.loss_sum;
    totals.correct += c.correct;
    totals.samples += c.samples;
  }
  if (samples_sum > 0.0) {
    update.apply = true;
    const auto scale = static_cast<float>(1.0 / samples_sum);
    for (float& g : update.grad) g *= scale;
    sum_rows(update, scale);
  }
  last_totals_ = totals;
  clear_version();
  ++version_;
  return update;
}

void ConsistencyState::add_scaled(std::span<float> sum, float n, const Contribution& c) {
  if (c.grad_bytes.empty()) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += n * c.grad[i];
    return;
  }
  // Straight from the received payload, a chunk at a time through L1 (the
  // bytes may sit at any alignment).
  constexpr size_t kChunk = 1024;
  std::array<float, kChunk> g{};
  for (size_t at = 0; at < sum.size(); at += kChunk) {
    const size_t len = std::min(kChunk, sum.size() - at);
    std::memcpy(g.data(), c.grad_bytes.data() + at * sizeof(float), len * sizeof(float));
    float* s = sum.data() + at;
    for (size_t i = 0; i < len; ++i) s[i] += n * g[i];
  }
}

void ConsistencyState::sum_rows(VersionUpdate& update, float scale) const {
  // Per table, per key (ascending: the order of the pushes does not matter).
  std::map<uint32_t, std::map<uint64_t, std::vector<float>>> sums;
  for (const Contribution& c : held_) {
    if (!c.pushed || c.samples == 0) continue;  // rows of an uncounted push are discarded
    const auto n = static_cast<float>(c.samples);
    for (const HeldRows& held : c.rows) {
      if (held.keys.empty()) continue;
      const size_t dim = held.grads.size() / held.keys.size();
      auto& table = sums[held.table];
      for (size_t k = 0; k < held.keys.size(); ++k) {
        std::vector<float>& row = table[held.keys[k]];
        row.resize(dim, 0.0f);
        const float* g = held.grads.data() + k * dim;
        for (size_t d = 0; d < dim; ++d) row[d] += n * g[d];
      }
    }
  }
  for (const auto& [table, rows] : sums) {
    VersionUpdate::Rows out;
    out.table = table;
    out.keys.reserve(rows.size());
    for (const auto& [key, row] : rows) {
      out.keys.push_back(key);
      for (float v : row) out.grads.push_back(v * scale);
    }
    update.rows.push_back(std::move(out));
  }
}

void ConsistencyState::clear_version() {
  for (Contribution& c : held_) c = Contribution{};
  pushes_in_version_ = 0;
}

void ConsistencyState::reset(uint64_t version) {
  version_ = version;
  clear_version();
  last_totals_ = StepTotals{};
  for (Worker& w : workers_) w.pushed_version.reset();
}

void ConsistencyState::follow(uint64_t version, std::string_view cause) {
  if (version <= version_) return;
  logger_.warn("ps server {}: moved from version {} to {}, the version of {}{}", options_.server,
               version_, version, cause,
               pushes_in_version_ > 0 ? fmt::format(" ({} held push(es) of version {} discarded)",
                                                    pushes_in_version_, version_)
                                      : std::string());
  reset(version);
}

bool ConsistencyState::pull_ready(uint32_t worker, uint64_t min_version) const {
  if (version_ < min_version) return false;
  if (options_.consistency != Consistency::kSsp) return true;
  const auto bound = static_cast<uint64_t>(options_.staleness_bound);
  return workers_[worker].clock <= min_live_clock() + bound;
}

size_t ConsistencyState::live_workers() const {
  return static_cast<size_t>(std::count_if(workers_.begin(), workers_.end(), [](const Worker& w) {
    return w.state == WorkerState::kLive;
  }));
}

uint64_t ConsistencyState::min_live_clock() const {
  std::optional<uint64_t> low;
  for (const Worker& w : workers_) {
    if (w.state == WorkerState::kLive) low = std::min(low.value_or(w.clock), w.clock);
  }
  return low.value_or(0);
}

bool ConsistencyState::finished() const {
  bool any_finished = false;
  for (const Worker& w : workers_) {
    if (w.state == WorkerState::kLive) return false;
    any_finished = any_finished || w.state == WorkerState::kFinished;
  }
  return any_finished;
}

void ConsistencyState::fill(ServerStats& stats) const {
  stats.version = version_;
  stats.workers.clear();
  stats.clocks.clear();
  for (const Worker& w : workers_) {
    stats.workers.push_back(w.state);
    stats.clocks.push_back(w.clock);
  }
  stats.min_clock = min_live_clock();
  stats.pushes_applied = pushes_applied_;
  stats.pushes_dropped = pushes_dropped_;
}

}  // namespace dtrain::ps
