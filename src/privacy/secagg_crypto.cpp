#include "privacy/secagg_crypto.h"

#include <sodium.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "core/error.h"

namespace dtrain::privacy {

namespace {

std::array<uint8_t, 12> header_bytes(uint32_t round, uint32_t sender, uint32_t recipient) {
  std::array<uint8_t, 12> out{};
  const uint32_t words[3] = {round, sender, recipient};
  for (size_t w = 0; w < 3; ++w) {
    for (size_t i = 0; i < 4; ++i) out[4 * w + i] = static_cast<uint8_t>(words[w] >> (8 * i));
  }
  return out;
}

}  // namespace

void ensure_sodium() {
  if (sodium_init() < 0) throw UsageError("secagg: libsodium failed to initialise");
}

Key32 random_key() {
  ensure_sodium();
  Key32 key;
  randombytes_buf(key.data(), key.size());
  return key;
}

Key32 derive_secret(const Key32& entropy, const char* label) {
  Key32 out;
  crypto_generichash(out.data(), out.size(), reinterpret_cast<const uint8_t*>(label),
                     std::strlen(label), entropy.data(), entropy.size());
  return out;
}

X25519KeyPair keypair_from_seed(const Key32& seed) {
  ensure_sodium();
  X25519KeyPair pair;
  crypto_box_seed_keypair(pair.public_key.data(), pair.secret_key.data(), seed.data());
  return pair;
}

Key32 public_key_of(const Key32& secret_key) {
  ensure_sodium();
  Key32 pk;
  crypto_scalarmult_base(pk.data(), secret_key.data());
  return pk;
}

Key32 agree(const Key32& my_secret, const Key32& my_public, const Key32& their_public,
            KeyPurpose purpose, const std::string& context) {
  Key32 shared;
  if (crypto_scalarmult(shared.data(), my_secret.data(), their_public.data()) != 0) {
    throw DataError(context + ": the peer's public key is a low-order point");
  }
  const bool mine_first = my_public < their_public;
  const Key32& low = mine_first ? my_public : their_public;
  const Key32& high = mine_first ? their_public : my_public;
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, 32);
  crypto_generichash_update(&state, shared.data(), shared.size());
  crypto_generichash_update(&state, low.data(), low.size());
  crypto_generichash_update(&state, high.data(), high.size());
  const uint8_t p = static_cast<uint8_t>(purpose);
  crypto_generichash_update(&state, &p, 1);
  Key32 out;
  crypto_generichash_final(&state, out.data(), out.size());
  sodium_memzero(shared.data(), shared.size());
  return out;
}

void add_mask(const Key32& seed, uint32_t round, MaskPurpose purpose, int sign,
              std::span<uint32_t> acc) {
  std::array<uint8_t, crypto_stream_chacha20_NONCEBYTES> nonce{};
  for (size_t i = 0; i < 4; ++i) nonce[i] = static_cast<uint8_t>(round >> (8 * i));
  nonce[4] = static_cast<uint8_t>(purpose);
  constexpr size_t kChunkWords = 4096;  // 16 KiB of keystream, 256 ChaCha blocks
  std::array<uint32_t, kChunkWords> stream;
  uint64_t block = 0;
  for (size_t at = 0; at < acc.size(); at += kChunkWords) {
    const size_t words = std::min(kChunkWords, acc.size() - at);
    const size_t bytes = ((words * 4 + 63) / 64) * 64;
    std::memset(stream.data(), 0, bytes);
    crypto_stream_chacha20_xor_ic(reinterpret_cast<uint8_t*>(stream.data()),
                                  reinterpret_cast<const uint8_t*>(stream.data()), bytes,
                                  nonce.data(), block, seed.data());
    block += bytes / 64;
    if constexpr (std::endian::native == std::endian::big) {
      for (size_t i = 0; i < words; ++i) {
        const uint32_t w = stream[i];
        stream[i] = (w >> 24) | ((w >> 8) & 0xff00U) | ((w << 8) & 0xff0000U) | (w << 24);
      }
    }
    uint32_t* out = acc.data() + at;
    if (sign > 0) {
      for (size_t i = 0; i < words; ++i) out[i] += stream[i];
    } else {
      for (size_t i = 0; i < words; ++i) out[i] -= stream[i];
    }
  }
}

std::vector<uint8_t> seal(const Key32& key, uint32_t round, uint32_t sender, uint32_t recipient,
                          std::span<const uint8_t> plaintext) {
  const auto header = header_bytes(round, sender, recipient);
  std::array<uint8_t, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES> nonce{};
  std::copy(header.begin(), header.end(), nonce.begin());
  std::vector<uint8_t> out(plaintext.size() + kAeadOverheadBytes);
  unsigned long long written = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(out.data(), &written, plaintext.data(),
                                             plaintext.size(), header.data(), header.size(),
                                             nullptr, nonce.data(), key.data());
  out.resize(written);
  return out;
}

std::vector<uint8_t> open(const Key32& key, uint32_t round, uint32_t sender, uint32_t recipient,
                          std::span<const uint8_t> ciphertext, const std::string& context) {
  if (ciphertext.size() < kAeadOverheadBytes) {
    throw DataError(context + ": ciphertext of " + std::to_string(ciphertext.size()) +
                    " bytes is shorter than its 16-byte tag");
  }
  const auto header = header_bytes(round, sender, recipient);
  std::array<uint8_t, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES> nonce{};
  std::copy(header.begin(), header.end(), nonce.begin());
  std::vector<uint8_t> out(ciphertext.size() - kAeadOverheadBytes);
  unsigned long long written = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(out.data(), &written, nullptr, ciphertext.data(),
                                                 ciphertext.size(), header.data(), header.size(),
                                                 nonce.data(), key.data()) != 0) {
    throw DataError(context +
                    ": the encrypted shares fail authentication (wrong key, round, "
                    "sender or recipient, or altered bytes)");
  }
  out.resize(written);
  return out;
}

}  // namespace dtrain::privacy
