#include "core/crc32c.h"

#include <array>
#include <cstring>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace dtrain {

namespace {
constexpr uint32_t kPolynomial = 0x82f63b78u;  // reflected Castagnoli

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPolynomial : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kTable = make_table();

#if defined(__SSE4_2__)
// Three streams of the crc32 instruction (Intel, "Fast CRC Computation for
// iSCSI Polynomial Using CRC32 Instruction", 2011; the combination step as in
// Mark Adler's crc32c.c). The instruction has a latency of 3 cycles and a
// throughput of 1, so one dependent chain runs at a third of its speed. A
// block of 3 * kLen bytes runs as three independent chains A, B, C (B and C
// from a zero register), then joins them: the register is linear over GF(2),
// so reg(r, A B C) = shift(shift(reg(r, A), kLen) ^ reg(0, B), kLen) ^
// reg(0, C), shift(x, n) being x followed by n zero bytes, done by a table
// per byte of x.

// Register `crc` followed by `bytes` zero bytes, one bit at a time (builds the
// tables once).
uint32_t shift_slow(uint32_t crc, size_t bytes) {
  for (size_t i = 0; i < bytes * 8; ++i) crc = (crc & 1u) ? (crc >> 1) ^ kPolynomial : crc >> 1;
  return crc;
}

struct ShiftTable {
  std::array<std::array<uint32_t, 256>, 4> byte{};  // byte k of the register, shifted
  explicit ShiftTable(size_t bytes) {
    std::array<uint32_t, 32> bit{};
    for (int b = 0; b < 32; ++b) bit[static_cast<size_t>(b)] = shift_slow(uint32_t{1} << b, bytes);
    for (size_t k = 0; k < 4; ++k) {
      for (uint32_t v = 0; v < 256; ++v) {
        uint32_t out = 0;
        for (size_t b = 0; b < 8; ++b) {
          if ((v >> b) & 1u) out ^= bit[k * 8 + b];
        }
        byte[k][v] = out;
      }
    }
  }
  uint32_t shift(uint32_t crc) const {
    return byte[0][crc & 0xffu] ^ byte[1][(crc >> 8) & 0xffu] ^ byte[2][(crc >> 16) & 0xffu] ^
           byte[3][crc >> 24];
  }
};

constexpr size_t kLong = 8192;  // bytes per chain of a long block
constexpr size_t kShort = 256;  // bytes per chain of a short block

// Consumes as many blocks of 3 * len bytes as `size` holds.
uint64_t crc_blocks(uint64_t c, const unsigned char*& p, size_t& size, size_t len,
                    const ShiftTable& table) {
  while (size >= 3 * len) {
    uint64_t c1 = 0;
    uint64_t c2 = 0;
    const unsigned char* end = p + len;
    while (p < end) {
      uint64_t a, b, d;
      std::memcpy(&a, p, 8);
      std::memcpy(&b, p + len, 8);
      std::memcpy(&d, p + 2 * len, 8);
      c = _mm_crc32_u64(c, a);
      c1 = _mm_crc32_u64(c1, b);
      c2 = _mm_crc32_u64(c2, d);
      p += 8;
    }
    c = table.shift(static_cast<uint32_t>(c)) ^ c1;
    c = table.shift(static_cast<uint32_t>(c)) ^ c2;
    p += 2 * len;
    size -= 3 * len;
  }
  return c;
}
#endif

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
#if defined(__SSE4_2__)
  uint64_t c64 = c;
  if (size >= 3 * kShort) {
    static const ShiftTable long_shift(kLong);  // immutable once built (thread-safe init)
    static const ShiftTable short_shift(kShort);
    c64 = crc_blocks(c64, p, size, kLong, long_shift);
    c64 = crc_blocks(c64, p, size, kShort, short_shift);
  }
  while (size >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c64 = _mm_crc32_u64(c64, word);
    p += 8;
    size -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (size > 0) {
    c = _mm_crc32_u8(c, *p++);
    --size;
  }
#else
  while (size > 0) {
    c = kTable[(c ^ *p++) & 0xffu] ^ (c >> 8);
    --size;
  }
#endif
  return ~c;
}

}  // namespace dtrain
