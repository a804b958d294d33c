// mac_bench: GB/s of the per-frame authentication options on this CPU, one
// core, each over an 88-byte wire header and a payload of a given size (the
// shape of a dtrain frame, comm/wire/wire.h), with memcpy of the payload as
// the ceiling:
//
//   blake2b      keyed BLAKE2b-256 over header and payload (wire version 1)
//   poly1305     Poly1305 with a one-time key per frame: the first 32 bytes
//                of XChaCha20(key, nonce) for a fresh 24-byte nonce, then
//                crypto_onetimeauth over header and payload (wire version 2)
//   gcm-ad       AES-256-GCM, empty plaintext, the frame as additional data
//                (libsodium needs one contiguous AD: header+payload here)
//   gcm-enc      AES-256-GCM encrypting the payload, header as AD
//   gcm-frame    the wire's AES-256-GCM frame tag through libsodium: payload
//                as additional data, header as the message (auth.cpp before
//                GcmTagger)
//   gcm-vpclmul  the same tag through GcmTagger (comm/wire/gcm_tag.h,
//                AVX-512 VPCLMULQDQ GHASH, 32 blocks per step): what
//                JobAuth uses where the CPU has it; bit-identical tags
//   hmac-sodium  HMAC-SHA-256, libsodium (portable C, no SHA-NI)
//   hmac-openssl HMAC-SHA-256, OpenSSL (SHA-NI where the CPU has it); only
//                when built with OpenSSL
//   memcpy       copy of the payload
//
//   mac_bench [SAMPLES] [BYTES_PER_SAMPLE]
//
// For each option and frame size (64 B, 4 KiB, 64 KiB, 1 MiB, 16 MiB) it
// times SAMPLES samples of about BYTES_PER_SAMPLE bytes each and prints the
// median GB/s (payload bytes / time) and its ratio to memcpy's median of the
// same size, measured in the same run. Time is the thread's CPU time
// (CLOCK_THREAD_CPUTIME_ID), so that a loaded machine's waits for a core do
// not count: GB/s per CPU second of one core. One line per (option, size):
//   "<option> bytes=<b> gbs=<g> ratio_memcpy=<r> ratio_blake2b=<r>".
#include <sodium.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/wire/gcm_tag.h"

#ifdef DTRAIN_BENCH_OPENSSL
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif

namespace {

constexpr size_t kHeaderBytes = 88;

struct Buffers {
  std::vector<unsigned char> header = std::vector<unsigned char>(kHeaderBytes, 7);
  std::vector<unsigned char> payload;
  std::vector<unsigned char> frame;  // header + payload, for the one-AD options
  std::vector<unsigned char> out;    // memcpy target, GCM ciphertext
  unsigned char key[32] = {};
  uint64_t counter = 0;
};

// One frame's authentication; returns a byte of the tag so nothing is elided.
using Option = std::function<unsigned char(Buffers&)>;

unsigned char blake2b(Buffers& b) {
  crypto_generichash_state state;
  crypto_generichash_init(&state, b.key, sizeof b.key, 32);
  crypto_generichash_update(&state, b.header.data(), b.header.size());
  crypto_generichash_update(&state, b.payload.data(), b.payload.size());
  unsigned char tag[32];
  crypto_generichash_final(&state, tag, sizeof tag);
  return tag[0];
}

unsigned char poly1305(Buffers& b) {
  unsigned char nonce[crypto_stream_xchacha20_NONCEBYTES] = {};
  const uint64_t n = ++b.counter;
  std::memcpy(nonce, &n, sizeof n);
  unsigned char one_time_key[crypto_onetimeauth_KEYBYTES];
  crypto_stream_xchacha20(one_time_key, sizeof one_time_key, nonce, b.key);
  crypto_onetimeauth_state state;
  crypto_onetimeauth_init(&state, one_time_key);
  crypto_onetimeauth_update(&state, b.header.data(), b.header.size());
  crypto_onetimeauth_update(&state, b.payload.data(), b.payload.size());
  unsigned char tag[crypto_onetimeauth_BYTES];
  crypto_onetimeauth_final(&state, tag);
  return tag[0];
}

struct Gcm {
  alignas(16) crypto_aead_aes256gcm_state state;
};

// What the GCM options authenticate: the whole frame as additional data
// (gcm-ad), the payload encrypted (gcm-enc), or the wire's frame tag
// (gcm-frame, auth.cpp): the header as the 88-byte message (its ciphertext
// thrown away), the payload as the additional data.
enum class GcmShape { kAd, kEncrypt, kFrame };

Option gcm(GcmShape shape) {
  auto ctx = std::make_shared<Gcm>();
  return [ctx, shape](Buffers& b) -> unsigned char {
    if (b.counter == 0) crypto_aead_aes256gcm_beforenm(&ctx->state, b.key);
    unsigned char nonce[crypto_aead_aes256gcm_NPUBBYTES] = {};
    const uint64_t n = ++b.counter;
    std::memcpy(nonce, &n, sizeof n);
    unsigned char tag[crypto_aead_aes256gcm_ABYTES];
    unsigned long long tag_bytes = 0;
    unsigned char discarded[kHeaderBytes];
    if (shape == GcmShape::kEncrypt) {
      crypto_aead_aes256gcm_encrypt_detached_afternm(
          b.out.data(), tag, &tag_bytes, b.payload.data(), b.payload.size(), b.header.data(),
          b.header.size(), nullptr, nonce, &ctx->state);
    } else if (shape == GcmShape::kFrame) {
      crypto_aead_aes256gcm_encrypt_detached_afternm(discarded, tag, &tag_bytes, b.header.data(),
                                                     b.header.size(), b.payload.data(),
                                                     b.payload.size(), nullptr, nonce, &ctx->state);
    } else {
      crypto_aead_aes256gcm_encrypt_detached_afternm(b.out.data(), tag, &tag_bytes, nullptr, 0,
                                                     b.frame.data(), b.frame.size(), nullptr, nonce,
                                                     &ctx->state);
    }
    return tag[0];
  };
}

// The same tag through GcmTagger.
Option gcm_vpclmul() {
  auto tagger = std::make_shared<std::unique_ptr<dtrain::comm::GcmTagger>>();
  return [tagger](Buffers& b) -> unsigned char {
    if (b.counter == 0) {
      *tagger =
          std::make_unique<dtrain::comm::GcmTagger>(std::span<const unsigned char, 32>(b.key));
    }
    std::array<unsigned char, 12> nonce{};
    const uint64_t n = ++b.counter;
    std::memcpy(nonce.data(), &n, sizeof n);
    std::array<unsigned char, 16> tag{};
    (*tagger)->tag(nonce, std::as_bytes(std::span(b.header)), std::as_bytes(std::span(b.payload)),
                   tag);
    return tag[0];
  };
}

unsigned char hmac_sodium(Buffers& b) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, b.key, sizeof b.key);
  crypto_auth_hmacsha256_update(&state, b.header.data(), b.header.size());
  crypto_auth_hmacsha256_update(&state, b.payload.data(), b.payload.size());
  unsigned char tag[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_final(&state, tag);
  return tag[0];
}

#ifdef DTRAIN_BENCH_OPENSSL
unsigned char hmac_openssl(Buffers& b) {
  // One frame = header then payload; HMAC() takes one buffer, so the
  // contiguous frame is hashed (the same bytes).
  unsigned char tag[EVP_MAX_MD_SIZE];
  unsigned int tag_bytes = 0;
  HMAC(EVP_sha256(), b.key, sizeof b.key, b.frame.data(), b.frame.size(), tag, &tag_bytes);
  return tag[0];
}
#endif

unsigned char copy(Buffers& b) {
  std::memcpy(b.out.data(), b.payload.data(), b.payload.size());
  return b.out[b.out.size() / 2];
}

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Median GB/s of `option` over `samples` samples of about `sample_bytes`.
double measure(const Option& option, Buffers& b, int samples, size_t sample_bytes) {
  const size_t frames = std::max<size_t>(1, sample_bytes / b.payload.size());
  unsigned sink = 0;
  for (size_t i = 0; i < std::min<size_t>(frames, 4); ++i) sink += option(b);  // warm-up
  std::vector<double> gbs;
  for (int s = 0; s < samples; ++s) {
    const double start = thread_cpu_seconds();
    for (size_t i = 0; i < frames; ++i) sink += option(b);
    const double took = thread_cpu_seconds() - start;
    gbs.push_back(static_cast<double>(frames * b.payload.size()) / took / 1e9);
  }
  if (sink == 0xFFFFFFFFu) std::puts("");  // keeps `sink` alive
  return median(gbs);
}

}  // namespace

int main(int argc, char** argv) {
  if (sodium_init() < 0) return 1;
  const int samples = argc > 1 ? std::atoi(argv[1]) : 5;
  const size_t sample_bytes = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : (64u << 20);
  std::vector<std::pair<std::string, Option>> options = {
      {"memcpy", copy}, {"blake2b", blake2b}, {"poly1305", poly1305}, {"hmac-sodium", hmac_sodium}};
#ifdef DTRAIN_BENCH_OPENSSL
  options.emplace_back("hmac-openssl", hmac_openssl);
#endif
  if (crypto_aead_aes256gcm_is_available() != 0) {
    options.emplace_back("gcm-ad", gcm(GcmShape::kAd));
    options.emplace_back("gcm-enc", gcm(GcmShape::kEncrypt));
    options.emplace_back("gcm-frame", gcm(GcmShape::kFrame));
    if (dtrain::comm::GcmTagger::available()) options.emplace_back("gcm-vpclmul", gcm_vpclmul());
  } else {
    std::printf("# AES-256-GCM unavailable on this CPU (no AES-NI/PCLMUL)\n");
  }
  for (size_t bytes :
       {size_t{64}, size_t{4} << 10, size_t{64} << 10, size_t{1} << 20, size_t{16} << 20}) {
    Buffers b;
    b.payload.assign(bytes, 0x5a);
    b.out.assign(bytes, 0);
    b.frame.assign(kHeaderBytes + bytes, 0x5a);
    randombytes_buf(b.key, sizeof b.key);
    double ceiling = 0;
    double blake = 0;
    for (auto& [name, option] : options) {
      b.counter = 0;
      const double gbs = measure(option, b, samples, sample_bytes);
      if (name == "memcpy") ceiling = gbs;
      if (name == "blake2b") blake = gbs;
      // memcpy runs first, before BLAKE2b: its ratio to BLAKE2b is left out.
      std::printf("%-12s bytes=%zu gbs=%.3f ratio_memcpy=%.3f ratio_blake2b=%.2f\n", name.c_str(),
                  bytes, gbs, gbs / ceiling, blake > 0 ? gbs / blake : 0.0);
      std::fflush(stdout);
    }
  }
  return 0;
}
