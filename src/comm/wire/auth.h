// JobAuth: the identity of one job on the wire and, when a job secret is set,
// the key that authenticates every frame.
//
// - job_id(): 64 bits derived from the job name (BLAKE2b, domain-separated).
//   Every frame carries it, so two jobs that share a network (or a stale
//   process from an earlier run) never mix messages. It is not a secret.
// - With a non-empty secret, mac() computes a 32-byte keyed BLAKE2b
//   (libsodium crypto_generichash, an HMAC-equivalent keyed hash) over the
//   frame header (with its MAC field zeroed) and the payload. The key is
//   derived from the secret and the job id, so the same secret used by two jobs
//   yields two keys. verify() compares in constant time.
// - With an empty secret, enabled() is false and frames carry no MAC; a
//   process that has a secret rejects such frames and vice versa (wire.h).
// - With encrypt (security.encrypt, docs/security.md), two CURVE key pairs
//   (libzmq's CurveZMQ, RFC 26) are derived from the secret and the job id:
//   curve()->server for the sockets that bind, curve()->client for those that
//   connect (comm/wire/curve.h puts them on a socket). Every process that
//   holds the secret has the same pairs, so nothing new is distributed.
// The secret is kept only as the derived keys; they are wiped on destruction.
// Thread safety: immutable after construction; all methods are const and may
// be called from any thread. Throws InternalError only if libsodium fails to
// initialise; ConfigError for encrypt without a secret, or when libzmq was
// built without CURVE (zmq_has("curve")). Never blocks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace dtrain::comm {

inline constexpr size_t kMacBytes = 32;
using Mac = std::array<std::byte, kMacBytes>;

inline constexpr size_t kCurveKeyBytes = 32;
using CurveKey = std::array<uint8_t, kCurveKeyBytes>;

// A Curve25519 key pair (crypto_box_seed_keypair).
struct CurveKeyPair {
  CurveKey public_key{};
  CurveKey secret_key{};
};

// The job's CURVE keys: `server` on binding sockets, `client` on connecting
// ones; a binding socket accepts only client.public_key (the ZAP handler).
struct CurveKeys {
  CurveKeyPair server;
  CurveKeyPair client;
};

// The key pairs of (secret, job id): each pair from a 32-byte seed,
// BLAKE2b-256 keyed by the secret over a domain ("dtrain curve server v1" or
// "dtrain curve client v1") and the job id. Requires a non-empty secret.
CurveKeys derive_curve_keys(std::string_view secret, uint64_t job_id);

class JobAuth {
 public:
  // `encrypt`: derive the CURVE keys (security.encrypt; needs a secret).
  JobAuth(std::string_view job_name, std::string_view secret, bool encrypt = false);
  ~JobAuth();
  JobAuth(const JobAuth&) = default;
  JobAuth& operator=(const JobAuth&) = default;

  uint64_t job_id() const { return job_id_; }
  bool enabled() const { return enabled_; }
  // The CURVE keys when links are encrypted, else nullptr.
  const CurveKeys* curve() const { return encrypt_ ? &curve_ : nullptr; }

  // Keyed hash of `header` then `payload`. Requires enabled().
  Mac mac(std::span<const std::byte> header, std::span<const std::byte> payload) const;
  // True when `expected` is the MAC of header+payload (constant-time compare).
  bool verify(std::span<const std::byte> header, std::span<const std::byte> payload,
              std::span<const std::byte, kMacBytes> expected) const;

 private:
  uint64_t job_id_ = 0;
  bool enabled_ = false;
  bool encrypt_ = false;
  std::array<unsigned char, 32> key_{};
  CurveKeys curve_{};
};

// The job id of `job_name` (what JobAuth::job_id() returns).
uint64_t job_id_of(std::string_view job_name);

}  // namespace dtrain::comm
