// Internal to compress: what the method files share. The message header
// every encode() writes and every decoder reads, the bit packing of QSGD and
// sign, the seed mixing of the random draws, one factory per method family
// and one body decoder per method family (docs/compression.md has the
// layouts byte by byte).
//
// Decoders read from a ByteReader positioned after the header, validate the
// whole body before they write anything (DataError naming the reader's
// context and the field), then add weight * decoded to `out`.
// Thread safety: pure functions and values. Never blocks.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "compress/compressor.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::compress::detail {

// Header of every message: u8 method tag, u32 rows, u32 cols.
inline constexpr size_t kHeaderBytes = 9;
void write_header(ByteWriter& out, Method method, const TensorLayout& layout);

// QSGD's largest number of levels (17 bits of level + 1 sign bit per entry).
inline constexpr int kMaxLevels = 1 << 16;

// A 64-bit seed from several words (splitmix64's finaliser over each word in
// turn): mix_seed({seed, step, tensor}) draws apart from mix_seed({seed,
// step + 1, tensor}) and from mix_seed({seed, step, tensor + 1}).
uint64_t mix_seed(std::initializer_list<uint64_t> words);

// DataError "<context>: <method> message, field '<field>' at offset <at>:
// <problem>", `at` the field's first byte.
[[noreturn]] void throw_bad_field(const ByteReader& reader, size_t at, Method method,
                                  std::string_view field, const std::string& problem);
// The same for the first non-finite value of an array read from offset `at`.
void check_finite(const ByteReader& reader, size_t at, Method method, std::string_view field,
                  std::span<const float> values);

// Reads one message (header and body) of a tensor of `layout` and adds
// weight * its values to `out`; the reader is left after the message. With
// `to_end` the message must end the reader's bytes (checked before anything
// is added).
void decode_one(ByteReader& reader, const TensorLayout& layout, float weight, std::span<float> out,
                bool to_end);

// Body decoders (the header was read and matched `layout`); each reads and
// checks its whole body (and the end, with `to_end`) before it adds.
void decode_half_body(ByteReader& reader, Method method, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end);
void decode_topk_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end);
void decode_randomk_body(ByteReader& reader, const TensorLayout& layout, float weight,
                         std::span<float> out, bool to_end);
void decode_qsgd_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end);
void decode_sign_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end);
void decode_powersgd_body(ByteReader& reader, const TensorLayout& layout, float weight,
                          std::span<float> out, bool to_end);

// The allgather path of QSGD and sign: every rank's message (one message per
// tensor of `tensors`, in that order) is decoded and summed into `grads` in
// rank order, so every rank computes bit-identical sums. A peer's malformed
// message throws CommError naming the peer.
void sum_allgathered(Group& group, std::span<const std::byte> mine, Method method,
                     std::span<const TensorLayout> layouts,
                     std::span<const std::span<float>> grads);

// random-k's positions: k distinct indices below n, increasing, drawn from
// Rng(draw_seed) (Floyd's algorithm: k draws, a bitmap of n bits).
std::vector<uint32_t> draw_random_indices(uint64_t draw_seed, size_t n, size_t k);

// k = max(1, ceil(density * n)), at most n (0 for n == 0).
size_t kept_count(double density, size_t n);

// Packs unsigned fields of `bits` bits each, least significant bit first.
class BitPacker {
 public:
  explicit BitPacker(ByteWriter& out) : out_(out) {}
  void put(uint32_t value, unsigned bits) {
    acc_ |= static_cast<uint64_t>(value) << filled_;
    filled_ += bits;
    while (filled_ >= 8) {
      out_.write_u8(static_cast<uint8_t>(acc_));
      acc_ >>= 8;
      filled_ -= 8;
    }
  }
  // Writes the last partial byte (zero padded).
  void finish() {
    if (filled_ > 0) out_.write_u8(static_cast<uint8_t>(acc_));
    acc_ = 0;
    filled_ = 0;
  }

 private:
  ByteWriter& out_;  // the caller's writer, alive for the packer's scope
  uint64_t acc_ = 0;
  unsigned filled_ = 0;
};

// Reads what BitPacker wrote from `bytes` (the caller checked its length).
class BitUnpacker {
 public:
  explicit BitUnpacker(std::span<const std::byte> bytes) : bytes_(bytes) {}
  uint32_t get(unsigned bits) {
    while (filled_ < bits) {
      acc_ |= std::to_integer<uint64_t>(bytes_[next_++]) << filled_;
      filled_ += 8;
    }
    const auto value = static_cast<uint32_t>(acc_ & ((uint64_t{1} << bits) - 1));
    acc_ >>= bits;
    filled_ -= bits;
    return value;
  }

 private:
  std::span<const std::byte> bytes_;
  size_t next_ = 0;
  uint64_t acc_ = 0;
  unsigned filled_ = 0;
};

// -value when `negative`, else value, exactly (the sign bit flipped, no
// branch: signs of gradients are unpredictable).
inline float with_sign(float value, bool negative) {
  return std::bit_cast<float>(std::bit_cast<uint32_t>(value) ^
                              (static_cast<uint32_t>(negative) << 31));
}

// Bytes of n fields of `bits` bits.
inline size_t packed_bytes(size_t n, unsigned bits) { return (n * bits + 7) / 8; }

std::unique_ptr<Compressor> make_half_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts);
std::unique_ptr<Compressor> make_topk_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts);
std::unique_ptr<Compressor> make_randomk_compressor(const Options& options,
                                                    std::vector<TensorLayout> layouts);
std::unique_ptr<Compressor> make_qsgd_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts);
std::unique_ptr<Compressor> make_sign_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts);
std::unique_ptr<Compressor> make_powersgd_compressor(const Options& options,
                                                     std::vector<TensorLayout> layouts);

}  // namespace dtrain::compress::detail
