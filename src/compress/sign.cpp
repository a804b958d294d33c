// EF-signSGD (Karimireddy, Rebjock, Stich & Jaggi 2019, "Error feedback
// fixes SignSGD and other gradient compression schemes"), the scaled sign
// compressor C(v) = (||v||_1 / n) sign(v).
//
// Per tensor of n floats: v = g + e (e = 0 without error feedback); the
// scale ||v||_1 / n (f32, summed in double; 0 for n = 0) and one bit per
// entry. Decoded: scale * sign(v_i), where 0 counts as positive. Afterwards
// e = v - decoded.
// Message (docs/compression.md):
//   header (9) | f32 scale | ceil(n / 8) bytes, bit i (least significant
//   first) set when v_i < 0
// 32x smaller than f32. reduce(): as QSGD's, an allgather of each rank's
// messages, decoded and summed in rank order; payload this rank's bytes.
#include <cmath>

#include "compress/compress_internal.h"

namespace dtrain::compress::detail {

namespace {

class SignCompressor final : public Compressor {
 public:
  SignCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : Compressor(options, std::move(layouts)) {}

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t /*step*/) override {
    check_reduce(tensors, grads);
    ByteWriter mine;
    std::vector<TensorLayout> layouts;
    for (size_t i = 0; i < tensors.size(); ++i) {
      write_message(tensors[i], grads[i], mine);
      layouts.push_back(layout(tensors[i]));
    }
    count_payload(mine.size());
    sum_allgathered(group, mine.bytes(), method(), layouts, grads);
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t /*step*/, int /*rank*/,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    write_message(tensor, grad, out);
    count_payload(out.size() - start);
  }

 private:
  void write_message(size_t tensor, std::span<const float> grad, ByteWriter& out) {
    const size_t n = grad.size();
    std::vector<float>& e = residual(tensor);
    std::span<const float> v = grad;
    if (!e.empty()) {
      for (size_t i = 0; i < n; ++i) e[i] += grad[i];
      v = e;
    }
    double l1 = 0.0;
    for (const float x : v) l1 += std::fabs(static_cast<double>(x));
    const float scale = n == 0 ? 0.0f : static_cast<float>(l1 / static_cast<double>(n));
    write_header(out, method(), layout(tensor));
    out.write_f32(scale);
    std::vector<std::byte> signs(packed_bytes(n, 1), std::byte{0});
    for (size_t i = 0; i < n; ++i) {
      signs[i / 8] |= static_cast<std::byte>(static_cast<unsigned>(v[i] < 0.0f) << (i % 8));
    }
    out.write_bytes(signs);
    if (!e.empty()) {
      for (size_t i = 0; i < n; ++i) e[i] -= with_sign(scale, e[i] < 0.0f);
    }
  }
};

}  // namespace

std::unique_ptr<Compressor> make_sign_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts) {
  return std::make_unique<SignCompressor>(options, std::move(layouts));
}

void decode_sign_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end) {
  const size_t n = layout.numel();
  const size_t scale_at = reader.offset();
  const float scale = reader.read_f32("scale");
  if (!(std::isfinite(scale) && scale >= 0.0f)) {
    throw_bad_field(reader, scale_at, Method::kSign, "scale",
                    fmt::format("{} is not finite and >= 0", scale));
  }
  const std::span<const std::byte> packed = reader.read_bytes(packed_bytes(n, 1), "signs");
  if (to_end) reader.expect_end("message");
  const float value = weight * scale;
  for (size_t i = 0; i < n; ++i) {
    const bool negative = ((std::to_integer<unsigned>(packed[i / 8]) >> (i % 8)) & 1u) != 0;
    out[i] += with_sign(value, negative);
  }
}

}  // namespace dtrain::compress::detail
