#include "comm/wire/auth.h"

#include <fmt/format.h>
#include <sodium.h>
#include <zmq.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "comm/wire/gcm_tag.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr std::string_view kJobIdDomain = "dtrain job id v1";
constexpr std::string_view kGcmKeyDomain = "dtrain frame key aes-256-gcm v2";
constexpr std::string_view kPolyKeyDomain = "dtrain frame key poly1305 v2";
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

std::string_view to_string(FrameMac mac) {
  switch (mac) {
    case FrameMac::kAuto:
      return "auto";
    case FrameMac::kAesGcm:
      return "AES-256-GCM";
    case FrameMac::kPoly1305:
      return "Poly1305";
  }
  return "unknown";
}

FrameMac choose_frame_mac(bool aes_gcm_available) {
  return aes_gcm_available ? FrameMac::kAesGcm : FrameMac::kPoly1305;
}

namespace {

constexpr size_t kNonceBytes = 12;
constexpr size_t kOffAlgorithm = 12;
constexpr size_t kOffTag = 16;
constexpr size_t kTagBytes = 16;
constexpr size_t kMaxHeaderBytes = 256;
static_assert(crypto_aead_aes256gcm_NPUBBYTES == kNonceBytes &&
              crypto_aead_aes256gcm_ABYTES == kTagBytes &&
              crypto_stream_chacha20_ietf_NONCEBYTES == kNonceBytes &&
              crypto_onetimeauth_BYTES == kTagBytes && kOffTag + kTagBytes == kMacBytes);

const unsigned char* uchars(std::span<const std::byte> bytes) {
  return reinterpret_cast<const unsigned char*>(bytes.data());
}

}  // namespace

MacNonce mac_nonce(std::span<const std::byte, kMacBytes> mac) {
  ByteReader r(mac.first<kNonceBytes>(), "mac nonce");
  MacNonce nonce;
  nonce.source = r.read_u32("source");
  nonce.counter = r.read_u64("counter");
  return nonce;
}

struct JobAuth::Keys {
  crypto_aead_aes256gcm_state gcm;  // expanded AES key and GHASH key
  // The same key for GcmTagger, where the CPU runs it (else null).
  std::unique_ptr<GcmTagger> fast_gcm;
  std::array<unsigned char, crypto_stream_chacha20_ietf_KEYBYTES> chacha{};
  ~Keys() {
    sodium_memzero(&gcm, sizeof gcm);
    sodium_memzero(chacha.data(), chacha.size());
  }
};

struct JobAuth::NonceCounter {
  uint32_t source = 0;
  std::atomic<uint64_t> next{0};
};

JobAuth::JobAuth(std::string_view job_name, std::string_view secret, bool encrypt,
                 FrameMacOptions mac_options)
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
  gcm_available_ =
      mac_options.aes_gcm_available.value_or(crypto_aead_aes256gcm_is_available() != 0);
  send_ = mac_options.send == FrameMac::kAuto ? choose_frame_mac(gcm_available_) : mac_options.send;
  if (send_ == FrameMac::kAesGcm && !gcm_available_) {
    throw ConfigError(
        "frames authenticated with AES-256-GCM, but this CPU lacks AES-NI or PCLMUL "
        "(crypto_aead_aes256gcm_is_available() is false): use Poly1305");
  }
  if (!enabled_) return;
  auto keys = std::make_shared<Keys>();
  std::array<unsigned char, 32> gcm_key{};
  keyed_digest(secret, kGcmKeyDomain, job_id_, gcm_key);
  if (gcm_available_) crypto_aead_aes256gcm_beforenm(&keys->gcm, gcm_key.data());
  if (gcm_available_ && GcmTagger::available()) {
    keys->fast_gcm = std::make_unique<GcmTagger>(gcm_key);
  }
  sodium_memzero(gcm_key.data(), gcm_key.size());
  keyed_digest(secret, kPolyKeyDomain, job_id_, keys->chacha);
  keys_ = std::move(keys);
  nonces_ = std::make_shared<NonceCounter>();
  nonces_->source = randombytes_random();
  // Below 2^63, so that the counter never wraps while the process lives.
  uint64_t start = 0;
  randombytes_buf(&start, sizeof start);
  nonces_->next.store(start >> 1, std::memory_order_relaxed);
}

JobAuth::~JobAuth() { sodium_memzero(&curve_, sizeof curve_); }

namespace {

// Payloads from this size up take GcmTagger where there is one: below it
// libsodium's one-block-at-a-time GHASH is as fast (mac_bench: 64-byte
// frames 0.46 against 0.38 GB/s, 4 KiB 6.0 against 11.6 GB/s).
constexpr size_t kFastGcmMinBytes = 1024;

// The tag of `header` then `payload` under `nonce` (see auth.h). GCM: the
// payload is the additional data and the header the message, whose
// ciphertext is thrown away (libsodium takes one AD buffer, and so neither
// is copied). GcmTagger computes the same tag (gcm_tag.h).
// The payload is head ‖ body (head empty for a payload in one piece).
void frame_tag(FrameMac mac, const crypto_aead_aes256gcm_state& gcm, const GcmTagger* fast_gcm,
               std::span<const unsigned char, 32> chacha_key, const unsigned char* nonce,
               std::span<const std::byte> header, std::span<const std::byte> head,
               std::span<const std::byte> body, unsigned char* tag) {
  DTRAIN_CHECK(header.size() <= kMaxHeaderBytes, "a {}-byte header, at most {}", header.size(),
               kMaxHeaderBytes);
  if (mac == FrameMac::kAesGcm && fast_gcm != nullptr &&
      head.size() + body.size() >= kFastGcmMinBytes) {
    fast_gcm->tag(std::span<const unsigned char, kNonceBytes>(nonce, kNonceBytes), header, head,
                  body, std::span<unsigned char, kTagBytes>(tag, kTagBytes));
    return;
  }
  if (mac == FrameMac::kAesGcm) {
    // libsodium takes one additional-data buffer (it has no incremental
    // AES-GCM): a payload in two parts is joined, on the stack below
    // kFastGcmMinBytes (where GcmTagger exists, the only sizes that come
    // here), else on the heap (a CPU without VPCLMULQDQ).
    std::array<std::byte, kFastGcmMinBytes> small;
    std::vector<std::byte> large;
    std::span<const std::byte> payload = body;
    if (!head.empty()) {
      const size_t bytes = head.size() + body.size();
      if (bytes > small.size()) large.resize(bytes);
      const std::span<std::byte> joined =
          bytes > small.size() ? std::span<std::byte>(large) : std::span(small).first(bytes);
      std::copy(head.begin(), head.end(), joined.begin());
      std::copy(body.begin(), body.end(), joined.begin() + static_cast<ptrdiff_t>(head.size()));
      payload = joined;
    }
    std::array<unsigned char, kMaxHeaderBytes> discarded;
    unsigned long long tag_bytes = 0;
    crypto_aead_aes256gcm_encrypt_detached_afternm(discarded.data(), tag, &tag_bytes,
                                                   uchars(header), header.size(), uchars(payload),
                                                   payload.size(), nullptr, nonce, &gcm);
    sodium_memzero(discarded.data(), header.size());
    return;
  }
  std::array<unsigned char, crypto_onetimeauth_KEYBYTES> one_time_key;
  crypto_stream_chacha20_ietf(one_time_key.data(), one_time_key.size(), nonce, chacha_key.data());
  crypto_onetimeauth_state state;
  crypto_onetimeauth_init(&state, one_time_key.data());
  crypto_onetimeauth_update(&state, uchars(header), header.size());
  crypto_onetimeauth_update(&state, uchars(head), head.size());
  crypto_onetimeauth_update(&state, uchars(body), body.size());
  crypto_onetimeauth_final(&state, tag);
  sodium_memzero(one_time_key.data(), one_time_key.size());
}

// The algorithm byte of a MAC field when it names one and the padding after
// it is zero; nullopt otherwise.
std::optional<FrameMac> algorithm_of(std::span<const std::byte, kMacBytes> mac) {
  const uint8_t algorithm = std::to_integer<uint8_t>(mac[kOffAlgorithm]);
  const bool padded = std::all_of(mac.begin() + kOffAlgorithm + 1, mac.begin() + kOffTag,
                                  [](std::byte b) { return b == std::byte{0}; });
  if (!padded) return std::nullopt;
  if (algorithm == static_cast<uint8_t>(FrameMac::kAesGcm)) return FrameMac::kAesGcm;
  if (algorithm == static_cast<uint8_t>(FrameMac::kPoly1305)) return FrameMac::kPoly1305;
  return std::nullopt;
}

}  // namespace

Mac JobAuth::mac(std::span<const std::byte> header, std::span<const std::byte> payload) const {
  return mac(header, {}, payload);
}

Mac JobAuth::mac(std::span<const std::byte> header, std::span<const std::byte> head,
                 std::span<const std::byte> body) const {
  DTRAIN_CHECK(enabled_, "JobAuth::mac called without a job secret");
  ByteWriter w(kOffTag);
  w.write_u32(nonces_->source);
  w.write_u64(nonces_->next.fetch_add(1, std::memory_order_relaxed));
  w.write_u8(static_cast<uint8_t>(send_));
  w.write_u8(0);
  w.write_u16(0);
  Mac out{};
  std::copy(w.bytes().begin(), w.bytes().end(), out.begin());
  frame_tag(send_, keys_->gcm, keys_->fast_gcm.get(), keys_->chacha,
            reinterpret_cast<const unsigned char*>(out.data()), header, head, body,
            reinterpret_cast<unsigned char*>(out.data() + kOffTag));
  return out;
}

bool JobAuth::verify(std::span<const std::byte> header, std::span<const std::byte> payload,
                     std::span<const std::byte, kMacBytes> expected) const {
  return verify(header, {}, payload, expected);
}

bool JobAuth::verify(std::span<const std::byte> header, std::span<const std::byte> head,
                     std::span<const std::byte> body,
                     std::span<const std::byte, kMacBytes> expected) const {
  const std::optional<FrameMac> algorithm = algorithm_of(expected);
  if (!enabled_ || !algorithm || (*algorithm == FrameMac::kAesGcm && !gcm_available_)) {
    return false;
  }
  std::array<unsigned char, kTagBytes> actual;
  frame_tag(*algorithm, keys_->gcm, keys_->fast_gcm.get(), keys_->chacha, uchars(expected), header,
            head, body, actual.data());
  return crypto_verify_16(actual.data(), uchars(expected.subspan<kOffTag, kTagBytes>())) == 0;
}

std::optional<JobAuth::PayloadVerifier> JobAuth::begin_verify(
    std::span<const std::byte> header, std::span<const std::byte, kMacBytes> expected) const {
  static_assert(sizeof(crypto_onetimeauth_state) <= sizeof(PayloadVerifier::poly_) &&
                alignof(crypto_onetimeauth_state) <= 16);
  DTRAIN_CHECK(header.size() <= kMaxHeaderBytes, "a {}-byte header, at most {}", header.size(),
               kMaxHeaderBytes);
  const std::optional<FrameMac> algorithm = algorithm_of(expected);
  PayloadVerifier v;
  std::copy(expected.begin(), expected.end(), v.expected_.begin());
  if (!enabled_ || !algorithm || (*algorithm == FrameMac::kAesGcm && !gcm_available_)) return v;
  if (*algorithm == FrameMac::kAesGcm) {
    if (!keys_->fast_gcm) return std::nullopt;
    v.kind_ = PayloadVerifier::Kind::kAesGcm;
    v.gcm_ = keys_->fast_gcm.get();
    std::copy(header.begin(), header.end(), v.header_.begin());
    v.header_bytes_ = header.size();
    return v;
  }
  v.kind_ = PayloadVerifier::Kind::kPoly1305;
  std::array<unsigned char, crypto_onetimeauth_KEYBYTES> one_time_key;
  crypto_stream_chacha20_ietf(one_time_key.data(), one_time_key.size(), uchars(expected),
                              keys_->chacha.data());
  auto* state = reinterpret_cast<crypto_onetimeauth_state*>(v.poly_.data());
  crypto_onetimeauth_init(state, one_time_key.data());
  crypto_onetimeauth_update(state, uchars(header), header.size());
  sodium_memzero(one_time_key.data(), one_time_key.size());
  return v;
}

void JobAuth::PayloadVerifier::update(std::span<const std::byte> piece) {
  if (kind_ == Kind::kAesGcm) {
    gcm_->absorb(gcm_stream_, piece);
  } else if (kind_ == Kind::kPoly1305) {
    crypto_onetimeauth_update(reinterpret_cast<crypto_onetimeauth_state*>(poly_.data()),
                              uchars(piece), piece.size());
  }
}

bool JobAuth::PayloadVerifier::finish() {
  std::array<unsigned char, kTagBytes> actual{};
  if (kind_ == Kind::kRefuse) return false;
  if (kind_ == Kind::kAesGcm) {
    gcm_->finish(gcm_stream_,
                 std::span<const unsigned char, kNonceBytes>(uchars(expected_), kNonceBytes),
                 std::span<const std::byte>(header_.data(), header_bytes_), actual);
  } else {
    crypto_onetimeauth_final(reinterpret_cast<crypto_onetimeauth_state*>(poly_.data()),
                             actual.data());
  }
  kind_ = Kind::kRefuse;  // one answer per frame
  return crypto_verify_16(actual.data(), uchars(std::span<const std::byte>(expected_).subspan(
                                             kOffTag, kTagBytes))) == 0;
}

JobAuth::PayloadVerifier::~PayloadVerifier() {
  sodium_memzero(&gcm_stream_, sizeof gcm_stream_);
  sodium_memzero(poly_.data(), poly_.size());
}

std::string JobAuth::refusal(std::span<const std::byte, kMacBytes> expected) const {
  const std::optional<FrameMac> algorithm = algorithm_of(expected);
  if (!algorithm) {
    return fmt::format("unknown MAC algorithm {} (a tampered frame or another wire version)",
                       std::to_integer<uint8_t>(expected[kOffAlgorithm]));
  }
  if (*algorithm == FrameMac::kAesGcm && !gcm_available_) {
    return "the frame is authenticated with AES-256-GCM, which this CPU cannot check (no AES-NI "
           "or PCLMUL): every process of a job must be able to check its peers' algorithm; "
           "give the job hosts with AES-NI only or none";
  }
  return "MAC mismatch (wrong job secret or tampered frame)";
}

}  // namespace dtrain::comm
