// JobAuth: the identity of one job on the wire and, when a job secret is set,
// the keys that authenticate every frame.
//
// - job_id(): 64 bits derived from the job name (BLAKE2b, domain-separated).
//   Every frame carries it, so two jobs that share a network (or a stale
//   process from an earlier run) never mix messages. It is not a secret.
// - With a non-empty secret, mac() authenticates one frame (header with its
//   MAC field zeroed, then the payload) with a fresh 96-bit nonce, and
//   returns nonce, algorithm and 16-byte tag in the 32-byte MAC field
//   (layout below, docs/wire-format.md "Authentication"). The algorithm is
//   AES-256-GCM (the payload as additional data, the header as the 88-byte
//   message; only the tag is kept) where libsodium finds AES-NI and PCLMUL
//   (payloads of 1 KiB and more through GcmTagger, comm/wire/gcm_tag.h,
//   where the CPU has AVX-512 VPCLMULQDQ: the same tag at ~3x the speed),
//   else Poly1305 with a one-time key per frame, the first 32 bytes of
//   ChaCha20(key, nonce) (RFC 8439, section 2.6). verify() takes either
//   algorithm and compares in constant time. The keys are derived from the
//   secret and the job id (BLAKE2b), one per algorithm, so the same secret
//   used by two jobs yields two sets of keys.
// - Nonces: a 32-bit random source id drawn per constructed JobAuth, then a
//   64-bit counter that starts at a random value below 2^63 and grows by one
//   per mac() call. Copies of a JobAuth share the counter (atomically), so
//   no two frames of one process ever share a nonce, and two processes share
//   one only if both their source ids and their counter ranges meet. A
//   receiver refuses a frame whose counter is not above the last it accepted
//   from that source on that connection (FramedSocket) or whose sequence is
//   out of order (ZmqTransport): replays and reordering are refused.
//   Contract: a process that fork()s must not use a JobAuth made before the
//   fork in both parent and child (the child would repeat the parent's
//   nonces); dtrain's launcher execs its workers, which make their own.
// - With an empty secret, enabled() is false and frames carry no MAC; a
//   process that has a secret rejects such frames and vice versa (wire.h).
// - With encrypt (security.encrypt, docs/security.md), two CURVE key pairs
//   (libzmq's CurveZMQ, RFC 26) are derived from the secret and the job id:
//   curve()->server for the sockets that bind, curve()->client for those that
//   connect (comm/wire/curve.h puts them on a socket). Every process that
//   holds the secret has the same pairs, so nothing new is distributed.
// The secret is kept only as the derived keys; they are wiped on destruction.
// Thread safety: all methods are const and may be called from any thread
// (mac() draws its nonce with an atomic increment). Throws InternalError
// only if libsodium fails to initialise; ConfigError for encrypt without a
// secret, when libzmq was built without CURVE (zmq_has("curve")), or for
// FrameMac::kAesGcm where AES-GCM is unavailable. Never blocks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "comm/wire/gcm_tag.h"

namespace dtrain::comm {

// The MAC field: bytes 0-3 the nonce's source id, 4-11 its counter (both
// little-endian: the 12 bytes are the 96-bit nonce), 12 the algorithm
// (FrameMac), 13-15 zero, 16-31 the tag.
inline constexpr size_t kMacBytes = 32;
using Mac = std::array<std::byte, kMacBytes>;

// The per-frame MAC algorithm (its value is byte 12 of the MAC field).
enum class FrameMac : uint8_t {
  kAuto = 0,      // AES-256-GCM where available, else Poly1305 (construction only)
  kAesGcm = 1,    // AES-256-GCM tag (libsodium crypto_aead_aes256gcm, AES-NI)
  kPoly1305 = 2,  // Poly1305, one-time key from ChaCha20 (runs everywhere)
};
std::string_view to_string(FrameMac mac);
// What kAuto becomes on a CPU with or without libsodium's AES-GCM.
FrameMac choose_frame_mac(bool aes_gcm_available);

// A frame's nonce, as read from its MAC field.
struct MacNonce {
  uint32_t source = 0;   // random per sending JobAuth (and its copies)
  uint64_t counter = 0;  // strictly increasing per source
  bool operator==(const MacNonce&) const = default;
};
MacNonce mac_nonce(std::span<const std::byte, kMacBytes> mac);

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

// How a JobAuth authenticates frames; the defaults are what a job uses.
struct FrameMacOptions {
  // The algorithm of the frames this process sends.
  FrameMac send = FrameMac::kAuto;
  // Whether this process can compute AES-256-GCM; nullopt: ask libsodium
  // (crypto_aead_aes256gcm_is_available). Tests inject false.
  std::optional<bool> aes_gcm_available;
};

class JobAuth {
 public:
  // `encrypt`: derive the CURVE keys (security.encrypt; needs a secret).
  JobAuth(std::string_view job_name, std::string_view secret, bool encrypt = false,
          FrameMacOptions mac_options = {});
  ~JobAuth();
  JobAuth(const JobAuth&) = default;
  JobAuth& operator=(const JobAuth&) = default;

  uint64_t job_id() const { return job_id_; }
  bool enabled() const { return enabled_; }
  // The CURVE keys when links are encrypted, else nullptr.
  const CurveKeys* curve() const { return encrypt_ ? &curve_ : nullptr; }

  // The algorithm of the frames this process sends (kAesGcm or kPoly1305).
  FrameMac frame_mac() const { return send_; }

  // Authenticates `header` (at most 256 bytes) then `payload` under a fresh
  // nonce: the MAC field's 32 bytes. Requires enabled().
  Mac mac(std::span<const std::byte> header, std::span<const std::byte> payload) const;
  // mac() of the payload head ‖ body, without joining them (where libsodium
  // needs one buffer, a copy of both is made).
  Mac mac(std::span<const std::byte> header, std::span<const std::byte> head,
          std::span<const std::byte> body) const;
  // True when `expected` (a MAC field) authenticates header+payload under
  // its nonce and algorithm (constant-time compare of the tag).
  bool verify(std::span<const std::byte> header, std::span<const std::byte> payload,
              std::span<const std::byte, kMacBytes> expected) const;
  // verify() of the payload head ‖ body, without joining them.
  bool verify(std::span<const std::byte> header, std::span<const std::byte> head,
              std::span<const std::byte> body,
              std::span<const std::byte, kMacBytes> expected) const;
  // verify() of a payload handed in pieces as it arrives, for a receiver
  // that uses each piece before the last has come (and fails the whole
  // operation when finish() says no): update() each piece in order, then
  // finish(), true when `expected` authenticates header and the pieces
  // joined, exactly when verify() would be. It refers to this JobAuth's keys:
  // the JobAuth outlives it. One frame, one thread; it wipes its state.
  class PayloadVerifier {
   public:
    PayloadVerifier() = default;
    ~PayloadVerifier();
    PayloadVerifier(const PayloadVerifier&) = delete;
    PayloadVerifier& operator=(const PayloadVerifier&) = delete;
    PayloadVerifier(PayloadVerifier&&) = default;
    PayloadVerifier& operator=(PayloadVerifier&&) = default;
    void update(std::span<const std::byte> piece);
    bool finish();

   private:
    friend class JobAuth;
    enum class Kind : uint8_t { kRefuse, kAesGcm, kPoly1305 };
    Kind kind_ = Kind::kRefuse;
    const GcmTagger* gcm_ = nullptr;
    GcmTagger::Stream gcm_stream_;
    alignas(16) std::array<unsigned char, 256> poly_{};  // crypto_onetimeauth_state
    Mac expected_{};
    std::array<std::byte, GcmTagger::kMaxHeaderBytes> header_{};
    size_t header_bytes_ = 0;
  };
  // A PayloadVerifier for `header` and `expected`, or nullopt where the
  // algorithm cannot be checked piece by piece here (AES-GCM on a CPU
  // without GcmTagger: libsodium takes the payload in one buffer), when the
  // caller checks the whole payload with verify(). An unknown algorithm gets
  // one whose finish() says no.
  std::optional<PayloadVerifier> begin_verify(std::span<const std::byte> header,
                                              std::span<const std::byte, kMacBytes> expected) const;
  // Why verify() refused `expected`, in words for a log line: "MAC mismatch
  // (...)", an unknown algorithm, or AES-GCM that this CPU cannot check.
  std::string refusal(std::span<const std::byte, kMacBytes> expected) const;

 private:
  struct Keys;          // the derived frame keys (libsodium states)
  struct NonceCounter;  // the nonce source shared by copies
  uint64_t job_id_ = 0;
  bool enabled_ = false;
  bool encrypt_ = false;
  bool gcm_available_ = false;
  FrameMac send_ = FrameMac::kPoly1305;
  // Shared with copies: the keys are immutable; the counter is atomic. (The
  // one shared_ptr of this module: copies must draw from one counter.)
  std::shared_ptr<const Keys> keys_;
  std::shared_ptr<NonceCounter> nonces_;
  CurveKeys curve_{};
};

// The job id of `job_name` (what JobAuth::job_id() returns).
uint64_t job_id_of(std::string_view job_name);

}  // namespace dtrain::comm
