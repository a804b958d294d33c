// GcmTagger: the AES-256-GCM tag of a frame (comm/wire/auth.h), computed
// with AVX-512 carry-less multiplication (VPCLMULQDQ) where the CPU has it.
// Internal to comm/wire: JobAuth uses it in place of libsodium's
// crypto_aead_aes256gcm for its kAesGcm frames.
//
// What: exactly the tag libsodium's crypto_aead_aes256gcm_encrypt_detached
// returns for key K, 96-bit nonce N, message `header` (at most 256 bytes;
// its ciphertext is computed and thrown away) and additional data `payload`
// (NIST SP 800-38D: tag = E_K(N||1) xor GHASH_H(payload, E_K-CTR(header)),
// H = E_K(0)). Same algorithm, same wire bytes: a frame tagged here is
// checked by libsodium and vice versa (tests/comm/gcm_tag_test.cpp compares
// the two on random keys, nonces and sizes).
//
// Why: libsodium hashes the additional data 128 bits per PCLMULQDQ step, at
// ~5.9 GB/s on this project's CPUs, a third of the CPU of an authenticated
// allreduce over tcp (docs/collectives.md). Here GHASH takes 32 blocks (512
// bytes) per step, four per 512-bit VPCLMULQDQ, against H^32..H^1 with one
// reduction per step, the state's product apart from the blocks' so that
// steps overlap (then 16-block steps for the rest; the aggregated reduction of Gueron and Kounavis,
// "Intel Carry-Less Multiplication Instruction and its Usage for Computing
// the GCM Mode", 2010).
//
// Soundness is GCM's: one key per job (auth.cpp derives it), a nonce never
// reused under it (auth.h, "Nonces"). Nothing secret-dependent branches or
// indexes memory; the key schedule and H powers are wiped on destruction.
//
// Thread safety: tag() is const and reentrant. available() says whether the
// CPU can run it (AES-NI, PCLMULQDQ, AVX-512F/BW, VPCLMULQDQ); constructing
// one where it cannot is an InternalError. Never blocks, never allocates.
// absorb() and finish() are const too: the state is the caller's Stream.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace dtrain::comm {

class GcmTagger {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;
  static constexpr size_t kMaxHeaderBytes = 256;

  // Whether this CPU runs the fast path (checked once).
  static bool available();

  explicit GcmTagger(std::span<const unsigned char, kKeyBytes> key);
  ~GcmTagger();
  GcmTagger(const GcmTagger&) = delete;
  GcmTagger& operator=(const GcmTagger&) = delete;

  // The tag of message `header` and additional data `payload` under `nonce`.
  void tag(std::span<const unsigned char, kNonceBytes> nonce, std::span<const std::byte> header,
           std::span<const std::byte> payload, std::span<unsigned char, kTagBytes> out) const {
    tag(nonce, header, {}, payload, out);
  }
  // The same for the additional data head ‖ body, without joining them.
  void tag(std::span<const unsigned char, kNonceBytes> nonce, std::span<const std::byte> header,
           std::span<const std::byte> head, std::span<const std::byte> body,
           std::span<unsigned char, kTagBytes> out) const;

  // The same tag with the additional data handed in pieces as they arrive
  // (a receiver that checks and uses a payload block by block): absorb()
  // each piece in order (any sizes), then finish(). The tag equals tag()'s
  // of the pieces joined. A Stream belongs to one frame and one thread;
  // finish() wipes it.
  struct Stream {
    alignas(16) std::array<unsigned char, 16> state{};  // GHASH so far, byte-reflected
    std::array<unsigned char, 16> partial{};            // a block's first bytes
    size_t partial_bytes = 0;
    uint64_t payload_bytes = 0;
  };
  void absorb(Stream& stream, std::span<const std::byte> piece) const;
  void finish(Stream& stream, std::span<const unsigned char, kNonceBytes> nonce,
              std::span<const std::byte> header, std::span<unsigned char, kTagBytes> out) const;

 private:
  static constexpr size_t kRounds = 14;  // AES-256
  static constexpr size_t kPowers = 32;  // H^1..H^32
  // The expanded AES-256 key (15 round keys).
  alignas(64) std::array<std::array<unsigned char, 16>, kRounds + 1> round_keys_{};
  // powers_[i] = H^(32-i), byte-reflected (the multiplier of the i-th block
  // of a 32-block step; the last 16 those of a 16-block step), so that 4
  // consecutive entries are one 512-bit load.
  alignas(64) std::array<std::array<unsigned char, 16>, kPowers> powers_{};
};

}  // namespace dtrain::comm
