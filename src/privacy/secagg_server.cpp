// SecAggServer: the server's side of a secure-aggregation round (secagg.h).
#include <sodium.h>

#include <algorithm>
#include <map>
#include <string>
#include <utility>

#include "core/byte_codec.h"
#include "core/error.h"
#include "privacy/secagg.h"
#include "privacy/secagg_wire.h"

namespace dtrain::privacy {

using namespace secagg_wire;

SecAggServer::SecAggServer(SecAggConfig config) : config_(config) {
  validate(config_);
  ensure_sodium();
  min_survivors_ = config_.min_survivors != 0 ? config_.min_survivors : config_.threshold;
  const uint32_t k = config_.degree != 0 ? config_.degree : recommended_degree(config_.clients);
  neighbours_ = secagg_neighbours(config_.graph, config_.clients, k, config_.graph_seed);
}

std::string SecAggServer::context(int phase, uint32_t sender) const {
  return "secagg round " + std::to_string(config_.round) + ", phase " + secagg_phase_name(phase) +
         ", message from client " + std::to_string(sender);
}

void SecAggServer::expect_phase(int phase, const char* call) const {
  if (phase_ != phase) {
    throw UsageError(std::string("secagg server: ") + call + " called in phase " +
                     secagg_phase_name(phase_));
  }
}

void SecAggServer::check_survivors(int phase, size_t answered) const {
  if (answered < min_survivors_) {
    throw CommError(
        -1, "secagg round " + std::to_string(config_.round) + ", phase " + secagg_phase_name(phase),
        std::to_string(answered) + " of " + std::to_string(config_.clients) +
            " clients answered, the round needs at least " + std::to_string(min_survivors_) +
            " (threshold " + std::to_string(config_.threshold) + "); the round is abandoned");
  }
}

void SecAggServer::receive_advertise(uint32_t sender, std::span<const std::byte> message) {
  expect_phase(0, "receive_advertise");
  const std::string ctx = context(0, sender);
  if (sender >= config_.clients) throw DataError(ctx + ": no such client");
  ByteReader reader(message, ctx);
  read_header(reader, SecAggMessageType::kAdvertiseKeys, config_.round, sender);
  ClientState state;
  state.c_public = read_key(reader, "c public key");
  state.s_public = read_key(reader, "s public key");
  reader.expect_end("advertised keys");
  if (state.c_public == state.s_public) {
    throw DataError(ctx + ": the c and s public keys are equal");
  }
  if (!clients_.emplace(sender, state).second) throw DataError(ctx + ": sent twice");
}

std::map<uint32_t, SecAggMessage> SecAggServer::finish_advertise() {
  expect_phase(0, "finish_advertise");
  check_survivors(0, clients_.size());
  std::map<uint32_t, SecAggMessage> out;
  for (const auto& [u, state] : clients_) {
    ByteWriter writer;
    write_header(writer, SecAggMessageType::kKeyDirectory, config_.round, kSecAggServerId);
    std::vector<uint32_t> listed;
    for (uint32_t v : neighbours_[u]) {
      if (clients_.count(v) != 0) listed.push_back(v);
    }
    writer.write_u32(static_cast<uint32_t>(listed.size()));
    for (uint32_t v : listed) {
      writer.write_u32(v);
      writer.write_bytes(as_bytes(clients_.at(v).c_public));
      writer.write_bytes(as_bytes(clients_.at(v).s_public));
    }
    out.emplace(u, writer.take());
  }
  phase_ = 1;
  return out;
}

void SecAggServer::receive_share_keys(uint32_t sender, std::span<const std::byte> message) {
  expect_phase(1, "receive_share_keys");
  const std::string ctx = context(1, sender);
  const auto found = clients_.find(sender);
  if (found == clients_.end()) throw DataError(ctx + ": the client did not advertise keys");
  ClientState& state = found->second;
  if (state.shared) throw DataError(ctx + ": sent twice");
  ByteReader reader(message, ctx);
  read_header(reader, SecAggMessageType::kShareKeys, config_.round, sender);
  const uint32_t count = reader.read_u32("share count");
  reader.need_elements(count, 4 + kShareCiphertextBytes, "shares");
  std::map<uint32_t, std::vector<uint8_t>> to;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t v = reader.read_u32("recipient id");
    const auto sealed = as_u8(reader.read_bytes(kShareCiphertextBytes, "encrypted shares"));
    if (!std::binary_search(neighbours_[sender].begin(), neighbours_[sender].end(), v) ||
        clients_.count(v) == 0) {
      throw DataError(ctx + ": shares for client " + std::to_string(v) +
                      ", which is not a neighbour that advertised keys");
    }
    if (!to.emplace(v, std::vector<uint8_t>(sealed.begin(), sealed.end())).second) {
      throw DataError(ctx + ": two shares for client " + std::to_string(v));
    }
  }
  reader.expect_end("share keys");
  size_t expected = 0;
  for (uint32_t v : neighbours_[sender]) expected += clients_.count(v);
  if (to.size() != expected) {
    throw DataError(ctx + ": shares for " + std::to_string(to.size()) + " neighbours, expected " +
                    std::to_string(expected) + " (every neighbour that advertised keys)");
  }
  state.ciphertexts_to = std::move(to);
  state.shared = true;
}

std::map<uint32_t, SecAggMessage> SecAggServer::finish_share_keys() {
  expect_phase(1, "finish_share_keys");
  size_t shared = 0;
  for (const auto& [u, state] : clients_) shared += state.shared ? 1 : 0;
  check_survivors(1, shared);
  std::map<uint32_t, SecAggMessage> out;
  for (const auto& [u, state] : clients_) {
    if (!state.shared) continue;
    std::vector<uint32_t> senders;
    for (uint32_t v : neighbours_[u]) {
      const auto found = clients_.find(v);
      if (found != clients_.end() && found->second.shared) senders.push_back(v);
    }
    ByteWriter writer(10 + 4 + senders.size() * (4 + kShareCiphertextBytes));
    write_header(writer, SecAggMessageType::kShareBundle, config_.round, kSecAggServerId);
    writer.write_u32(static_cast<uint32_t>(senders.size()));
    for (uint32_t v : senders) {
      writer.write_u32(v);
      writer.write_bytes(as_bytes(clients_.at(v).ciphertexts_to.at(u)));
    }
    out.emplace(u, writer.take());
  }
  // The ciphertexts are routed; the server keeps none.
  for (auto& [u, state] : clients_) state.ciphertexts_to.clear();
  phase_ = 2;
  return out;
}

void SecAggServer::receive_masked_input(uint32_t sender, std::span<const std::byte> message) {
  expect_phase(2, "receive_masked_input");
  const std::string ctx = context(2, sender);
  const auto found = clients_.find(sender);
  if (found == clients_.end() || !found->second.shared) {
    throw DataError(ctx + ": the client did not share keys");
  }
  if (masked_.count(sender) != 0) throw DataError(ctx + ": sent twice");
  ByteReader reader(message, ctx);
  read_header(reader, SecAggMessageType::kMaskedInput, config_.round, sender);
  const uint64_t length = reader.read_u64("vector length");
  if (length != config_.vector_length) {
    throw DataError(ctx + ": vector of " + std::to_string(length) + " entries, the round has " +
                    std::to_string(config_.vector_length));
  }
  reader.need_elements(length, 4, "masked vector");
  if (sum_.empty()) sum_.assign(config_.vector_length, 0);
  std::vector<uint32_t> y(length);
  for (uint32_t& word : y) word = reader.read_u32("masked vector");
  reader.expect_end("masked input");
  for (size_t i = 0; i < y.size(); ++i) sum_[i] += y[i];
  masked_.emplace(sender, true);
}

std::map<uint32_t, SecAggMessage> SecAggServer::finish_masked_input() {
  expect_phase(2, "finish_masked_input");
  check_survivors(2, masked_.size());
  if (sum_.empty()) sum_.assign(config_.vector_length, 0);
  std::map<uint32_t, SecAggMessage> out;
  for (auto& [u, state] : clients_) {
    if (masked_.count(u) == 0) continue;
    state.request_survivors = {u};
    state.request_dropped.clear();
    for (uint32_t v : neighbours_[u]) {
      const auto found = clients_.find(v);
      if (found == clients_.end() || !found->second.shared) continue;
      (masked_.count(v) != 0 ? state.request_survivors : state.request_dropped).push_back(v);
    }
    std::sort(state.request_survivors.begin(), state.request_survivors.end());
    ByteWriter writer;
    write_header(writer, SecAggMessageType::kUnmaskRequest, config_.round, kSecAggServerId);
    write_ids(writer, state.request_survivors);
    write_ids(writer, state.request_dropped);
    out.emplace(u, writer.take());
  }
  phase_ = 3;
  return out;
}

void SecAggServer::receive_unmasking(uint32_t sender, std::span<const std::byte> message) {
  expect_phase(3, "receive_unmasking");
  const std::string ctx = context(3, sender);
  const auto found = clients_.find(sender);
  if (found == clients_.end() || masked_.count(sender) == 0) {
    throw DataError(ctx + ": the client sent no masked input");
  }
  ClientState& state = found->second;
  if (state.unmasked) throw DataError(ctx + ": sent twice");
  ByteReader reader(message, ctx);
  read_header(reader, SecAggMessageType::kUnmasking, config_.round, sender);
  const uint32_t count = reader.read_u32("share count");
  const size_t expected = state.request_survivors.size() + state.request_dropped.size();
  if (count != expected) {
    throw DataError(ctx + ": " + std::to_string(count) + " shares, the request asked for " +
                    std::to_string(expected));
  }
  reader.need_elements(count, 5 + kShamirShareBytes, "shares");
  std::vector<std::pair<uint32_t, ShamirShare>> b_got;
  std::vector<std::pair<uint32_t, ShamirShare>> s_got;
  std::vector<bool> seen(config_.clients, false);
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t v = reader.read_u32("owner id");
    const uint8_t kind = reader.read_u8("share kind");
    const auto raw = as_u8(reader.read_bytes(kShamirShareBytes, "share"));
    const ShamirShare share = decode_share(
        std::span<const uint8_t, kShamirShareBytes>(raw.data(), kShamirShareBytes), ctx.c_str());
    if (share.id != sender + 1) {
      throw DataError(ctx + ": share id " + std::to_string(share.id) + ", expected " +
                      std::to_string(sender + 1));
    }
    const auto& list = kind == kRevealSelfMask ? state.request_survivors : state.request_dropped;
    if ((kind != kRevealSelfMask && kind != kRevealKey) ||
        !std::binary_search(list.begin(), list.end(), v)) {
      throw DataError(ctx + ": a share of kind " + std::to_string(kind) + " for client " +
                      std::to_string(v) + ", which the request did not ask for");
    }
    if (seen[v]) throw DataError(ctx + ": two shares for client " + std::to_string(v));
    seen[v] = true;
    (kind == kRevealSelfMask ? b_got : s_got).emplace_back(v, share);
  }
  reader.expect_end("unmasking");
  for (const auto& [v, share] : b_got) b_shares_[v].push_back(share);
  for (const auto& [v, share] : s_got) s_shares_[v].push_back(share);
  state.unmasked = true;
}

SecAggResult SecAggServer::finish() {
  expect_phase(3, "finish");
  size_t answered = 0;
  for (const auto& [u, state] : clients_) answered += state.unmasked ? 1 : 0;
  check_survivors(3, answered);
  const uint32_t t = config_.threshold;
  const std::string ctx =
      "secagg round " + std::to_string(config_.round) + ", phase " + secagg_phase_name(3);
  // Lagrange coefficients per set of share ids (one set for the full graph).
  std::map<std::vector<uint32_t>, std::vector<uint64_t>> coefficient_cache;
  auto reconstruct = [&](uint32_t owner, std::vector<ShamirShare>& shares, const char* what) {
    if (shares.size() < t) {
      throw CommError(-1, ctx,
                      std::to_string(shares.size()) + " shares of client " + std::to_string(owner) +
                          "'s " + what + " arrived, the threshold is " + std::to_string(t) +
                          "; the round is abandoned");
    }
    std::sort(shares.begin(), shares.end(),
              [](const ShamirShare& a, const ShamirShare& b) { return a.id < b.id; });
    const std::span<const ShamirShare> used(shares.data(), t);
    std::vector<uint32_t> ids(t);
    for (uint32_t j = 0; j < t; ++j) ids[j] = used[j].id;
    auto cached = coefficient_cache.find(ids);
    if (cached == coefficient_cache.end()) {
      cached = coefficient_cache.emplace(ids, lagrange_coefficients_at_zero(ids)).first;
    }
    const ShamirSecret secret = shamir_combine_with(used, cached->second);
    Key32 key;
    std::copy(secret.begin(), secret.end(), key.begin());
    return key;
  };
  // Check that every secret can be reconstructed before removing any mask.
  for (const auto& [u, present] : masked_) {
    if (b_shares_[u].size() < t) reconstruct(u, b_shares_[u], "self-mask seed");
  }
  for (const auto& [v, state] : clients_) {
    if (state.shared && masked_.count(v) == 0 && s_shares_[v].size() < t) {
      reconstruct(v, s_shares_[v], "mask key");
    }
  }
  for (const auto& [u, present] : masked_) {
    Key32 b = reconstruct(u, b_shares_[u], "self-mask seed");
    add_mask(b, config_.round, MaskPurpose::kSelfMask, -1, sum_);
  }
  for (const auto& [v, state] : clients_) {
    if (!state.shared || masked_.count(v) != 0) continue;
    Key32 s_secret = reconstruct(v, s_shares_[v], "mask key");
    // Only the secret key is shared; the public one is recomputed and must
    // match what v advertised, which catches inconsistent shares.
    if (public_key_of(s_secret) != state.s_public) {
      throw DataError(ctx + ": the shares of client " + std::to_string(v) +
                      "'s mask key do not reconstruct the key it advertised");
    }
    for (uint32_t u : neighbours_[v]) {
      if (masked_.count(u) == 0) continue;
      Key32 seed =
          agree(s_secret, state.s_public, clients_.at(u).s_public, KeyPurpose::kPairMask, ctx);
      // y_u carried +PRG(s_uv) when u < v, -PRG(s_uv) when u > v: undo it.
      add_mask(seed, config_.round, MaskPurpose::kPairMask, u < v ? -1 : +1, sum_);
    }
  }
  SecAggResult result;
  result.sum.resize(config_.vector_length);
  FixedPointCode(config_.clip, config_.clients).dequantize_sum(sum_, result.sum);
  for (const auto& [u, present] : masked_) result.included.push_back(u);
  phase_ = 4;
  return result;
}

}  // namespace dtrain::privacy
