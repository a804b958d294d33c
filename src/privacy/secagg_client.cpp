// SecAggClient: the client's side of a secure-aggregation round (secagg.h).
#include <sodium.h>

#include <algorithm>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"
#include "privacy/secagg.h"
#include "privacy/secagg_wire.h"

namespace dtrain::privacy {

using namespace secagg_wire;

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

}  // namespace dtrain::privacy
