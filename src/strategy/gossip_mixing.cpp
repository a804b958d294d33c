// GossipStrategy's mixing rounds: the synchronous round (a matching, each
// pair averages, with or without CHOCO compression), the asynchronous
// push-pull round, and the CHOCO public copies and messages. The contracts
// are in gossip_strategy.h; the rest of the class is in gossip_strategy.cpp.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"
#include "strategy/gossip_strategy.h"

namespace dtrain::strategy {

namespace {

std::span<const std::byte> as_bytes(const std::vector<float>& v) {
  return std::as_bytes(std::span<const float>(v));
}

// A generator for step `t` of `rank`, independent of every other (rank, t).
uint64_t mix_seed(uint64_t seed, int rank, int64_t t) {
  uint64_t z = seed ^ (static_cast<uint64_t>(rank) * 0x9E3779B97F4A7C15ULL) ^
               (static_cast<uint64_t>(t) * 0xC2B2AE3D27D4EB4FULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

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

}  // namespace dtrain::strategy
