#include "comm/wire/auth.h"

#include <fmt/format.h>
#include <sodium.h>
#include <zmq.h>

#include <array>
#include <cstring>
#include <span>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr std::string_view kJobIdDomain = "dtrain job id v1";
constexpr std::string_view kKeyDomain = "dtrain frame key v1";
constexpr std::string_view kCurveServerDomain = "dtrain curve server v1";
constexpr std::string_view kCurveClientDomain = "dtrain curve client v1";

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

namespace {

// BLAKE2b-256 keyed by `secret` over `domain` || job id (8 bytes, little
// endian). Secrets longer than libsodium's key limit are first hashed down
// to 32 bytes.
void keyed_digest(std::string_view secret, std::string_view domain, uint64_t job_id,
                  std::span<unsigned char, 32> out) {
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
  crypto_generichash_init(&state, secret_key.data(), secret_key_bytes, out.size());
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(domain.data()),
                            domain.size());
  ByteWriter id_bytes(8);
  id_bytes.write_u64(job_id);
  crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(id_bytes.bytes().data()),
                            id_bytes.size());
  crypto_generichash_final(&state, out.data(), out.size());
  sodium_memzero(secret_key.data(), secret_key.size());
}

CurveKeyPair seeded_pair(std::string_view secret, std::string_view domain, uint64_t job_id) {
  std::array<unsigned char, crypto_box_SEEDBYTES> seed{};
  static_assert(crypto_box_SEEDBYTES == 32 && crypto_box_PUBLICKEYBYTES == kCurveKeyBytes &&
                crypto_box_SECRETKEYBYTES == kCurveKeyBytes);
  keyed_digest(secret, domain, job_id, seed);
  CurveKeyPair pair;
  DTRAIN_CHECK(
      crypto_box_seed_keypair(pair.public_key.data(), pair.secret_key.data(), seed.data()) == 0,
      "crypto_box_seed_keypair failed");
  sodium_memzero(seed.data(), seed.size());
  return pair;
}

}  // namespace

CurveKeys derive_curve_keys(std::string_view secret, uint64_t job_id) {
  ensure_sodium();
  DTRAIN_CHECK(!secret.empty(), "derive_curve_keys needs a job secret");
  return {seeded_pair(secret, kCurveServerDomain, job_id),
          seeded_pair(secret, kCurveClientDomain, job_id)};
}

JobAuth::JobAuth(std::string_view job_name, std::string_view secret, bool encrypt)
    : job_id_(job_id_of(job_name)), enabled_(!secret.empty()), encrypt_(encrypt) {
  if (encrypt_) {
    if (!enabled_) {
      throw ConfigError(
          "security.encrypt = true needs a job secret (DTRAIN_JOB_SECRET): the CURVE keys of "
          "the job's links are derived from it (docs/security.md)");
    }
    if (zmq_has("curve") == 0) {
      int major = 0, minor = 0, patch = 0;
      zmq_version(&major, &minor, &patch);
      throw ConfigError(fmt::format(
          "security.encrypt = true, but this libzmq ({}.{}.{}) was built without CURVE "
          "(zmq_has(\"curve\") is false); install a libzmq built with libsodium (Debian's "
          "libzmq5 is) or set encrypt = false",
          major, minor, patch));
    }
    curve_ = derive_curve_keys(secret, job_id_);
  }
  if (!enabled_) return;
  keyed_digest(secret, kKeyDomain, job_id_, key_);
}

JobAuth::~JobAuth() {
  sodium_memzero(key_.data(), key_.size());
  sodium_memzero(&curve_, sizeof curve_);
}

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
