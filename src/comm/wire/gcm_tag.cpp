#include "comm/wire/gcm_tag.h"

#include <immintrin.h>
#include <sodium.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

// GCC 12's AVX-512 headers build "undefined" vectors from themselves, which
// -Wuninitialized reports at every inlined use (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Every function that uses the instructions carries this target; only
// GcmTagger's members call them, after available() said yes.
#define DTRAIN_GCM_TARGET \
  __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2,avx512f,avx512bw,vpclmulqdq")))

namespace dtrain::comm {

namespace {

DTRAIN_GCM_TARGET inline __m128i reflect_bytes(__m128i x) {
  return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

// The 256-bit carry-less product lo ^ mid<<64 ^ hi<<128 of two byte-reflected
// field elements, shifted left by one bit and reduced modulo the GCM
// polynomial: their product in GF(2^128), byte-reflected (Gueron and
// Kounavis, algorithm 5). Linear in (lo, mid, hi), so sums of products are
// reduced once.
DTRAIN_GCM_TARGET inline __m128i reduce(__m128i lo, __m128i mid, __m128i hi) {
  __m128i low = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
  __m128i high = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
  // The 256-bit value high:low shifted left by one bit.
  __m128i carry_low = _mm_srli_epi32(low, 31);
  __m128i carry_high = _mm_srli_epi32(high, 31);
  low = _mm_slli_epi32(low, 1);
  high = _mm_slli_epi32(high, 1);
  const __m128i across = _mm_srli_si128(carry_low, 12);
  carry_high = _mm_slli_si128(carry_high, 4);
  carry_low = _mm_slli_si128(carry_low, 4);
  low = _mm_or_si128(low, carry_low);
  high = _mm_or_si128(_mm_or_si128(high, carry_high), across);
  // Reduction modulo x^128 + x^7 + x^2 + x + 1 (reflected).
  __m128i a = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(low, 31), _mm_slli_epi32(low, 30)),
                            _mm_slli_epi32(low, 25));
  const __m128i a_high = _mm_srli_si128(a, 4);
  a = _mm_slli_si128(a, 12);
  low = _mm_xor_si128(low, a);
  __m128i b = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(low, 1), _mm_srli_epi32(low, 2)),
                            _mm_srli_epi32(low, 7));
  b = _mm_xor_si128(b, a_high);
  low = _mm_xor_si128(low, b);
  return _mm_xor_si128(high, low);
}

DTRAIN_GCM_TARGET inline __m128i gf_multiply(__m128i a, __m128i b) {
  const __m128i mid =
      _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
  return reduce(_mm_clmulepi64_si128(a, b, 0x00), mid, _mm_clmulepi64_si128(a, b, 0x11));
}

DTRAIN_GCM_TARGET inline __m128i fold(__m512i v) {
  const __m256i half = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  return _mm_xor_si128(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

// AES-256 key expansion (Intel's AES-NI white paper, section 5.2).
DTRAIN_GCM_TARGET inline __m128i shift_xor(__m128i t) {
  __m128i s = _mm_slli_si128(t, 4);
  t = _mm_xor_si128(t, s);
  s = _mm_slli_si128(s, 4);
  t = _mm_xor_si128(t, s);
  s = _mm_slli_si128(s, 4);
  return _mm_xor_si128(t, s);
}

template <int kRcon>
DTRAIN_GCM_TARGET inline void expand_pair(__m128i& even, __m128i& odd, __m128i* out) {
  even = _mm_xor_si128(shift_xor(even),
                       _mm_shuffle_epi32(_mm_aeskeygenassist_si128(odd, kRcon), 0xff));
  out[0] = even;
  odd = _mm_xor_si128(shift_xor(odd), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(even, 0), 0xaa));
  out[1] = odd;
}

DTRAIN_GCM_TARGET void expand_key(const unsigned char* key, __m128i* rk) {
  __m128i even = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  __m128i odd = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16));
  rk[0] = even;
  rk[1] = odd;
  expand_pair<0x01>(even, odd, rk + 2);
  expand_pair<0x02>(even, odd, rk + 4);
  expand_pair<0x04>(even, odd, rk + 6);
  expand_pair<0x08>(even, odd, rk + 8);
  expand_pair<0x10>(even, odd, rk + 10);
  expand_pair<0x20>(even, odd, rk + 12);
  rk[14] =
      _mm_xor_si128(shift_xor(even), _mm_shuffle_epi32(_mm_aeskeygenassist_si128(odd, 0x40), 0xff));
}

DTRAIN_GCM_TARGET inline __m128i encrypt_block(const __m128i* rk, __m128i block) {
  block = _mm_xor_si128(block, rk[0]);
  for (int r = 1; r < 14; ++r) block = _mm_aesenc_si128(block, rk[r]);
  return _mm_aesenclast_si128(block, rk[14]);
}

// The counter block nonce || counter (32-bit big-endian).
DTRAIN_GCM_TARGET inline __m128i counter_block(const unsigned char* nonce, uint32_t counter) {
  alignas(16) unsigned char block[16];
  std::memcpy(block, nonce, 12);
  block[12] = static_cast<unsigned char>(counter >> 24);
  block[13] = static_cast<unsigned char>(counter >> 16);
  block[14] = static_cast<unsigned char>(counter >> 8);
  block[15] = static_cast<unsigned char>(counter);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(block));
}

// One GHASH step of 16 blocks (256 bytes at p, any alignment) on state x
// (byte-reflected): (x ^ B1)H^16 ^ B2 H^15 ^ ... ^ B16 H, one reduction.
// powers: H^16..H^1 byte-reflected, 64-byte aligned.
DTRAIN_GCM_TARGET inline __m128i step(__m128i x, const unsigned char* p,
                                      const unsigned char* powers) {
  const __m512i mask =
      _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i h0 = _mm512_load_si512(powers);
  const __m512i h1 = _mm512_load_si512(powers + 64);
  const __m512i h2 = _mm512_load_si512(powers + 128);
  const __m512i h3 = _mm512_load_si512(powers + 192);
  __m512i d0 = _mm512_shuffle_epi8(_mm512_loadu_si512(p), mask);
  const __m512i d1 = _mm512_shuffle_epi8(_mm512_loadu_si512(p + 64), mask);
  const __m512i d2 = _mm512_shuffle_epi8(_mm512_loadu_si512(p + 128), mask);
  const __m512i d3 = _mm512_shuffle_epi8(_mm512_loadu_si512(p + 192), mask);
  d0 = _mm512_xor_si512(d0, _mm512_inserti32x4(_mm512_setzero_si512(), x, 0));
  // 0x96: a ^ b ^ c.
  const __m512i lo = _mm512_ternarylogic_epi64(
      _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(d0, h0, 0x00),
                                _mm512_clmulepi64_epi128(d1, h1, 0x00),
                                _mm512_clmulepi64_epi128(d2, h2, 0x00), 0x96),
      _mm512_clmulepi64_epi128(d3, h3, 0x00), _mm512_setzero_si512(), 0x96);
  const __m512i hi = _mm512_ternarylogic_epi64(
      _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(d0, h0, 0x11),
                                _mm512_clmulepi64_epi128(d1, h1, 0x11),
                                _mm512_clmulepi64_epi128(d2, h2, 0x11), 0x96),
      _mm512_clmulepi64_epi128(d3, h3, 0x11), _mm512_setzero_si512(), 0x96);
  __m512i mid = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(d0, h0, 0x01),
                                          _mm512_clmulepi64_epi128(d0, h0, 0x10),
                                          _mm512_clmulepi64_epi128(d1, h1, 0x01), 0x96);
  mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(d1, h1, 0x10),
                                  _mm512_clmulepi64_epi128(d2, h2, 0x01), 0x96);
  mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(d2, h2, 0x10),
                                  _mm512_clmulepi64_epi128(d3, h3, 0x01), 0x96);
  mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128(d3, h3, 0x10));
  return reduce(fold(lo), fold(mid), fold(hi));
}

// Two steps at once: 32 blocks (512 bytes at p) on state x, one reduction:
// (x ^ B1)H^32 ^ B2 H^31 ^ ... ^ B32 H, with x H^32 multiplied apart from
// the blocks, so that only one 128-bit product and the reduction wait for
// the previous state (the blocks' products are computed ahead, out of
// order): the loop runs at the multiplier's throughput instead of the
// latency of one whole step per 256 bytes. powers32: H^32..H^1.
DTRAIN_GCM_TARGET inline __m128i double_step(__m128i x, const unsigned char* p,
                                             const unsigned char* powers32) {
  const __m512i mask =
      _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i lo = _mm512_setzero_si512();
  __m512i mid = _mm512_setzero_si512();
  __m512i hi = _mm512_setzero_si512();
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {
    const __m512i h = _mm512_load_si512(powers32 + 64 * j);
    const __m512i d = _mm512_shuffle_epi8(_mm512_loadu_si512(p + 64 * j), mask);
    lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(d, h, 0x00));
    hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(d, h, 0x11));
    // 0x96: a ^ b ^ c.
    mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(d, h, 0x01),
                                    _mm512_clmulepi64_epi128(d, h, 0x10), 0x96);
  }
  const __m128i h32 = _mm_load_si128(reinterpret_cast<const __m128i*>(powers32));
  const __m128i x_mid =
      _mm_xor_si128(_mm_clmulepi64_si128(x, h32, 0x01), _mm_clmulepi64_si128(x, h32, 0x10));
  return reduce(_mm_xor_si128(fold(lo), _mm_clmulepi64_si128(x, h32, 0x00)),
                _mm_xor_si128(fold(mid), x_mid),
                _mm_xor_si128(fold(hi), _mm_clmulepi64_si128(x, h32, 0x11)));
}

// GHASH state x absorbing `n` bytes at p, the last block zero-padded.
// powers: H^32..H^1 (GcmTagger::powers_). 512 bytes at a time, then 256; a
// tail of k < 16 blocks goes through one more step, placed at the end of a
// zeroed 256-byte step (so it meets H^k..H^1) with x folded into its first
// block: leading zero blocks add nothing.
DTRAIN_GCM_TARGET __m128i absorb(__m128i x, const unsigned char* p, size_t n,
                                 const unsigned char* powers32) {
  for (; n >= 512; p += 512, n -= 512) x = double_step(x, p, powers32);
  const unsigned char* powers = powers32 + 16 * 16;  // H^16..H^1
  for (; n >= 256; p += 256, n -= 256) x = step(x, p, powers);
  if (n == 0) return x;
  alignas(64) unsigned char last[256] = {};
  const size_t first = 256 - 16 * ((n + 15) / 16);
  std::memcpy(last + first, p, n);
  auto* slot = reinterpret_cast<__m128i*>(last + first);
  _mm_store_si128(slot, _mm_xor_si128(_mm_load_si128(slot), reflect_bytes(x)));
  x = step(_mm_setzero_si128(), last, powers);
  sodium_memzero(last, sizeof last);
  return x;
}

// absorb() of head ‖ body: a block that straddles the two is joined in a
// 16-byte buffer.
DTRAIN_GCM_TARGET __m128i absorb_parts(__m128i x, const unsigned char* head, size_t head_bytes,
                                       const unsigned char* body, size_t body_bytes,
                                       const unsigned char* powers) {
  const size_t whole = head_bytes - head_bytes % 16;
  x = absorb(x, head, whole, powers);
  if (const size_t rest = head_bytes - whole; rest > 0) {
    alignas(16) unsigned char block[16] = {};
    const size_t take = std::min(16 - rest, body_bytes);
    std::memcpy(block, head + whole, rest);
    if (take > 0) std::memcpy(block + rest, body, take);
    x = absorb(x, block, rest + take, powers);
    body += take;
    body_bytes -= take;
  }
  return absorb(x, body, body_bytes, powers);
}

DTRAIN_GCM_TARGET void set_up(const unsigned char* key, unsigned char* round_keys,
                              unsigned char* powers) {
  auto* rk = reinterpret_cast<__m128i*>(round_keys);
  expand_key(key, rk);
  const __m128i h = reflect_bytes(encrypt_block(rk, _mm_setzero_si128()));
  __m128i power = h;
  for (int i = 31; i >= 0; --i) {  // powers[31] = H^1 ... powers[0] = H^32
    _mm_store_si128(reinterpret_cast<__m128i*>(powers + 16 * i), power);
    power = gf_multiply(power, h);
  }
}

// The tag from the GHASH state x after the additional data (payload_bytes
// of it): GHASH goes on over the header's ciphertext zero-padded, then the
// lengths in bits (64-bit big-endian), and is masked with E_K(J0).
DTRAIN_GCM_TARGET void finish_tag(const unsigned char* round_keys, const unsigned char* powers,
                                  const unsigned char* nonce, const unsigned char* header,
                                  size_t header_bytes, __m128i x, uint64_t payload_bytes,
                                  unsigned char* out) {
  // tag() checked it; said again for the compiler's bounds analysis.
  if (header_bytes > GcmTagger::kMaxHeaderBytes) __builtin_unreachable();
  const auto* rk = reinterpret_cast<const __m128i*>(round_keys);
  // The key stream: E_K(J0) for the tag, then counters 2.. for the header,
  // the AES rounds of all blocks interleaved.
  constexpr size_t kMaxBlocks = GcmTagger::kMaxHeaderBytes / 16;
  const size_t blocks = (header_bytes + 15) / 16;
  __m128i stream[kMaxBlocks + 1];
  for (size_t i = 0; i <= blocks; ++i) {
    stream[i] =
        _mm_xor_si128(counter_block(nonce, i == 0 ? 1 : static_cast<uint32_t>(i + 1)), rk[0]);
  }
  for (int r = 1; r < 14; ++r) {
    for (size_t i = 0; i <= blocks; ++i) stream[i] = _mm_aesenc_si128(stream[i], rk[r]);
  }
  for (size_t i = 0; i <= blocks; ++i) stream[i] = _mm_aesenclast_si128(stream[i], rk[14]);
  alignas(16) unsigned char tail[GcmTagger::kMaxHeaderBytes + 16] = {};
  if (header_bytes > 0) std::memcpy(tail, header, header_bytes);
  for (size_t i = 0; i < blocks; ++i) {
    auto* block = reinterpret_cast<__m128i*>(tail + 16 * i);
    _mm_store_si128(block, _mm_xor_si128(_mm_load_si128(block), stream[i + 1]));
  }
  std::memset(tail + header_bytes, 0, 16 * blocks - header_bytes);  // the key stream past it
  const uint64_t bits[2] = {payload_bytes * 8, static_cast<uint64_t>(header_bytes) * 8};
  for (int half = 0; half < 2; ++half) {
    for (int i = 0; i < 8; ++i) {
      tail[16 * blocks + 8 * half + i] = static_cast<unsigned char>(bits[half] >> (56 - 8 * i));
    }
  }
  x = absorb(x, tail, 16 * blocks + 16, powers);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_xor_si128(reflect_bytes(x), stream[0]));
  sodium_memzero(tail, sizeof tail);
  sodium_memzero(stream, sizeof stream);
}

DTRAIN_GCM_TARGET void compute_tag(const unsigned char* round_keys, const unsigned char* powers,
                                   const unsigned char* nonce, const unsigned char* header,
                                   size_t header_bytes, const unsigned char* head,
                                   size_t head_bytes, const unsigned char* body, size_t body_bytes,
                                   unsigned char* out) {
  // GHASH over the additional data (the payload), then finish_tag.
  const __m128i x = absorb_parts(_mm_setzero_si128(), head, head_bytes, body, body_bytes, powers);
  finish_tag(round_keys, powers, nonce, header, header_bytes, x, head_bytes + body_bytes, out);
}

// GcmTagger::absorb: whole blocks go straight into the state, a block that
// straddles two pieces waits in `partial`.
DTRAIN_GCM_TARGET void stream_absorb(GcmTagger::Stream& s, const unsigned char* p, size_t n,
                                     const unsigned char* powers) {
  s.payload_bytes += n;
  __m128i x = _mm_load_si128(reinterpret_cast<const __m128i*>(s.state.data()));
  if (s.partial_bytes > 0) {
    const size_t take = std::min(16 - s.partial_bytes, n);
    std::memcpy(s.partial.data() + s.partial_bytes, p, take);
    s.partial_bytes += take;
    p += take;
    n -= take;
    if (s.partial_bytes < 16) return;  // n is 0: the block waits for more
    x = absorb(x, s.partial.data(), 16, powers);
    s.partial_bytes = 0;
  }
  const size_t whole = n - n % 16;
  x = absorb(x, p, whole, powers);
  if (n > whole) std::memcpy(s.partial.data(), p + whole, n - whole);
  s.partial_bytes = n - whole;
  _mm_store_si128(reinterpret_cast<__m128i*>(s.state.data()), x);
}

DTRAIN_GCM_TARGET void stream_finish(GcmTagger::Stream& s, const unsigned char* round_keys,
                                     const unsigned char* powers, const unsigned char* nonce,
                                     const unsigned char* header, size_t header_bytes,
                                     unsigned char* out) {
  __m128i x = _mm_load_si128(reinterpret_cast<const __m128i*>(s.state.data()));
  x = absorb(x, s.partial.data(), s.partial_bytes, powers);  // zero-padded
  finish_tag(round_keys, powers, nonce, header, header_bytes, x, s.payload_bytes, out);
  sodium_memzero(&s, sizeof s);
}

}  // namespace

bool GcmTagger::available() {
  // __builtin_cpu_init first: the answer must hold even when first asked
  // from a static constructor, before libgcc has read the CPU's features.
  static const bool yes = (__builtin_cpu_init(), true) && __builtin_cpu_supports("aes") &&
                          __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("vpclmulqdq");
  return yes;
}

GcmTagger::GcmTagger(std::span<const unsigned char, kKeyBytes> key) {
  DTRAIN_CHECK(available(), "GcmTagger on a CPU without AES-NI and AVX-512 VPCLMULQDQ");
  set_up(key.data(), round_keys_.front().data(), powers_.front().data());
}

GcmTagger::~GcmTagger() {
  sodium_memzero(round_keys_.data(), sizeof round_keys_);
  sodium_memzero(powers_.data(), sizeof powers_);
}

void GcmTagger::tag(std::span<const unsigned char, kNonceBytes> nonce,
                    std::span<const std::byte> header, std::span<const std::byte> head,
                    std::span<const std::byte> body,
                    std::span<unsigned char, kTagBytes> out) const {
  DTRAIN_CHECK(header.size() <= kMaxHeaderBytes, "a {}-byte header, at most {}", header.size(),
               kMaxHeaderBytes);
  compute_tag(round_keys_.front().data(), powers_.front().data(), nonce.data(),
              reinterpret_cast<const unsigned char*>(header.data()), header.size(),
              reinterpret_cast<const unsigned char*>(head.data()), head.size(),
              reinterpret_cast<const unsigned char*>(body.data()), body.size(), out.data());
}

}  // namespace dtrain::comm

namespace dtrain::comm {

void GcmTagger::absorb(Stream& stream, std::span<const std::byte> piece) const {
  if (piece.empty()) return;
  stream_absorb(stream, reinterpret_cast<const unsigned char*>(piece.data()), piece.size(),
                powers_.front().data());
}

void GcmTagger::finish(Stream& stream, std::span<const unsigned char, kNonceBytes> nonce,
                       std::span<const std::byte> header,
                       std::span<unsigned char, kTagBytes> out) const {
  DTRAIN_CHECK(header.size() <= kMaxHeaderBytes, "a {}-byte header, at most {}", header.size(),
               kMaxHeaderBytes);
  stream_finish(stream, round_keys_.front().data(), powers_.front().data(), nonce.data(),
                reinterpret_cast<const unsigned char*>(header.data()), header.size(), out.data());
}

}  // namespace dtrain::comm
