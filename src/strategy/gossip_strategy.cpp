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

std::span<const std::byte> as_bytes(const std::vector<float>& v) {
  return std::as_bytes(std::span<const float>(v));
}

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

// A generator for step `t` of `rank`, independent of every other (rank, t).
uint64_t mix_seed(uint64_t seed, int rank, int64_t t) {
  uint64_t z = seed ^ (static_cast<uint64_t>(rank) * 0x9E3779B97F4A7C15ULL) ^
               (static_cast<uint64_t>(t) * 0xC2B2AE3D27D4EB4FULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
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
      const auto bytes = as_bytes(mine);
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

void GossipStrategy::gossip_sync(int64_t t) {
  const std::string what = fmt::format("gossip step {}", t);
  std::vector<float> mine;
  {
    const std::lock_guard lock(model_mutex_);
    mine = pack_own();
  }
  // Who this step mixes with: the topology's neighbours among the workers
  // not known dead (one-peer-exponential skips the dead to the next alive).
  const std::vector<bool> known = known_alive();
  const std::vector<int> ins = topology_.in_neighbours(rank_, t, known);
  const bool choco = compressor_ != nullptr;
  const std::vector<std::byte> message = choco ? choco_message(mine, t) : std::vector<std::byte>();
  const std::span<const std::byte> payload = choco ? std::span(message) : as_bytes(mine);
  payload_sent_ = 0;
  payload_dense_ = 0;
  for (int j : topology_.out_neighbours(rank_, t, known)) {
    const Peer p = peer(j);
    try {
      link_->post(j, kModelChannel, static_cast<uint64_t>(t), payload, what,
                  Deadline::after(options_.timeout));
      payload_sent_ += payload.size();
      payload_dense_ += flat_size_ * sizeof(float);
    } catch (const comm::PeerLostError& e) {
      drop(j, e.what(), p.generation, /*lost=*/true);
    }
  }
  // In-neighbours whose message of step t arrived, and their models.
  std::vector<bool> mixed = known;
  std::vector<std::pair<int, std::vector<float>>> models;
  for (int j : ins) {
    const Peer p = peer(j);
    mixed[static_cast<size_t>(j)] = false;
    const bool pending = p.state == PeerState::kPending;
    const Deadline deadline = Deadline::after(
        pending ? std::min(options_.rejoin_wait, options_.timeout) : options_.timeout);
    try {
      std::vector<std::byte> bytes =
          link_->receive(j, kModelChannel, static_cast<uint64_t>(t), what, deadline);
      if (choco) {
        choco_add(bytes, public_copies_[static_cast<size_t>(j)], j, t, what);
      } else {
        models.emplace_back(j, to_floats(bytes, j, what));
      }
      mixed[static_cast<size_t>(j)] = true;
    } catch (const comm::PeerLostError& e) {
      drop(j, e.what(), p.generation, /*lost=*/true);
    } catch (const TimeoutError& e) {
      // CHOCO: a missed message leaves this worker's copy of j stale for
      // good; j is dropped as if lost.
      if (!pending || choco) drop(j, e.what(), p.generation, /*lost=*/choco);
    }
  }
  gossip::MixingRow row = topology_.row(rank_, t, mixed);
  if (choco) {
    mix_choco(mine, row, t);
  } else {
    mix_models(mine, row, models, t);
  }
  {
    const std::lock_guard lock(model_mutex_);
    unpack_own(mine);
  }
  report_mixing(ins, mixed, row, t);
  last_row_ = row;
}

void GossipStrategy::mix_choco(std::vector<float>& mine, const gossip::MixingRow& row,
                               int64_t t) const {
  // x_i += gamma_c sum_j w_ij (x^_j - x^_i); the self term is 0.
  const double gamma = options_.compression->started(t) ? options_.consensus_step : 1.0;
  std::vector<double> delta(mine.size(), 0.0);
  for (const auto& [j, w] : row.neighbours) {
    const std::vector<float>& copy = public_copies_[static_cast<size_t>(j)];
    DTRAIN_CHECK(copy.size() == mine.size(),
                 "gossip worker {} step {}: no copy of worker {}'s model", rank_, t, j);
    for (size_t k = 0; k < delta.size(); ++k) {
      delta[k] += w * (static_cast<double>(copy[k]) - static_cast<double>(public_self_[k]));
    }
  }
  for (size_t k = 0; k < mine.size(); ++k) {
    mine[k] = static_cast<float>(static_cast<double>(mine[k]) + gamma * delta[k]);
  }
}

void GossipStrategy::mix_models(std::vector<float>& mine, gossip::MixingRow& row,
                                const std::vector<std::pair<int, std::vector<float>>>& models,
                                int64_t t) const {
  const auto arrived = [&](int j) {
    return std::any_of(models.begin(), models.end(), [j](const auto& m) { return m.first == j; });
  };
  if (!std::all_of(row.neighbours.begin(), row.neighbours.end(),
                   [&](const auto& n) { return arrived(n.first); })) {
    // One-peer-exponential whose one peer failed this step: the row would
    // skip to a worker that sent us nothing; keep our model this step.
    row = gossip::MixingRow{};
  }
  std::vector<double> sum(mine.size());
  for (size_t k = 0; k < mine.size(); ++k) sum[k] = row.self * static_cast<double>(mine[k]);
  for (const auto& [j, w] : row.neighbours) {
    const auto it =
        std::find_if(models.begin(), models.end(), [j = j](const auto& m) { return m.first == j; });
    DTRAIN_CHECK(it != models.end(),
                 "gossip row of worker {} step {} names worker {} whose model did not arrive",
                 rank_, t, j);
    const std::vector<float>& x = it->second;
    for (size_t k = 0; k < sum.size(); ++k) sum[k] += w * static_cast<double>(x[k]);
  }
  for (size_t k = 0; k < mine.size(); ++k) mine[k] = static_cast<float>(sum[k]);
}

void GossipStrategy::report_mixing(const std::vector<int>& ins, const std::vector<bool>& mixed,
                                   const gossip::MixingRow& row, int64_t t) {
  // Report the changes: a drop (logged by drop()) with the new row, a return.
  std::vector<int> dropped;
  {
    const std::lock_guard lock(peers_mutex_);
    for (int j : ins) {
      Peer& p = peers_[static_cast<size_t>(j)];
      if (mixed[static_cast<size_t>(j)]) {
        if (p.state != PeerState::kActive || !p.mixing) {
          logger_.info("gossip worker {}: worker {} is mixed in again from step {}", rank_, j, t);
        }
        p.state = PeerState::kActive;
        p.mixing = true;
      } else if (p.mixing) {
        p.mixing = false;
        dropped.push_back(j);
      }
    }
  }
  for (int j : dropped) {
    logger_.warn(
        "gossip worker {}: worker {} dropped from the mixing at step {} ({}); weights "
        "renormalised: {}",
        rank_, j, t, drop_reason(j), describe_row(row));
  }
}

void GossipStrategy::gossip_async(int64_t t) {
  // The partner: one in-neighbour of step t not known dead.
  int partner = -1;
  uint64_t generation = 0;
  const std::vector<bool> known = known_alive();
  if (topology_.kind() == gossip::TopologyKind::kOnePeerExponential) {
    const std::vector<int> out = topology_.out_neighbours(rank_, t, known);
    if (!out.empty()) partner = out.front(), generation = peer(partner).generation;
  } else {
    const std::vector<int> candidates = topology_.in_neighbours(rank_, t, known);
    if (!candidates.empty()) {
      Rng rng(mix_seed(options_.seed, rank_, t));
      partner = candidates[rng.below(candidates.size())];
      generation = peer(partner).generation;
    }
  }
  if (partner < 0) return;  // every neighbour is gone: train alone
  const std::string what = fmt::format("gossip average with worker {} at step {}", partner, t);
  std::vector<float> sent;
  {
    const std::lock_guard lock(model_mutex_);
    sent = pack_own();
  }
  std::vector<std::byte> reply;
  try {
    reply = link_->call(partner, kAverage, as_bytes(sent), what, Deadline::after(options_.timeout));
  } catch (const comm::PeerLostError& e) {
    drop(partner, e.what(), generation, /*lost=*/true);
    return;
  } catch (const TimeoutError& e) {
    drop(partner, e.what(), generation, /*lost=*/true);
    return;
  } catch (const CommError& e) {
    // Alive but refused (its handler threw, or is not set yet: a worker
    // still starting): skip this step's average, keep the partner.
    if (e.peer() == rank_) throw;  // this worker's own link failed
    logger_.warn("gossip worker {}: no average at step {}: {}", rank_, t, e.what());
    return;
  }
  const std::vector<float> averaged = to_floats(reply, partner, what);
  {
    const std::lock_guard lock(peers_mutex_);
    Peer& p = peers_[static_cast<size_t>(partner)];
    if (!p.mixing) {
      logger_.info("gossip worker {}: worker {} is averaged with again from step {}", rank_,
                   partner, t);
    }
    p.mixing = true;
  }
  // Mass is kept: let s = sent, y = the partner's model before its handler
  // ran, r = (y + s) / 2 its model after; our model is s + d by now, d being
  // what other workers' averages with us added meanwhile (each of which kept
  // the sum by this same argument). We set ours to s + d + (r - s), so this
  // exchange changes the sum by (r - s) + (r - y) = 2r - s - y = 0.
  const std::lock_guard lock(model_mutex_);
  std::vector<float> mine = pack_own();
  for (size_t k = 0; k < mine.size(); ++k) mine[k] += averaged[k] - sent[k];
  unpack_own(mine);
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

CompressionSettings GossipStrategy::choco_settings() const {
  CompressionSettings c = *options_.compression;
  c.codec.error_feedback = false;  // x^ is CHOCO's memory
  c.codec.momentum = 0.0;
  return c;
}

void GossipStrategy::reset_public_copies() {
  {
    const std::lock_guard lock(model_mutex_);
    public_self_ = pack_own();
  }
  for (auto& copy : public_copies_) copy.clear();
  for (int j : topology_.in_neighbours(rank_, 0)) {
    public_copies_[static_cast<size_t>(j)] = public_self_;
  }
}

std::vector<std::byte> GossipStrategy::choco_message(std::span<const float> mine, int64_t t) {
  const CompressionSettings& c = *options_.compression;
  const bool compressing = c.started(t);
  ByteWriter out(compressing ? 0 : flat_size_ * sizeof(float));
  std::vector<float> diff;
  size_t offset = 0;
  for (size_t i = 0; i < layouts_.size(); ++i) {
    const size_t n = layouts_[i].numel();
    diff.resize(n);
    for (size_t k = 0; k < n; ++k) diff[k] = mine[offset + k] - public_self_[offset + k];
    if (compressing && compressor_->compresses(i)) {
      ByteWriter message;
      compressor_->encode(i, diff, t - c.start_step, rank_, message);
      out.write_blob(message.take());
    } else {
      out.write_f32_array(diff);
    }
    offset += n;
  }
  std::vector<std::byte> bytes = out.take();
  choco_add(bytes, public_self_, rank_, t, fmt::format("gossip step {}: own message", t));
  return bytes;
}

void GossipStrategy::choco_add(std::span<const std::byte> message, std::vector<float>& copy,
                               int from, int64_t t, const std::string& what) const {
  const std::string context = fmt::format("{}: CHOCO message of worker {}", what, from);
  ByteReader in(message, context);
  // Which form each tensor came in is the sender's (start_step, compresses()):
  // a compressed tensor's blob is smaller than its dense floats, so the
  // receiver reads the form this worker would have used.
  const bool compressing = options_.compression->started(t);
  size_t offset = 0;
  for (size_t i = 0; i < layouts_.size(); ++i) {
    const size_t n = layouts_[i].numel();
    const std::span<float> out = std::span<float>(copy).subspan(offset, n);
    if (compressing && compressor_->compresses(i)) {
      const std::span<const std::byte> blob = in.read_blob("tensor message", message.size());
      compress::decode_add(blob, layouts_[i], 1.0f, out, context);
    } else {
      const std::vector<float> dense = in.read_f32_array(n, "dense tensor");
      for (size_t k = 0; k < n; ++k) out[k] += dense[k];
    }
    offset += n;
  }
  in.expect_end(context);
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
