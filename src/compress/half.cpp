// fp16 / bf16: every value sent in 16 bits (PyTorch's fp16_compress_hook and
// bf16_compress_hook; IEEE 754-2008 binary16, and bfloat16 as in Kalamkar et
// al. 2019, "A study of bfloat16 for deep learning training").
//
// reduce(): the tensors of the call are concatenated into one buffer and
// summed by Group::allreduce_sum_16 (the group scales fp16 messages so that
// nothing overflows): 2 bytes per float from each rank (payload 2 n).
// encode() (docs/compression.md):
//   header (9) | fp16: f32 scale, n x u16 fp16(x / scale) | bf16: n x u16
// with scale = max|x| / 32768 (at least FLT_MIN; 1 for an all-zero tensor),
// so |x / scale| <= 32768 < 65504 never overflows. No error feedback: the
// rounding error (2^-11 relative for fp16, 2^-8 for bf16) is not kept.
#include "core/half.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "compress/compress_internal.h"

namespace dtrain::compress::detail {

namespace {

constexpr float kFp16ScaleDivisor = 32768.0f;

// Appends convert(v) of every value as u16, little-endian, in one write.
template <class Convert>
void write_halves(std::span<const float> values, ByteWriter& out, const Convert& convert) {
  std::vector<std::byte> bytes(2 * values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = convert(values[i]);
    bytes[2 * i] = static_cast<std::byte>(h & 0xff);
    bytes[2 * i + 1] = static_cast<std::byte>(h >> 8);
  }
  out.write_bytes(bytes);
}

class HalfCompressor final : public Compressor {
 public:
  HalfCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : Compressor(options, std::move(layouts)) {}

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t /*step*/) override {
    check_reduce(tensors, grads);
    size_t total = 0;
    for (const auto& g : grads) total += g.size();
    std::vector<float> buffer(total);
    size_t at = 0;
    for (const auto& g : grads) {
      std::copy(g.begin(), g.end(), buffer.begin() + static_cast<ptrdiff_t>(at));
      at += g.size();
    }
    group.allreduce_sum_16(buffer, method() == Method::kBf16);
    at = 0;
    for (const auto& g : grads) {
      std::copy_n(buffer.begin() + static_cast<ptrdiff_t>(at), g.size(), g.begin());
      at += g.size();
    }
    count_payload(2 * total);
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t /*step*/, int /*rank*/,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    write_header(out, method(), layout(tensor));
    if (method() == Method::kFp16) {
      float max_abs = 0.0f;
      for (const float v : grad) max_abs = std::max(max_abs, std::fabs(v));
      const float scale =
          max_abs > 0.0f ? std::max(max_abs / kFp16ScaleDivisor, std::numeric_limits<float>::min())
                         : 1.0f;
      out.write_f32(scale);
      write_halves(grad, out, [scale](float v) { return float_to_fp16(v / scale); });
    } else {
      write_halves(grad, out, [](float v) { return float_to_bf16(v); });
    }
    count_payload(out.size() - start);
  }
};

}  // namespace

std::unique_ptr<Compressor> make_half_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts) {
  return std::make_unique<HalfCompressor>(options, std::move(layouts));
}

void decode_half_body(ByteReader& reader, Method method, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end) {
  const size_t n = layout.numel();
  const bool fp16 = method == Method::kFp16;
  float scale = 1.0f;
  if (fp16) {
    const size_t at = reader.offset();
    scale = reader.read_f32("scale");
    if (!(std::isfinite(scale) && scale > 0.0f)) {
      throw_bad_field(reader, at, method, "scale",
                      fmt::format("{} is not a finite positive", scale));
    }
  }
  reader.need_elements(n, 2, "values");
  const size_t values_at = reader.offset();
  const std::span<const std::byte> bytes = reader.read_bytes(2 * n, "values");
  auto half = [&](size_t i) {
    return static_cast<uint16_t>(std::to_integer<uint16_t>(bytes[2 * i]) |
                                 (std::to_integer<uint16_t>(bytes[2 * i + 1]) << 8));
  };
  // All exponent bits set: an infinity or a NaN.
  const uint16_t exponent = fp16 ? 0x7c00 : 0x7f80;
  for (size_t i = 0; i < n; ++i) {
    if ((half(i) & exponent) == exponent) {
      throw DataError(
          fmt::format("{}: {} message, field 'values' at offset {}: value {} of {} is "
                      "not finite (bits 0x{:04x})",
                      reader.context(), to_string(method), values_at + 2 * i, i, n, half(i)));
    }
  }
  if (to_end) reader.expect_end("message");
  const float factor = weight * scale;
  if (fp16) {
    for (size_t i = 0; i < n; ++i) out[i] += factor * fp16_to_float(half(i));
  } else {
    for (size_t i = 0; i < n; ++i) out[i] += factor * bf16_to_float(half(i));
  }
}

}  // namespace dtrain::compress::detail
