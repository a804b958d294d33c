#include "privacy/secagg.h"

#include <sodium.h>

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"

namespace dtrain::privacy {

namespace {

constexpr size_t kSharePairBytes = 2 * kShamirShareBytes;
constexpr size_t kShareCiphertextBytes = kSharePairBytes + kAeadOverheadBytes;
constexpr uint8_t kRevealSelfMask = 1;
constexpr uint8_t kRevealKey = 2;
// More ids than any config allows is a malformed count, caught before allocation.
constexpr uint32_t kMaxIds = 1U << 24;

std::span<const uint8_t> as_u8(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
}
std::span<const std::byte> as_bytes(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()};
}

Key32 read_key(ByteReader& reader, std::string_view field) {
  Key32 key;
  const auto bytes = as_u8(reader.read_bytes(32, field));
  std::copy(bytes.begin(), bytes.end(), key.begin());
  return key;
}

void write_header(ByteWriter& writer, SecAggMessageType type, uint32_t round, uint32_t sender) {
  writer.write_u8(kSecAggVersion);
  writer.write_u8(static_cast<uint8_t>(type));
  writer.write_u32(round);
  writer.write_u32(sender);
}

void read_header(ByteReader& reader, SecAggMessageType type, uint32_t round, uint32_t sender) {
  const uint8_t version = reader.read_u8("version");
  if (version != kSecAggVersion) {
    throw DataError(reader.context() + ": version " + std::to_string(version) + ", expected " +
                    std::to_string(kSecAggVersion));
  }
  const uint8_t got_type = reader.read_u8("type");
  if (got_type != static_cast<uint8_t>(type)) {
    throw DataError(reader.context() + ": message type " + std::to_string(got_type) +
                    ", expected " + std::to_string(static_cast<int>(type)));
  }
  const uint32_t got_round = reader.read_u32("round");
  if (got_round != round) {
    throw DataError(reader.context() + ": round " + std::to_string(got_round) + ", expected " +
                    std::to_string(round));
  }
  const uint32_t got_sender = reader.read_u32("sender");
  if (got_sender != sender) {
    throw DataError(reader.context() + ": the header names sender " + std::to_string(got_sender) +
                    ", the message came from " + std::to_string(sender));
  }
}

std::vector<uint32_t> read_ids(ByteReader& reader, std::string_view field) {
  const uint32_t count = reader.read_u32(field);
  if (count > kMaxIds) {
    throw DataError(reader.context() + ": field '" + std::string(field) + "' counts " +
                    std::to_string(count) + " ids");
  }
  reader.need_elements(count, 4, field);
  std::vector<uint32_t> ids(count);
  for (uint32_t& id : ids) id = reader.read_u32(field);
  return ids;
}

void write_ids(ByteWriter& writer, std::span<const uint32_t> ids) {
  writer.write_u32(static_cast<uint32_t>(ids.size()));
  for (uint32_t id : ids) writer.write_u32(id);
}

std::array<uint8_t, kShamirShareBytes> share_bytes(const ShamirShare& share) {
  std::array<uint8_t, kShamirShareBytes> out{};
  encode_share(share, out);
  return out;
}

}  // namespace

const char* secagg_phase_name(int phase) {
  switch (phase) {
    case 0:
      return "0 (advertise keys)";
    case 1:
      return "1 (share keys)";
    case 2:
      return "2 (masked input)";
    case 3:
      return "3 (unmasking)";
    default:
      return "after the round";
  }
}

uint32_t holders_per_client(const SecAggConfig& config) {
  const uint32_t k = config.degree != 0 ? config.degree : recommended_degree(config.clients);
  if (config.graph == SecAggGraphKind::kFull || k + 1 >= config.clients) return config.clients;
  return k + 1;
}

void validate(const SecAggConfig& config) {
  if (config.clients == 0) throw UsageError("secagg: no clients");
  if (config.graph == SecAggGraphKind::kHarary && config.degree % 2 != 0) {
    throw UsageError("secagg: the SecAgg+ degree " + std::to_string(config.degree) +
                     " must be even");
  }
  const uint32_t holders = holders_per_client(config);
  if (config.threshold == 0 || config.threshold > holders) {
    throw UsageError("secagg: threshold " + std::to_string(config.threshold) + " must be in [1, " +
                     std::to_string(holders) + "] (the holders of each client's shares)");
  }
  if (config.min_survivors > config.clients) {
    throw UsageError("secagg: min_survivors " + std::to_string(config.min_survivors) +
                     " exceeds the " + std::to_string(config.clients) + " clients");
  }
  FixedPointCode(config.clip, config.clients);
}

// ---------------------------------------------------------------- client

SecAggClient::SecAggClient(SecAggConfig config, uint32_t id, const Key32& entropy)
    : config_(config), id_(id), entropy_(entropy) {
  validate(config_);
  if (id_ >= config_.clients) {
    throw UsageError("secagg: client id " + std::to_string(id_) + " is not below the " +
                     std::to_string(config_.clients) + " clients");
  }
  ensure_sodium();
  const uint32_t k = config_.degree != 0 ? config_.degree : recommended_degree(config_.clients);
  // Only this client's list is kept; the graph is a pure function of public values.
  if (holders_per_client(config_) == config_.clients) {
    for (uint32_t v = 0; v < config_.clients; ++v) {
      if (v != id_) neighbours_.push_back(v);
    }
  } else {
    neighbours_ = secagg_neighbours(config_.graph, config_.clients, k, config_.graph_seed)[id_];
  }
}

SecAggClient::~SecAggClient() {
  sodium_memzero(entropy_.data(), entropy_.size());
  sodium_memzero(c_keys_.secret_key.data(), 32);
  sodium_memzero(s_keys_.secret_key.data(), 32);
  sodium_memzero(self_mask_seed_.data(), 32);
}

std::string SecAggClient::context(int phase) const {
  return "secagg round " + std::to_string(config_.round) + ", client " + std::to_string(id_) +
         ", phase " + secagg_phase_name(phase) + ", message from the server";
}

void SecAggClient::expect_phase(int phase, const char* call) const {
  if (next_phase_ != phase) {
    throw UsageError(std::string("secagg client ") + std::to_string(id_) + ": " + call +
                     " called in phase " + secagg_phase_name(next_phase_));
  }
}

SecAggMessage SecAggClient::advertise_keys() {
  expect_phase(0, "advertise_keys");
  c_keys_ = keypair_from_seed(derive_secret(entropy_, "secagg c key"));
  s_keys_ = keypair_from_seed(derive_secret(entropy_, "secagg s key"));
  self_mask_seed_ = derive_secret(entropy_, "secagg self mask");
  ByteWriter writer(10 + 64);
  write_header(writer, SecAggMessageType::kAdvertiseKeys, config_.round, id_);
  writer.write_bytes(as_bytes(c_keys_.public_key));
  writer.write_bytes(as_bytes(s_keys_.public_key));
  next_phase_ = 1;
  return writer.take();
}

SecAggMessage SecAggClient::share_keys(std::span<const std::byte> key_directory) {
  expect_phase(1, "share_keys");
  const std::string ctx = context(0);
  ByteReader reader(key_directory, ctx);
  read_header(reader, SecAggMessageType::kKeyDirectory, config_.round, kSecAggServerId);
  const uint32_t count = reader.read_u32("key count");
  reader.need_elements(count, 4 + 64, "keys");
  // Parsed into a local map: a malformed directory leaves the client as it was.
  std::map<uint32_t, Peer> peers;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t v = reader.read_u32("client id");
    Peer peer;
    peer.c_public = read_key(reader, "c public key");
    peer.s_public = read_key(reader, "s public key");
    if (!std::binary_search(neighbours_.begin(), neighbours_.end(), v)) {
      throw DataError(ctx + ": client " + std::to_string(v) + " is not a neighbour");
    }
    if (!peers.emplace(v, peer).second) {
      throw DataError(ctx + ": client " + std::to_string(v) + " is listed twice");
    }
  }
  reader.expect_end("key directory");
  peers_ = std::move(peers);
  if (peers_.size() + 1 < config_.threshold) {
    throw CommError(-1, ctx,
                    std::to_string(peers_.size()) +
                        " neighbours advertised keys; with this "
                        "client that is below the threshold " +
                        std::to_string(config_.threshold));
  }
  std::vector<uint32_t> ids{id_ + 1};
  for (const auto& [v, peer] : peers_) ids.push_back(v + 1);
  ShamirSecret s_secret;
  std::copy(s_keys_.secret_key.begin(), s_keys_.secret_key.end(), s_secret.begin());
  ShamirSecret b_secret;
  std::copy(self_mask_seed_.begin(), self_mask_seed_.end(), b_secret.begin());
  const Key32 s_seed = derive_secret(entropy_, "secagg shamir s");
  const Key32 b_seed = derive_secret(entropy_, "secagg shamir b");
  const auto s_shares = shamir_split(s_secret, config_.threshold, ids, s_seed);
  const auto b_shares = shamir_split(b_secret, config_.threshold, ids, b_seed);
  sodium_memzero(s_secret.data(), s_secret.size());
  own_s_share_ = s_shares[0];
  own_b_share_ = b_shares[0];

  ByteWriter writer(10 + 4 + peers_.size() * (4 + kShareCiphertextBytes));
  write_header(writer, SecAggMessageType::kShareKeys, config_.round, id_);
  writer.write_u32(static_cast<uint32_t>(peers_.size()));
  std::array<uint8_t, kSharePairBytes> plain{};
  size_t i = 1;
  for (auto& [v, peer] : peers_) {
    peer.encryption_key = agree(c_keys_.secret_key, c_keys_.public_key, peer.c_public,
                                KeyPurpose::kShareEncryption, ctx);
    encode_share(s_shares[i],
                 std::span<uint8_t, kShamirShareBytes>(plain.data(), kShamirShareBytes));
    encode_share(b_shares[i], std::span<uint8_t, kShamirShareBytes>(
                                  plain.data() + kShamirShareBytes, kShamirShareBytes));
    const auto sealed = seal(peer.encryption_key, config_.round, id_, v, plain);
    writer.write_u32(v);
    writer.write_bytes(as_bytes(sealed));
    ++i;
  }
  sodium_memzero(plain.data(), plain.size());
  next_phase_ = 2;
  return writer.take();
}

SecAggMessage SecAggClient::masked_input(std::span<const std::byte> share_bundle,
                                         std::span<const float> input) {
  expect_phase(2, "masked_input");
  if (input.size() != config_.vector_length) {
    throw UsageError("secagg client " + std::to_string(id_) + ": input of " +
                     std::to_string(input.size()) + " values, the round expects " +
                     std::to_string(config_.vector_length));
  }
  const std::string ctx = context(1);
  ByteReader reader(share_bundle, ctx);
  read_header(reader, SecAggMessageType::kShareBundle, config_.round, kSecAggServerId);
  const uint32_t count = reader.read_u32("share count");
  reader.need_elements(count, 4 + kShareCiphertextBytes, "shares");
  std::set<uint32_t> seen;
  std::vector<std::tuple<uint32_t, ShamirShare, ShamirShare>> received;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t v = reader.read_u32("sender id");
    const auto sealed = as_u8(reader.read_bytes(kShareCiphertextBytes, "encrypted shares"));
    const auto found = peers_.find(v);
    if (found == peers_.end()) {
      throw DataError(ctx + ": shares from client " + std::to_string(v) +
                      ", which is not a neighbour in the key directory");
    }
    if (!seen.insert(v).second) {
      throw DataError(ctx + ": shares from client " + std::to_string(v) + " appear twice");
    }
    const auto plain = open(found->second.encryption_key, config_.round, v, id_, sealed,
                            ctx + ", shares from client " + std::to_string(v));
    const std::string share_ctx = ctx + ", share from client " + std::to_string(v);
    ShamirShare s_share =
        decode_share(std::span<const uint8_t, kShamirShareBytes>(plain.data(), kShamirShareBytes),
                     share_ctx.c_str());
    ShamirShare b_share = decode_share(std::span<const uint8_t, kShamirShareBytes>(
                                           plain.data() + kShamirShareBytes, kShamirShareBytes),
                                       share_ctx.c_str());
    if (s_share.id != id_ + 1 || b_share.id != id_ + 1) {
      throw DataError(share_ctx + ": share ids " + std::to_string(s_share.id) + " and " +
                      std::to_string(b_share.id) + ", expected " + std::to_string(id_ + 1));
    }
    received.emplace_back(v, s_share, b_share);
  }
  reader.expect_end("share bundle");
  for (const auto& [v, s_share, b_share] : received) {
    peers_.at(v).s_share = s_share;
    peers_.at(v).b_share = b_share;
  }
  bundle_senders_.assign(seen.begin(), seen.end());
  if (bundle_senders_.size() + 1 < config_.threshold) {
    throw CommError(-1, ctx,
                    std::to_string(bundle_senders_.size()) +
                        " neighbours shared keys; with "
                        "this client that is below the threshold " +
                        std::to_string(config_.threshold));
  }

  std::vector<uint32_t> y(config_.vector_length);
  const FixedPointCode code(config_.clip, config_.clients);
  const Key32 rounding = derive_secret(entropy_, "secagg rounding");
  uint64_t rounding_seed = 0;
  for (size_t i = 0; i < 8; ++i) rounding_seed |= uint64_t{rounding[i]} << (8 * i);
  Rng rng(rounding_seed);
  code.quantize(input, rng, y);
  add_mask(self_mask_seed_, config_.round, MaskPurpose::kSelfMask, +1, y);
  for (uint32_t v : bundle_senders_) {
    Key32 seed = agree(s_keys_.secret_key, s_keys_.public_key, peers_.at(v).s_public,
                       KeyPurpose::kPairMask, ctx);
    add_mask(seed, config_.round, MaskPurpose::kPairMask, id_ < v ? +1 : -1, y);
    sodium_memzero(seed.data(), seed.size());
  }
  ByteWriter writer(10 + 8 + 4 * y.size());
  write_header(writer, SecAggMessageType::kMaskedInput, config_.round, id_);
  writer.write_u64(y.size());
  for (uint32_t word : y) writer.write_u32(word);
  next_phase_ = 3;
  return writer.take();
}

SecAggMessage SecAggClient::unmask(std::span<const std::byte> unmask_request) {
  expect_phase(3, "unmask");
  const std::string ctx = context(3);
  ByteReader reader(unmask_request, ctx);
  read_header(reader, SecAggMessageType::kUnmaskRequest, config_.round, kSecAggServerId);
  const std::vector<uint32_t> survivors = read_ids(reader, "survivors");
  const std::vector<uint32_t> dropped = read_ids(reader, "dropped");
  reader.expect_end("unmask request");
  // The request must partition exactly the holders this client knows: itself
  // (a survivor: it sent its masked input) and the neighbours that shared keys.
  std::set<uint32_t> survivor_set(survivors.begin(), survivors.end());
  for (uint32_t v : dropped) {
    if (survivor_set.count(v) != 0) {
      throw DataError(ctx +
                      ": the server asks for both the self-mask share and the key share "
                      "of client " +
                      std::to_string(v) + ", which together would reveal its input; refused");
    }
  }
  std::set<uint32_t> dropped_set(dropped.begin(), dropped.end());
  if (survivor_set.size() != survivors.size() || dropped_set.size() != dropped.size()) {
    throw DataError(ctx + ": a client is listed twice");
  }
  std::set<uint32_t> known(bundle_senders_.begin(), bundle_senders_.end());
  known.insert(id_);
  std::set<uint32_t> asked = survivor_set;
  asked.insert(dropped_set.begin(), dropped_set.end());
  if (asked != known) {
    throw DataError(ctx + ": the request names " + std::to_string(asked.size()) +
                    " clients, not exactly the " + std::to_string(known.size()) +
                    " whose shares this client holds");
  }
  if (survivor_set.count(id_) == 0) {
    throw DataError(ctx + ": the request lists this client as dropped after it sent its input");
  }
  ByteWriter writer(10 + 4 + known.size() * (5 + kShamirShareBytes));
  write_header(writer, SecAggMessageType::kUnmasking, config_.round, id_);
  writer.write_u32(static_cast<uint32_t>(known.size()));
  for (uint32_t v : survivors) {
    const ShamirShare& share = v == id_ ? own_b_share_ : *peers_.at(v).b_share;
    writer.write_u32(v);
    writer.write_u8(kRevealSelfMask);
    writer.write_bytes(as_bytes(share_bytes(share)));
  }
  for (uint32_t v : dropped) {
    writer.write_u32(v);
    writer.write_u8(kRevealKey);
    writer.write_bytes(as_bytes(share_bytes(*peers_.at(v).s_share)));
  }
  next_phase_ = 4;
  return writer.take();
}

// ---------------------------------------------------------------- server

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
