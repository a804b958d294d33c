// The cryptographic pieces of secure aggregation (Bonawitz et al. 2017,
// "Practical Secure Aggregation for Privacy-Preserving Machine Learning"),
// all from libsodium:
//
// - Key pairs: X25519 (crypto_box_seed_keypair from a 32-byte seed). Each
//   client has two per round: c (to encrypt the shares it sends to other
//   clients through the server) and s (to agree on pairwise mask seeds).
// - Key agreement: k = BLAKE2b-256(X25519(sk_u, pk_v) || pk_low || pk_high ||
//   purpose), where pk_low < pk_high are the two public keys in byte order, so
//   both ends derive the same key; the purpose byte separates the share-
//   encryption key (c keys) from the mask seed s_uv (s keys).
// - Share encryption: XChaCha20-Poly1305 (IETF AEAD). The 24-byte nonce is
//   (round, sender, recipient, 0...) as little-endian u32s: unique because
//   the keys are fresh each round and u -> v and v -> u differ; the same 12
//   bytes are the associated data, so the server cannot re-route a
//   ciphertext to another recipient or round without the tag failing.
// - Mask expansion (the PRG): ChaCha20 keyed with a 32-byte seed, 8-byte
//   nonce = (round as u32 LE, purpose byte, 0, 0, 0), counter from 0; its
//   keystream read as little-endian u32 words is added to (or subtracted
//   from) the vector mod 2^32. Purpose kSelfMask for b_u, kPairMask for s_uv:
//   a seed never expands to the same stream for two purposes or rounds.
// - Secrets derived from one 32-byte entropy value per client and round:
//   BLAKE2b-256 keyed with it over a label (derive_secret).
//
// Errors: DataError when a peer's public key is a low-order point (X25519
// gives all zeros), or a ciphertext fails authentication (names the context).
// Thread safety: pure functions (libsodium is initialised once, thread-safe).
// Never blocks.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dtrain::privacy {

using Key32 = std::array<uint8_t, 32>;

struct X25519KeyPair {
  Key32 public_key{};
  Key32 secret_key{};
};

enum class KeyPurpose : uint8_t { kShareEncryption = 1, kPairMask = 2 };
enum class MaskPurpose : uint8_t { kSelfMask = 1, kPairMask = 2 };

// sodium_init() once; UsageError if libsodium cannot start.
void ensure_sodium();

Key32 random_key();
Key32 derive_secret(const Key32& entropy, const char* label);
X25519KeyPair keypair_from_seed(const Key32& seed);
// The public key of a secret key (what the server recomputes for a dropped
// client's reconstructed s key).
Key32 public_key_of(const Key32& secret_key);

Key32 agree(const Key32& my_secret, const Key32& my_public, const Key32& their_public,
            KeyPurpose purpose, const std::string& context);

// acc[i] += sign * word_i(PRG(seed, round, purpose)) mod 2^32; sign is +1 or -1.
void add_mask(const Key32& seed, uint32_t round, MaskPurpose purpose, int sign,
              std::span<uint32_t> acc);

inline constexpr size_t kAeadOverheadBytes = 16;

std::vector<uint8_t> seal(const Key32& key, uint32_t round, uint32_t sender, uint32_t recipient,
                          std::span<const uint8_t> plaintext);
// DataError naming `context` when the tag does not verify.
std::vector<uint8_t> open(const Key32& key, uint32_t round, uint32_t sender, uint32_t recipient,
                          std::span<const uint8_t> ciphertext, const std::string& context);

}  // namespace dtrain::privacy
