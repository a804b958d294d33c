// PowerSGD (Vogels, Karimireddy & Jaggi 2019, "PowerSGD: practical low-rank
// gradient compression for distributed optimization", Algorithm 1), as
// PyTorch 1.13's powerSGD_hook computes it (error feedback and warm start
// on; no batching of same-shaped matrices).
//
// Per compressed matrix M [rows x cols] (M = g + e with error feedback) and
// rank r = min(rows, cols, Options::rank), with Q [cols x r] kept from the
// previous step (first drawn N(0, 1) from Rng(mix_seed(seed, tensor)), the
// same on every rank), W ranks:
//   1. orthogonalise Q; P = M Q                          local
//   2. allreduce_sum of every matrix's P, concatenated   (rows r floats each)
//   3. orthogonalise P (Gram-Schmidt, see low_rank.h)    identical everywhere
//   4. Q = M^T P                                         local
//   5. allreduce_sum of every matrix's Q, concatenated   (cols r floats each)
//   6. Q = Q / W (the mean, kept as the next warm start); A = P Q^T, the
//      mean of the workers' approximations (PyTorch's decompressed value)
//   7. e = M - A (each rank's residual against the mean approximation);
//      the gradient becomes W A: reduce() returns the SUM over workers, as
//      every method does (PyTorch's hook returns A, the mean).
// Payload: (rows + cols) r 4 bytes per matrix (P and Q).
//
// encode() (point to point: one worker alone, W = 1): steps 1, 3, 4 without
// the allreduces, the message
//   header (9) | u32 r | rows x r f32 P | cols x r f32 Q   (row-major)
// decoded as P Q^T; e = M - P Q^T; Q is kept as the next warm start.
// compresses() is false for fewer than min_size floats and where
// (rows + cols) r min_compression_rate >= rows cols (PyTorch's rule).
#include <algorithm>
#include <cmath>

#include "compress/compress_internal.h"
#include "compress/low_rank.h"
#include "core/rng.h"

namespace dtrain::compress::detail {

namespace {

size_t rank_for(const TensorLayout& layout, int rank) {
  return std::min({layout.rows, layout.cols, static_cast<size_t>(rank)});
}

class PowerSgdCompressor final : public Compressor {
 public:
  PowerSgdCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : Compressor(options, std::move(layouts)) {
    add_state("q", &q_);
  }

  bool compresses(size_t tensor) const override {
    const TensorLayout& l = layout(tensor);
    if (l.numel() < options_.min_size || l.numel() == 0) return false;
    const double compressed = static_cast<double>(l.rows + l.cols) *
                              static_cast<double>(rank_for(l, options_.rank)) *
                              options_.min_compression_rate;
    return compressed < static_cast<double>(l.numel());
  }

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t /*step*/) override {
    check_reduce(tensors, grads);
    const size_t count = tensors.size();
    std::vector<std::span<const float>> ms(count);
    std::vector<size_t> p_at(count + 1, 0);
    std::vector<size_t> q_at(count + 1, 0);
    for (size_t i = 0; i < count; ++i) {
      const TensorLayout& l = layout(tensors[i]);
      const size_t r = rank_for(l, options_.rank);
      p_at[i + 1] = p_at[i] + l.rows * r;
      q_at[i + 1] = q_at[i] + l.cols * r;
      ms[i] = matrix(tensors[i], grads[i]);
    }
    std::vector<float> ps(p_at.back());
    for (size_t i = 0; i < count; ++i) {
      const TensorLayout& l = layout(tensors[i]);
      const size_t r = rank_for(l, options_.rank);
      std::vector<float>& q = warm_q(tensors[i]);
      orthogonalize_columns(q, l.cols, r);
      multiply(ms[i], l.rows, l.cols, q, r, slice(ps, p_at, i));
    }
    group.allreduce_sum(ps);
    std::vector<float> qs(q_at.back());
    for (size_t i = 0; i < count; ++i) {
      const TensorLayout& l = layout(tensors[i]);
      const size_t r = rank_for(l, options_.rank);
      orthogonalize_columns(slice(ps, p_at, i), l.rows, r);
      multiply_transposed(ms[i], l.rows, l.cols, slice(ps, p_at, i), r, slice(qs, q_at, i));
    }
    group.allreduce_sum(qs);
    const auto world = static_cast<float>(group.size());
    for (size_t i = 0; i < count; ++i) {
      const size_t t = tensors[i];
      const TensorLayout& l = layout(t);
      const size_t r = rank_for(l, options_.rank);
      const std::span<float> q_sum = slice(qs, q_at, i);
      std::vector<float>& q = q_[t];
      for (size_t j = 0; j < q.size(); ++j) q[j] = q_sum[j] / world;
      // grads[i] = A (the mean approximation) first, for the residual.
      multiply_outer(slice(ps, p_at, i), l.rows, q, l.cols, r, grads[i]);
      std::vector<float>& e = residual(t);
      for (size_t j = 0; j < e.size(); ++j) e[j] -= grads[i][j];
      for (float& v : grads[i]) v *= world;
      count_payload((l.rows + l.cols) * r * sizeof(float));
    }
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t /*step*/, int /*rank*/,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    const TensorLayout& l = layout(tensor);
    const size_t r = rank_for(l, options_.rank);
    const std::span<const float> m = matrix(tensor, grad);
    std::vector<float>& q = warm_q(tensor);
    orthogonalize_columns(q, l.cols, r);
    std::vector<float> p(l.rows * r);
    multiply(m, l.rows, l.cols, q, r, p);
    orthogonalize_columns(p, l.rows, r);
    multiply_transposed(m, l.rows, l.cols, p, r, q);
    write_header(out, method(), l);
    out.write_u32(static_cast<uint32_t>(r));
    out.write_f32_array(p);
    out.write_f32_array(q);
    std::vector<float>& e = residual(tensor);
    if (!e.empty()) {
      std::vector<float> approximation(l.numel());
      multiply_outer(p, l.rows, q, l.cols, r, approximation);
      for (size_t j = 0; j < e.size(); ++j) e[j] -= approximation[j];
    }
    count_payload(out.size() - start);
  }

 protected:
  size_t state_floats(std::string_view kind, size_t tensor) const override {
    const TensorLayout& l = layouts_[tensor];
    return kind == "q" ? l.cols * rank_for(l, options_.rank)
                       : Compressor::state_floats(kind, tensor);
  }

 private:
  // M: g + e in the residual with error feedback, else g itself.
  std::span<const float> matrix(size_t tensor, std::span<const float> grad) {
    std::vector<float>& e = residual(tensor);
    if (e.empty()) return grad;
    for (size_t j = 0; j < e.size(); ++j) e[j] += grad[j];
    return e;
  }

  std::vector<float>& warm_q(size_t tensor) {
    std::vector<float>& q = q_[tensor];
    if (q.empty()) {
      const TensorLayout& l = layout(tensor);
      q.resize(l.cols * rank_for(l, options_.rank));
      Rng rng(mix_seed({options_.seed, tensor}));
      for (float& v : q) v = rng.normal();
    }
    return q;
  }

  static std::span<float> slice(std::vector<float>& all, const std::vector<size_t>& at, size_t i) {
    return std::span<float>(all).subspan(at[i], at[i + 1] - at[i]);
  }

  std::vector<std::vector<float>> q_;
};

}  // namespace

std::unique_ptr<Compressor> make_powersgd_compressor(const Options& options,
                                                     std::vector<TensorLayout> layouts) {
  return std::make_unique<PowerSgdCompressor>(options, std::move(layouts));
}

void decode_powersgd_body(ByteReader& reader, const TensorLayout& layout, float weight,
                          std::span<float> out, bool to_end) {
  const size_t rank_at = reader.offset();
  const uint32_t r = reader.read_u32("rank");
  if (r < 1 || r > std::min(layout.rows, layout.cols)) {
    throw_bad_field(reader, rank_at, Method::kPowerSgd, "rank",
                    fmt::format("{} is not in [1, min(rows, cols) = {}]", r,
                                std::min(layout.rows, layout.cols)));
  }
  const uint64_t per_rank = layout.rows + layout.cols;
  reader.need_elements(per_rank > UINT64_MAX / r ? UINT64_MAX : per_rank * r, 4, "P, Q");
  const size_t p_at = reader.offset();
  const std::vector<float> p = reader.read_f32_array(layout.rows * r, "P");
  check_finite(reader, p_at, Method::kPowerSgd, "P", p);
  const size_t q_at = reader.offset();
  const std::vector<float> q = reader.read_f32_array(layout.cols * r, "Q");
  check_finite(reader, q_at, Method::kPowerSgd, "Q", q);
  if (to_end) reader.expect_end("message");
  add_outer(p, layout.rows, q, layout.cols, r, weight, out);
}

}  // namespace dtrain::compress::detail
