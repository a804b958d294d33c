#include "comm/wire/auth.h"

#include <sodium.h>

#include <array>
#include <cstring>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr std::string_view kJobIdDomain = "dtrain job id v1";
constexpr std::string_view kKeyDomain = "dtrain frame key v1";

void ensure_sodium() {
  // sodium_init is thread-safe and idempotent: 0 on first success, 1 after.
  DTRAIN_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
}

}  // namespace

uint64_t job_id_of(std::string_view job_name) {
  ensure_sodium();
  crypto_generichash_state state;
  crypto_generichash_init(&state, nullptr, 0, 8);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(kJobIdDomain.data()),
                            kJobIdDomain.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(job_name.data()),
                            job_name.size());
  std::array<std::byte, 8> out;
  crypto_generichash_final(&state, reinterpret_cast<unsigned char*>(out.data()), out.size());
  // The digest's first 8 bytes read little-endian (docs/wire-format.md).
  return ByteReader(out, "job id").read_u64("digest");
}

JobAuth::JobAuth(std::string_view job_name, std::string_view secret)
    : job_id_(job_id_of(job_name)), enabled_(!secret.empty()) {
  if (!enabled_) return;
  // key = BLAKE2b-256(keyed by secret; domain || job id). Secrets longer than
  // libsodium's key limit are first hashed down to 32 bytes.
  std::array<unsigned char, crypto_generichash_KEYBYTES_MAX> secret_key{};
  size_t secret_key_bytes = secret.size();
  if (secret.size() > crypto_generichash_KEYBYTES_MAX) {
    crypto_generichash(secret_key.data(), 32, reinterpret_cast<const unsigned char*>(secret.data()),
                       secret.size(), nullptr, 0);
    secret_key_bytes = 32;
  } else {
    std::memcpy(secret_key.data(), secret.data(), secret.size());
  }
  crypto_generichash_state state;
  crypto_generichash_init(&state, secret_key.data(), secret_key_bytes, key_.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(kKeyDomain.data()),
                            kKeyDomain.size());
  ByteWriter id_bytes(8);
  id_bytes.write_u64(job_id_);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(id_bytes.bytes().data()),
                            id_bytes.size());
  crypto_generichash_final(&state, key_.data(), key_.size());
  sodium_memzero(secret_key.data(), secret_key.size());
}

JobAuth::~JobAuth() { sodium_memzero(key_.data(), key_.size()); }

Mac JobAuth::mac(std::span<const std::byte> header, std::span<const std::byte> payload) const {
  DTRAIN_CHECK(enabled_, "JobAuth::mac called without a job secret");
  crypto_generichash_state state;
  crypto_generichash_init(&state, key_.data(), key_.size(), kMacBytes);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(header.data()),
                            header.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(payload.data()),
                            payload.size());
  Mac out;
  crypto_generichash_final(&state, reinterpret_cast<unsigned char*>(out.data()), out.size());
  return out;
}

bool JobAuth::verify(std::span<const std::byte> header, std::span<const std::byte> payload,
                     std::span<const std::byte, kMacBytes> expected) const {
  if (!enabled_) return false;
  Mac actual = mac(header, payload);
  return crypto_verify_32(reinterpret_cast<const unsigned char*>(actual.data()),
                          reinterpret_cast<const unsigned char*>(expected.data())) == 0;
}

}  // namespace dtrain::comm
