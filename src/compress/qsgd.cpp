// QSGD (Alistarh, Grubic, Li, Tomioka & Vojnovic 2017, "QSGD:
// communication-efficient SGD via gradient quantization and encoding"), with
// s = Options::levels levels, the paper's bucketing (one norm per d =
// Options::qsgd_bucket consecutive entries; 0: the whole tensor) and plain
// bit packing instead of Elias coding.
//
// Per tensor g of n floats, cut into m = ceil(n / d) buckets (the last one
// shorter when d does not divide n): each bucket's norm ||g_b||_2 (f32,
// summed in double); each entry becomes a level l_i in [0, s] by stochastic
// rounding of x_i = s |g_i| / ||g_b|| (l_i = floor(x_i) + 1 with probability
// x_i - floor(x_i)), and a sign bit. Decoded: ||g_b|| sign_i l_i / s, so that
// E[decoded] = g (unbiased; no error feedback), with variance at most
// min(d / s^2, sqrt(d) / s) ||g||^2 (the paper's Lemma 3.1 per bucket)
// instead of min(n / s^2, sqrt(n) / s) ||g||^2. The rounding draws come from
// Rng(mix_seed(seed, step, tensor, rank)): one uniform per entry, in entry
// order whatever d is.
//
// Message (docs/compression.md):
//   header (9) | u32 s | u32 d | u32 m | m x f32 norms | ceil(n b / 8) bytes
//   of n fields of b = bit_width(s) + 1 bits, least significant bit first:
//   the level in the low b - 1 bits, the sign (1 = negative) in the top bit
// with 1 <= d <= n (d = n: one bucket; d = 0 only for n = 0) and
// m = ceil(n / d). e.g. s = 16, d = 512: 6 bits per entry plus 1/16 bit of
// norm, 5.3x smaller than f32.
// reduce(): each rank's messages of the call's tensors, concatenated, go to
// Group::allgather_bytes; every rank decodes all of them and sums in rank
// order (bit-identical everywhere). Payload: this rank's bytes.
#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "compress/compress_internal.h"
#include "core/rng.h"

namespace dtrain::compress::detail {

namespace {

unsigned bits_per_entry(uint32_t levels) {
  return static_cast<unsigned>(std::bit_width(levels)) + 1;
}

// The bucket size a message carries for `n` entries: d in [1, n] (n for
// option 0 or one above n), 0 only for n = 0.
size_t bucket_size(size_t option, size_t n) { return option == 0 || option > n ? n : option; }

size_t bucket_count(size_t n, size_t d) { return n == 0 ? 0 : (n + d - 1) / d; }

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
    const size_t n = grad.size();
    const size_t d = bucket_size(options_.qsgd_bucket, n);
    const size_t buckets = bucket_count(n, d);
    std::vector<float> norms(buckets);
    for (size_t b = 0; b < buckets; ++b) {
      double squares = 0.0;
      for (const float v : grad.subspan(b * d, std::min(d, n - b * d))) {
        squares += static_cast<double>(v) * v;
      }
      norms[b] = static_cast<float>(std::sqrt(squares));
    }
    write_header(out, method(), layout(tensor));
    out.write_u32(levels);
    out.write_u32(static_cast<uint32_t>(d));
    out.write_u32(static_cast<uint32_t>(buckets));
    for (const float norm : norms) out.write_f32(norm);
    const unsigned bits = bits_per_entry(levels);
    Rng rng(mix_seed({options_.seed, static_cast<uint64_t>(step), tensor,
                      static_cast<uint64_t>(static_cast<int64_t>(rank))}));
    BitPacker packer(out);
    for (size_t b = 0; b < buckets; ++b) {
      const double to_levels = norms[b] > 0.0f ? levels / static_cast<double>(norms[b]) : 0.0;
      for (const float v : grad.subspan(b * d, std::min(d, n - b * d))) {
        // x in [0, s] (clamped: the rounded norm may be slightly below |v|).
        double x = std::fabs(static_cast<double>(v)) * to_levels;
        if (!(x >= 0.0)) x = 0.0;
        if (x > levels) x = levels;
        auto level = static_cast<uint32_t>(x);
        level += static_cast<uint32_t>(static_cast<double>(rng.uniform()) < x - level);
        packer.put(level | (static_cast<uint32_t>(v < 0.0f) << (bits - 1)), bits);
      }
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
  const size_t bucket_at = reader.offset();
  const uint32_t d = reader.read_u32("bucket");
  if (n > 0 ? d < 1 || d > n : d != 0) {
    throw_bad_field(reader, bucket_at, Method::kQsgd, "bucket",
                    n > 0 ? fmt::format("{} is not in [1, n = {}]", d, n)
                          : fmt::format("{} for n = 0 entries, expected 0", d));
  }
  const size_t buckets = bucket_count(n, d);
  const size_t count_at = reader.offset();
  const uint32_t count = reader.read_u32("norm count");
  if (count != buckets) {
    throw_bad_field(reader, count_at, Method::kQsgd, "norm count",
                    n > 0 ? fmt::format("{} norms, expected ceil(n / bucket) = ceil({} / {}) = {}",
                                        count, n, d, buckets)
                          : fmt::format("{} norms for n = 0 entries, expected 0", count));
  }
  const size_t norms_at = reader.offset();
  const std::vector<float> norms = reader.read_f32_array(count, "norms");
  for (size_t b = 0; b < buckets; ++b) {
    if (!(std::isfinite(norms[b]) && norms[b] >= 0.0f)) {
      throw_bad_field(
          reader, norms_at + 4 * b, Method::kQsgd, "norms",
          fmt::format("norm {} of {} is {}, not finite and >= 0", b, buckets, norms[b]));
    }
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
  // decoded(l) = ||g_b|| l / s: one product per level and bucket where the
  // bucket has more entries than levels, else one per entry (the same value).
  auto decoded = [&](float norm, uint32_t l) {
    return weight * static_cast<float>(static_cast<double>(norm) * l / levels);
  };
  std::vector<float> value(levels + 1);
  BitUnpacker unpacker(packed);
  for (size_t b = 0; b < buckets; ++b) {
    const size_t end = std::min(n, (b + 1) * d);
    const bool table = end - b * d > levels;
    if (table) {
      for (uint32_t l = 0; l <= levels; ++l) value[l] = decoded(norms[b], l);
    }
    for (size_t i = b * d; i < end; ++i) {
      const uint32_t field = unpacker.get(bits);
      const uint32_t level = field & level_mask;
      out[i] += with_sign(table ? value[level] : decoded(norms[b], level), (field & sign_bit) != 0);
    }
  }
}

}  // namespace dtrain::compress::detail
