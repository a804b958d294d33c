#include "strategy/gossip_strategy.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <thread>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"

namespace dtrain::strategy {

namespace {

using Clock = std::chrono::steady_clock;

// The parameters' tensors then the buffers', in state_dict order.
std::vector<Tensor> flat_tensors(const nn::Module& model) {
  std::vector<Tensor> tensors;
  for (const auto& [name, p] : model.named_parameters()) tensors.push_back(p.data());
  for (const auto& [name, b] : model.named_buffers()) tensors.push_back(b);
  return tensors;
}

void copy_model(const nn::Module& from, const nn::Module& to) {
  const std::vector<Tensor> src = flat_tensors(from);
  const std::vector<Tensor> dst = flat_tensors(to);
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_from(src[i]);
}

// Where a checkpoint's optimizer state keeps the workers' step count.
constexpr const char* kStepsKey = "gossip.steps";

// The step a kFetchModel reply or request carries before the parameters.
constexpr size_t kStepBytes = sizeof(uint64_t);

// A tensor as the compressor sees it: its first dimension by the rest.
compress::TensorLayout layout_of(const Tensor& t) {
  const Shape& shape = t.shape();
  const auto numel = static_cast<size_t>(t.numel());
  const size_t rows = shape.size() >= 2 && shape[0] > 0 ? static_cast<size_t>(shape[0]) : 1;
  return {rows, numel / rows};
}

}  // namespace

double default_consensus_step(const compress::Options& codec) {
  switch (codec.method) {
    case compress::Method::kFp16:
    case compress::Method::kBf16:
      return 1.0;
    case compress::Method::kTopK:
    case compress::Method::kRandomK:
      return std::min(0.5, 5.0 * codec.density);
    default:
      return 0.5;
  }
}

GossipMode parse_gossip_mode(std::string_view name) {
  if (name == "sync") return GossipMode::kSync;
  if (name == "async") return GossipMode::kAsync;
  throw UsageError(fmt::format("gossip mode '{}' is not one of: sync, async", name));
}

GossipStrategy::GossipStrategy(std::unique_ptr<comm::PeerLink> link, const ModelFactory& make_model,
                               const OptimizerFactory& make_optimizer, const GossipOptions& options,
                               LossFn loss, Logger& logger)
    : options_(options),
      logger_(logger),
      rank_(link->rank()),
      world_(link->size()),
      topology_(options.topology, link->size()),
      loss_(std::move(loss)),
      make_model_(make_model),
      own_(make_model()),
      optimizer_(make_optimizer(own_->parameters())),
      own_tensors_(flat_tensors(*own_)),
      average_(make_model()),
      peers_(static_cast<size_t>(link->size())),
      link_(std::move(link)) {
  for (const Tensor& t : own_tensors_) flat_size_ += static_cast<size_t>(t.numel());
  copy_model(*own_, *average_);
  if (options_.compression) {
    if (options_.mode != GossipMode::kSync) {
      throw UsageError("gossip: compression (CHOCO-SGD) needs sync mode");
    }
    if (topology_.kind() == gossip::TopologyKind::kOnePeerExponential) {
      throw UsageError(
          "gossip: compression (CHOCO-SGD) needs a fixed topology, not one-peer-exponential");
    }
    if (options_.replacement) {
      throw UsageError(
          "gossip: compression (CHOCO-SGD) cannot take a replacement worker: its neighbours' "
          "copies of its model would not match its own");
    }
    if (!(options_.consensus_step > 0.0 && options_.consensus_step <= 1.0)) {
      throw UsageError(
          fmt::format("gossip: consensus_step must be in (0, 1], got {}", options_.consensus_step));
    }
    for (const Tensor& t : own_tensors_) layouts_.push_back(layout_of(t));
    compressor_ = compress::make_compressor(choco_settings().codec, layouts_);
    public_copies_.resize(static_cast<size_t>(world_));
    reset_public_copies();
  }
  if (options_.replacement) {
    // Until their message of our step arrives, we do not wait on them.
    for (Peer& p : peers_) {
      p.state = PeerState::kPending;
      p.mixing = false;
    }
  }
  link_->set_handler(
      [this, gate = gate_](int from, uint32_t service, std::span<const std::byte> request) {
        if (!gate->enter()) {
          throw CommError(rank_, "gossip service", fmt::format("worker {} has finished", rank_));
        }
        struct Exit {
          Gate& gate;
          ~Exit() { gate.exit(); }
        } exit{*gate};
        return serve(from, service, request);
      });
  link_->set_listener(
      [this, gate = gate_](int peer, comm::PeerEvent event, const std::string& reason) {
        if (!gate->enter()) return;
        struct Exit {
          Gate& gate;
          ~Exit() { gate.exit(); }
        } exit{*gate};
        hear(peer, event, reason);
      });
  if (rank_ == 0) {
    logger_.info("gossip ({}): {}",
                 options_.mode == GossipMode::kAsync ? "async AD-PSGD"
                 : compressor_ != nullptr
                     ? fmt::format("sync CHOCO-SGD, {}, consensus step {:g}",
                                   choco_settings().describe(), options_.consensus_step)
                     : std::string("sync D-PSGD"),
                 topology_.describe());
  }
  if (options_.replacement) join_running_job();
}

GossipStrategy::~GossipStrategy() {
  // The handler reads own_: stop it before the members go.
  link_->leave();
  gate_->close();
  link_.reset();
}

bool GossipStrategy::Gate::enter() {
  const std::lock_guard lock(mutex);
  if (closed) return false;
  ++running;
  return true;
}

void GossipStrategy::Gate::exit() {
  const std::lock_guard lock(mutex);
  --running;
  idle.notify_all();
}

void GossipStrategy::Gate::close() {
  std::unique_lock lock(mutex);
  closed = true;
  idle.wait(lock, [&] { return running == 0; });
}

std::vector<std::byte> GossipStrategy::serve(int from, uint32_t service,
                                             std::span<const std::byte> request) {
  switch (service) {
    case kAverage: {
      const std::vector<float> theirs =
          to_floats({request.begin(), request.end()}, from, "gossip average request");
      std::vector<float> mine;
      {
        const std::lock_guard lock(model_mutex_);
        mine = pack_own();
        for (size_t k = 0; k < mine.size(); ++k) mine[k] = (mine[k] + theirs[k]) * 0.5f;
        unpack_own(mine);
      }
      const auto bytes = std::as_bytes(std::span<const float>(mine));
      return {bytes.begin(), bytes.end()};
    }
    case kFetchModel: {
      std::vector<std::byte> reply(kStepBytes + flat_size_ * sizeof(float));
      const std::lock_guard lock(model_mutex_);
      const auto step = static_cast<uint64_t>(steps_);
      std::memcpy(reply.data(), &step, kStepBytes);
      size_t offset = kStepBytes;
      for (const Tensor& t : own_tensors_) {
        const size_t n = static_cast<size_t>(t.numel()) * sizeof(float);
        if (n > 0) std::memcpy(reply.data() + offset, t.data(), n);
        offset += n;
      }
      return reply;
    }
    case kDone: {
      const std::lock_guard lock(peers_mutex_);
      done_ = true;
      done_cv_.notify_all();
      return {};
    }
    default:
      throw DataError(fmt::format("gossip worker {}: unknown service {} called by worker {}", rank_,
                                  service, from));
  }
}

void GossipStrategy::hear(int peer, comm::PeerEvent event, const std::string& reason) {
  const std::lock_guard lock(peers_mutex_);
  Peer& p = peers_[static_cast<size_t>(peer)];
  if (event == comm::PeerEvent::kJoined) {
    // A new incarnation: whatever we knew of the old one no longer holds.
    ++p.generation;
    p.state = PeerState::kPending;
    logger_.info(
        "gossip worker {}: worker {} joined again; it is mixed in from the first step "
        "its model arrives",
        rank_, peer);
  } else if (peer != 0) {
    left_cv_.notify_all();
  } else {
    // The chief is gone: nobody will say kDone.
    done_ = true;
    done_cv_.notify_all();
  }
  (void)reason;
}

void GossipStrategy::join_running_job() {
  // The neighbours first (their step is ours), then anyone.
  std::vector<int> order = topology_.in_neighbours(rank_, 0);
  for (int p : topology_.out_neighbours(rank_, 0)) order.push_back(p);
  for (int p = 0; p < world_; ++p) order.push_back(p);
  std::string failures;
  for (int p : order) {
    if (p == rank_ || !link_->alive(p)) continue;
    const std::string what =
        fmt::format("gossip worker {} joining: fetch worker {}'s model", rank_, p);
    std::vector<std::byte> reply;
    try {
      const uint64_t none = 0;
      reply = link_->call(p, kFetchModel, std::as_bytes(std::span(&none, 1)), what,
                          Deadline::after(options_.timeout));
    } catch (const CommError& e) {
      failures += fmt::format("; worker {}: {}", p, e.what());
      continue;
    }
    if (reply.size() < kStepBytes) {
      throw DataError(fmt::format("{}: reply of {} bytes, expected at least {}", what, reply.size(),
                                  kStepBytes));
    }
    uint64_t step = 0;
    std::memcpy(&step, reply.data(), kStepBytes);
    const std::vector<float> flat = to_floats({reply.begin() + kStepBytes, reply.end()}, p, what);
    {
      const std::lock_guard lock(model_mutex_);
      unpack_own(flat);
      steps_ = static_cast<int64_t>(step);
    }
    copy_model(*own_, *average_);
    joined_step_ = static_cast<int64_t>(step);
    logger_.warn("gossip: worker {} joined at step {} with worker {}'s model", rank_, step, p);
    return;
  }
  throw CommError(-1, fmt::format("gossip worker {} joining", rank_),
                  fmt::format("no worker gave its model{}", failures));
}

StepStats GossipStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  const StepStats mine = local_step(inputs, targets);
  const int64_t t = steps_;
  const uint64_t sent_before = link_->bytes_sent();
  if (world_ > 1) {
    if (options_.mode == GossipMode::kSync) {
      gossip_sync(t);
    } else {
      gossip_async(t);
    }
  }
  {
    const std::lock_guard lock(model_mutex_);
    ++steps_;
  }
  const uint64_t sent = link_->bytes_sent() - sent_before;
  // Without CHOCO the payload is the dense model: both counts agree.
  last_comm_ = {sent, compressor_ == nullptr ? sent : sent - payload_sent_ + payload_dense_};
  if (rank_ == 0 && options_.consensus_every > 0 && steps_ % options_.consensus_every == 0) {
    gather(/*wait_for_step=*/options_.mode == GossipMode::kSync);
  }
  return mine;
}

StepStats GossipStrategy::local_step(const Tensor& inputs, std::span<const int64_t> targets) {
  const auto n = static_cast<int64_t>(targets.size());
  check_batch(inputs, targets, /*allow_empty=*/true);
  if (n == 0) return {};  // no rows, no gradient: this worker only gossips
  StepStats stats;
  const auto start = Clock::now();
  {
    const std::lock_guard lock(model_mutex_);
    own_->train();
    optimizer_->zero_grad();
    const Variable output = own_->forward(Variable(inputs));
    const Variable loss = loss_(output, targets);
    stats = {static_cast<double>(loss.item()) * static_cast<double>(n),
             count_correct(output.data(), targets), n};
    loss.backward();
    check_finite_gradients(*own_);
  }
  // An emulated slow node sleeps here, without the lock: the handler may
  // average meanwhile (AD-PSGD allows it: the gradient is then slightly
  // stale, as when a neighbour averages during a real slow step).
  account_compute(std::chrono::duration<double>(Clock::now() - start).count(), n);
  const std::lock_guard lock(model_mutex_);
  optimizer_->step();
  return stats;
}

void GossipStrategy::fetch_model() { gather(/*wait_for_step=*/options_.mode == GossipMode::kSync); }

void GossipStrategy::gather(bool wait_for_step) {
  std::vector<std::vector<float>> models;
  {
    const std::lock_guard lock(model_mutex_);
    models.push_back(pack_own());
  }
  const auto wanted = static_cast<uint64_t>(steps_);
  for (int p = 0; p < world_; ++p) {
    if (p == rank_ || peer(p).state == PeerState::kDead || !link_->alive(p)) continue;
    const std::string what = fmt::format("gossip chief: fetch worker {}'s model", p);
    const Deadline deadline = Deadline::after(options_.timeout);
    auto pause = std::chrono::milliseconds(1);
    try {
      while (true) {
        const std::vector<std::byte> reply =
            link_->call(p, kFetchModel, std::as_bytes(std::span(&wanted, 1)), what, deadline);
        if (reply.size() < kStepBytes) {
          throw DataError(fmt::format("{}: reply of {} bytes, expected at least {}", what,
                                      reply.size(), kStepBytes));
        }
        uint64_t step = 0;
        std::memcpy(&step, reply.data(), kStepBytes);
        if (!wait_for_step || step >= wanted) {
          models.push_back(to_floats({reply.begin() + kStepBytes, reply.end()}, p, what));
          break;
        }
        // Behind by a step or two (sync mode): it will get there, since
        // its neighbours' messages of those steps are posted.
        if (deadline.remaining() <= pause) {
          throw TimeoutError(
              p, what, options_.timeout,
              fmt::format("worker {} to finish step {} (it is at {})", p, wanted, step));
        }
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::milliseconds(20));
      }
    } catch (const CommError& e) {
      logger_.warn("gossip chief: worker {}'s model left out of the average: {}", p, e.what());
    }
  }
  const size_t count = models.size();
  std::vector<double> mean(flat_size_, 0.0);
  for (const auto& x : models) {
    for (size_t k = 0; k < flat_size_; ++k) mean[k] += x[k];
  }
  for (double& v : mean) v /= static_cast<double>(count);
  double distance = 0.0;
  for (const auto& x : models) {
    for (size_t k = 0; k < flat_size_; ++k) {
      const double d = x[k] - mean[k];
      distance += d * d;
    }
  }
  distance /= static_cast<double>(count);
  size_t offset = 0;
  for (const Tensor& t : flat_tensors(*average_)) {
    float* dst = t.data();
    for (int64_t k = 0; k < t.numel(); ++k) dst[k] = static_cast<float>(mean[offset++]);
  }
  consensus_ = distance;
  consensus_workers_ = static_cast<int>(count);
  consensus_reported_ = false;
}

StepStats GossipStrategy::step_totals(const StepStats& local) const {
  StepStats totals = local;
  totals.loss_sum *= static_cast<double>(world_);
  totals.correct *= world_;
  totals.samples *= world_;
  return totals;
}

StateDict GossipStrategy::optimizer_state() {
  StateDict state = optimizer_->state_dict();
  state.metadata()[kStepsKey] = std::to_string(steps_);
  return state;
}

void GossipStrategy::load_optimizer_state(const StateDict& state) {
  optimizer_->load_state_dict(state);
  const auto it = state.metadata().find(kStepsKey);
  if (it == state.metadata().end()) return;  // another strategy's checkpoint
  int64_t steps = 0;
  const auto [end, ec] =
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), steps);
  if (ec != std::errc() || end != it->second.data() + it->second.size() || steps < 0) {
    throw UsageError(
        fmt::format("gossip: optimizer state metadata '{}' is '{}', expected a step count",
                    kStepsKey, it->second));
  }
  const std::lock_guard lock(model_mutex_);
  steps_ = steps;
}

void GossipStrategy::sync_replicas() {
  {
    const std::lock_guard lock(model_mutex_);
    copy_model(*average_, *own_);
  }
  if (compressor_ != nullptr) reset_public_copies();
}

std::vector<std::pair<std::string, double>> GossipStrategy::report_metrics() {
  if (consensus_reported_ || !consensus_) return {};
  consensus_reported_ = true;
  return {{"consensus_distance", *consensus_},
          {"gossip_workers", static_cast<double>(consensus_workers_)}};
}

std::vector<std::pair<std::string, nn::Module*>> GossipStrategy::extra_eval_models() {
  // A copy: in async mode a neighbour's average may change own_ while the
  // trainer evaluates.
  if (own_copy_ == nullptr) own_copy_ = make_model_();
  {
    const std::lock_guard lock(model_mutex_);
    copy_model(*own_, *own_copy_);
  }
  return {{fmt::format("worker{}", rank_), own_copy_.get()}};
}

void GossipStrategy::finish() {
  if (rank_ == 0) {
    std::vector<int> told;
    for (int p = 1; p < world_; ++p) {
      if (peer(p).state == PeerState::kDead || !link_->alive(p)) continue;
      try {
        link_->call(p, kDone, {}, fmt::format("gossip chief: tell worker {} it is done", p),
                    Deadline::after(options_.timeout));
        told.push_back(p);
      } catch (const comm::PeerLostError&) {
        // It left (or died) before its reply came back: its handler ran (a
        // worker leaves only after kDone, the chief's end, or its timeout),
        // or it is gone; either way there is no one left to tell.
      } catch (const CommError& e) {
        logger_.warn("gossip chief: worker {} did not hear it is done: {}", p, e.what());
      }
    }
    // The chief leaves last: the launcher ends the job when the chief's
    // process ends, and tells whoever still runs that it was left behind.
    // (link_->alive() is never called under peers_mutex_: the link may hold
    // its own lock while it runs the listener, which takes peers_mutex_.)
    const Deadline deadline = Deadline::after(options_.timeout);
    for (int p : told) {
      while (link_->alive(p) && !deadline.expired()) {
        std::unique_lock lock(peers_mutex_);
        left_cv_.wait_for(lock, std::chrono::milliseconds(20));
      }
    }
    // A worker's process ends a little after its goodbye (its link lingers,
    // at most about a second, delivering its last frames to us): give it
    // that, so the launcher does not take it for one left behind.
    if (!told.empty() && options_.exit_grace.count() > 0) {
      std::this_thread::sleep_for(std::min(options_.exit_grace, deadline.remaining()));
    }
  } else {
    std::unique_lock lock(peers_mutex_);
    if (!done_cv_.wait_for(lock, options_.timeout, [&] { return done_; })) {
      logger_.warn(
          "gossip worker {}: the chief did not say it has the final model within {} ms; "
          "leaving",
          rank_, options_.timeout.count());
    }
  }
  link_->leave();
}

std::vector<float> GossipStrategy::own_parameters() const {
  const std::lock_guard lock(model_mutex_);
  return pack_own();
}

std::vector<float> GossipStrategy::pack_own() const {
  std::vector<float> flat;
  flat.reserve(flat_size_);
  for (const Tensor& t : own_tensors_) flat.insert(flat.end(), t.data(), t.data() + t.numel());
  return flat;
}

void GossipStrategy::unpack_own(std::span<const float> flat) {
  size_t offset = 0;
  for (const Tensor& t : own_tensors_) {
    const auto n = static_cast<size_t>(t.numel());
    if (n > 0) std::memcpy(t.data(), flat.data() + offset, n * sizeof(float));
    offset += n;
  }
}

std::vector<float> GossipStrategy::to_floats(const std::vector<std::byte>& bytes, int peer,
                                             const std::string& what) const {
  if (bytes.size() != flat_size_ * sizeof(float)) {
    throw DataError(
        fmt::format("{}: worker {} sent {} bytes of parameters, expected {} ({} floats)", what,
                    peer, bytes.size(), flat_size_ * sizeof(float), flat_size_));
  }
  std::vector<float> flat(flat_size_);
  if (!bytes.empty()) std::memcpy(flat.data(), bytes.data(), bytes.size());
  return flat;
}

std::vector<bool> GossipStrategy::known_alive() const {
  const std::lock_guard lock(peers_mutex_);
  std::vector<bool> alive(peers_.size());
  for (size_t p = 0; p < peers_.size(); ++p) alive[p] = peers_[p].state != PeerState::kDead;
  alive[static_cast<size_t>(rank_)] = true;
  return alive;
}

GossipStrategy::Peer GossipStrategy::peer(int p) const {
  const std::lock_guard lock(peers_mutex_);
  return peers_[static_cast<size_t>(p)];
}

void GossipStrategy::drop(int p, const std::string& reason, uint64_t generation, bool lost) {
  const std::lock_guard lock(peers_mutex_);
  Peer& peer = peers_[static_cast<size_t>(p)];
  // A replacement joined meanwhile: its predecessor's failure is not its own.
  if (peer.generation != generation) return;
  peer.state = lost ? PeerState::kDead : PeerState::kPending;
  peer.reason = reason;
  if (options_.mode == GossipMode::kAsync && peer.mixing) {
    peer.mixing = false;
    logger_.warn(
        "gossip worker {}: worker {} dropped from the averaging ({}); partners are now "
        "picked among the others",
        rank_, p, reason);
  }
}

std::string GossipStrategy::drop_reason(int p) const {
  const std::lock_guard lock(peers_mutex_);
  return peers_[static_cast<size_t>(p)].reason;
}

std::string GossipStrategy::describe_row(const gossip::MixingRow& row) const {
  std::string s = fmt::format("self {:.4g}", row.self);
  for (const auto& [j, w] : row.neighbours) s += fmt::format(", worker {} {:.4g}", j, w);
  return s;
}

}  // namespace dtrain::strategy
