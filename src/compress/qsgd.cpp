// QSGD (Alistarh, Grubic, Li, Tomioka & Vojnovic 2017, "QSGD:
// communication-efficient SGD via gradient quantization and encoding"), with
// s = Options::levels levels and plain bit packing instead of Elias coding.
//
// Per tensor g of n floats: the norm ||g||_2 (f32, summed in double); each
// entry becomes a level l_i in [0, s] by stochastic rounding of
// x_i = s |g_i| / ||g|| (l_i = floor(x_i) + 1 with probability
// x_i - floor(x_i)), and a sign bit. Decoded: ||g|| sign_i l_i / s, so that
// E[decoded] = g (unbiased; no error feedback). The rounding draws come from
// Rng(mix_seed(seed, step, tensor, rank)): one uniform per entry.
//
// Message (docs/compression.md):
//   header (9) | u32 s | f32 norm | ceil(n b / 8) bytes of n fields of
//   b = bit_width(s) + 1 bits, least significant bit first: the level in the
//   low b - 1 bits, the sign (1 = negative) in the top bit
// e.g. s = 16: 6 bits per entry, 5.3x smaller than f32.
// reduce(): each rank's messages of the call's tensors, concatenated, go to
// Group::allgather_bytes; every rank decodes all of them and sums in rank
// order (bit-identical everywhere). Payload: this rank's bytes.
#include <bit>
#include <cmath>

#include "compress/compress_internal.h"
#include "core/rng.h"

namespace dtrain::compress::detail {

namespace {

unsigned bits_per_entry(uint32_t levels) {
  return static_cast<unsigned>(std::bit_width(levels)) + 1;
}

class QsgdCompressor final : public Compressor {
 public:
  QsgdCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : Compressor(options, std::move(layouts)) {}

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t step) override {
    check_reduce(tensors, grads);
    ByteWriter mine;
    std::vector<TensorLayout> layouts;
    for (size_t i = 0; i < tensors.size(); ++i) {
      write_message(tensors[i], grads[i], step, group.rank(), mine);
      layouts.push_back(layout(tensors[i]));
    }
    count_payload(mine.size());
    sum_allgathered(group, mine.bytes(), method(), layouts, grads);
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t step, int rank,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    write_message(tensor, grad, step, rank, out);
    count_payload(out.size() - start);
  }

 private:
  void write_message(size_t tensor, std::span<const float> grad, int64_t step, int rank,
                     ByteWriter& out) const {
    const auto levels = static_cast<uint32_t>(options_.levels);
    double squares = 0.0;
    for (const float v : grad) squares += static_cast<double>(v) * v;
    const auto norm = static_cast<float>(std::sqrt(squares));
    write_header(out, method(), layout(tensor));
    out.write_u32(levels);
    out.write_f32(norm);
    const unsigned bits = bits_per_entry(levels);
    Rng rng(mix_seed({options_.seed, static_cast<uint64_t>(step), tensor,
                      static_cast<uint64_t>(static_cast<int64_t>(rank))}));
    const double to_levels = norm > 0.0f ? levels / static_cast<double>(norm) : 0.0;
    BitPacker packer(out);
    for (const float v : grad) {
      // x in [0, s] (clamped: the rounded norm may be slightly below |v|).
      double x = std::fabs(static_cast<double>(v)) * to_levels;
      if (!(x >= 0.0)) x = 0.0;
      if (x > levels) x = levels;
      auto level = static_cast<uint32_t>(x);
      level += static_cast<uint32_t>(static_cast<double>(rng.uniform()) < x - level);
      packer.put(level | (static_cast<uint32_t>(v < 0.0f) << (bits - 1)), bits);
    }
    packer.finish();
  }
};

}  // namespace

std::unique_ptr<Compressor> make_qsgd_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts) {
  return std::make_unique<QsgdCompressor>(options, std::move(layouts));
}

void decode_qsgd_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end) {
  const size_t n = layout.numel();
  const size_t levels_at = reader.offset();
  const uint32_t levels = reader.read_u32("levels");
  if (levels < 1 || levels > static_cast<uint32_t>(kMaxLevels)) {
    throw_bad_field(reader, levels_at, Method::kQsgd, "levels",
                    fmt::format("{} is not in [1, {}]", levels, kMaxLevels));
  }
  const size_t norm_at = reader.offset();
  const float norm = reader.read_f32("norm");
  if (!(std::isfinite(norm) && norm >= 0.0f)) {
    throw_bad_field(reader, norm_at, Method::kQsgd, "norm",
                    fmt::format("{} is not finite and >= 0", norm));
  }
  const unsigned bits = bits_per_entry(levels);
  const uint32_t level_mask = (uint32_t{1} << (bits - 1)) - 1;
  const uint32_t sign_bit = uint32_t{1} << (bits - 1);
  const size_t fields_at = reader.offset();
  const std::span<const std::byte> packed = reader.read_bytes(packed_bytes(n, bits), "levels");
  {
    BitUnpacker check(packed);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t level = check.get(bits) & level_mask;
      if (level > levels) {
        throw DataError(
            fmt::format("{}: qsgd message, field 'levels' at offset {}: entry {} of {} "
                        "has level {}, above s = {}",
                        reader.context(), fields_at, i, n, level, levels));
      }
    }
  }
  if (to_end) reader.expect_end("message");
  // decoded(l) = ||g|| l / s, one product per level.
  std::vector<float> value(levels + 1);
  for (uint32_t l = 0; l <= levels; ++l) {
    value[l] = weight * static_cast<float>(static_cast<double>(norm) * l / levels);
  }
  BitUnpacker unpacker(packed);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t field = unpacker.get(bits);
    out[i] += with_sign(value[field & level_mask], (field & sign_bit) != 0);
  }
}

}  // namespace dtrain::compress::detail
