// Sparsification: top-k (Stich, Cordonnier & Jaggi 2018, "Sparsified SGD
// with memory"; with DGC's momentum correction and density warm-up, Lin et
// al. 2018, "Deep gradient compression") and random-k (the same paper's
// rand-k, with indices every worker draws alike).
//
// Top-k of a tensor of n floats at density ρ keeps k = max(1, ceil(ρ n))
// entries of v:
//   v = g + e                       error feedback (e = 0 without it)
//   u = m u + g; v = e + u          DGC momentum correction (m > 0)
// exactly the k largest |v| (ties to the lower index; the threshold found by
// nth_element over the magnitudes' bit patterns, a total order in which a
// NaN counts as largest). Afterwards e = v with the sent entries zeroed, and
// with DGC u is zeroed there too (momentum factor masking). During DGC's
// warm-up (step t < warmup_steps) the density is
// max(ρ, 0.25 (ρ / 0.25)^(t / warmup_steps)).
// reduce(): the entries of every tensor of the call, in one index space over
// the call (tensor i's indices offset by the sizes of tensors 0..i-1), go to
// ONE Group::sparse_allreduce_sum; payload 8 bytes (u32 index, f32 value)
// per entry.
//
// Random-k keeps k = max(1, ceil(ρ n)) entries at indices drawn from
// Rng(mix_seed(seed, step, tensor)) (Floyd's algorithm), the same on every
// rank, so reduce() is ONE dense Group::allreduce_sum of the k values of
// every tensor; payload 4 k. The values are those of v = g + e (with error
// feedback; e = v with the sent entries zeroed), or v * n / k without it
// (unbiased). With m > 0 random-k takes DGC's momentum correction as top-k
// does: v = e + u, u = m u + g, and u is zeroed where sent (why: a
// coordinate is sent about every 1/ρ updates, and an optimizer's momentum
// applied to those bursts acts on gradients 1/ρ updates stale; accumulating
// the momentum before sparsifying applies each burst once;
// docs/compression.md).
//
// encode() (docs/compression.md):
//   top-k:    header (9) | u32 k | k x u32 index (increasing) | k x f32 value
//   random-k: header (9) | u64 draw seed | u32 k | k x f32 value
#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

#include "compress/compress_internal.h"
#include "core/error.h"
#include "core/rng.h"

namespace dtrain::compress::detail {

namespace {

// The magnitude of v as an integer key: for non-negative floats the bit
// pattern orders as the value does (NaNs above infinity).
inline uint32_t magnitude_key(float v) { return std::bit_cast<uint32_t>(v) & 0x7fffffffu; }

// The indices of the k largest |v| (ties to the lower index), increasing.
// `keys` is scratch.
void select_top_k(std::span<const float> v, size_t k, std::vector<uint32_t>& keys,
                  std::vector<uint32_t>& indices) {
  indices.clear();
  const size_t n = v.size();
  if (k == 0) return;
  if (k >= n) {
    indices.resize(n);
    for (size_t i = 0; i < n; ++i) indices[i] = static_cast<uint32_t>(i);
    return;
  }
  keys.resize(n);
  for (size_t i = 0; i < n; ++i) keys[i] = magnitude_key(v[i]);
  const auto kth = keys.begin() + static_cast<ptrdiff_t>(k - 1);
  std::nth_element(keys.begin(), kth, keys.end(), std::greater<>());
  const uint32_t threshold = *kth;
  // Every key above the threshold is among the first k - 1.
  size_t above = 0;
  for (auto it = keys.begin(); it != kth; ++it) above += *it > threshold ? 1 : 0;
  size_t ties = k - above;
  indices.reserve(k);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t key = magnitude_key(v[i]);
    if (key > threshold || (key == threshold && ties > 0)) {
      if (key == threshold) --ties;
      indices.push_back(static_cast<uint32_t>(i));
    }
  }
}

// What top-k and random-k share: error feedback and DGC's momentum
// correction, v = e + (m > 0 ? u = m u + g : g), and the masking of the
// sent entries of e and u afterwards.
class SparseCompressor : public Compressor {
 protected:
  SparseCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : Compressor(options, std::move(layouts)) {
    add_state("velocity", &velocity_);
  }

  size_t state_floats(std::string_view kind, size_t tensor) const override {
    if (kind == "velocity") return options_.momentum > 0.0 ? layout(tensor).numel() : 0;
    return Compressor::state_floats(kind, tensor);
  }

  // Updates u and e with `grad`; returns v (valid until the next call).
  std::span<const float> accumulate(size_t tensor, std::span<const float> grad) {
    const size_t n = grad.size();
    std::span<const float> v = grad;
    if (options_.momentum > 0.0) {
      std::vector<float>& u = velocity_[tensor];
      if (u.empty()) u.assign(n, 0.0f);
      const auto m = static_cast<float>(options_.momentum);
      for (size_t i = 0; i < n; ++i) u[i] = m * u[i] + grad[i];
      v = u;
    }
    std::vector<float>& e = residual(tensor);
    if (!e.empty()) {
      for (size_t i = 0; i < n; ++i) e[i] += v[i];
      v = e;
    }
    return v;
  }

  // Zeroes the sent entries of the residual and the velocity.
  void mask(size_t tensor, std::span<const uint32_t> sent) {
    std::vector<float>& e = residual(tensor);
    std::vector<float>& u = velocity_[tensor];
    for (const uint32_t j : sent) {
      if (!e.empty()) e[j] = 0.0f;
      if (!u.empty()) u[j] = 0.0f;
    }
  }

 private:
  std::vector<std::vector<float>> velocity_;
};

class TopKCompressor final : public SparseCompressor {
 public:
  TopKCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : SparseCompressor(options, std::move(layouts)) {}

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t step) override {
    check_reduce(tensors, grads);
    std::vector<size_t> offsets(tensors.size() + 1, 0);
    for (size_t i = 0; i < tensors.size(); ++i) offsets[i + 1] = offsets[i] + grads[i].size();
    if (offsets.back() > std::numeric_limits<uint32_t>::max()) {
      throw UsageError(
          fmt::format("topk compressor: reduce() of {} floats in one call; at most "
                      "2^32 - 1 (u32 indices)",
                      offsets.back()));
    }
    std::vector<uint32_t> indices;
    std::vector<float> values;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::span<const float> v = select(tensors[i], grads[i], step);
      for (const uint32_t j : selected_) {
        indices.push_back(static_cast<uint32_t>(offsets[i] + j));
        values.push_back(v[j]);
      }
      mask(tensors[i], selected_);
    }
    std::vector<float> dense(offsets.back());
    group.sparse_allreduce_sum(indices, values, dense);
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::copy_n(dense.begin() + static_cast<ptrdiff_t>(offsets[i]), grads[i].size(),
                  grads[i].begin());
    }
    count_payload(8 * indices.size());
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t step, int /*rank*/,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    const std::span<const float> v = select(tensor, grad, step);
    write_header(out, method(), layout(tensor));
    out.write_u32(static_cast<uint32_t>(selected_.size()));
    for (const uint32_t j : selected_) out.write_u32(j);
    for (const uint32_t j : selected_) out.write_f32(v[j]);
    mask(tensor, selected_);
    count_payload(out.size() - start);
  }

 private:
  // The density of step `step` (DGC's warm-up).
  double density_at(int64_t step) const {
    const double target = options_.density;
    if (step < 0 || step >= options_.warmup_steps) return target;
    const double t = static_cast<double>(step) / static_cast<double>(options_.warmup_steps);
    return std::max(target, 0.25 * std::pow(target / 0.25, t));
  }

  // Updates the accumulators with `grad` and selects into selected_; returns
  // v, the vector selected from (valid until mask()).
  std::span<const float> select(size_t tensor, std::span<const float> grad, int64_t step) {
    const std::span<const float> v = accumulate(tensor, grad);
    select_top_k(v, kept_count(density_at(step), grad.size()), keys_, selected_);
    return v;
  }

  std::vector<uint32_t> keys_;
  std::vector<uint32_t> selected_;
};

class RandomKCompressor final : public SparseCompressor {
 public:
  RandomKCompressor(const Options& options, std::vector<TensorLayout> layouts)
      : SparseCompressor(options, std::move(layouts)) {}

  void reduce(std::span<const size_t> tensors, std::span<const std::span<float>> grads,
              Group& group, int64_t step) override {
    check_reduce(tensors, grads);
    std::vector<std::vector<uint32_t>> drawn(tensors.size());
    std::vector<float> values;
    for (size_t i = 0; i < tensors.size(); ++i) {
      drawn[i] = draw_random_indices(draw_seed(tensors[i], step), grads[i].size(),
                                     kept_count(options_.density, grads[i].size()));
      take(tensors[i], grads[i], drawn[i], values);
    }
    group.allreduce_sum(values);
    size_t at = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::fill(grads[i].begin(), grads[i].end(), 0.0f);
      for (const uint32_t j : drawn[i]) grads[i][j] = values[at++];
    }
    count_payload(4 * values.size());
  }

  void encode(size_t tensor, std::span<const float> grad, int64_t step, int /*rank*/,
              ByteWriter& out) override {
    check_tensor(tensor, grad.size());
    const size_t start = out.size();
    const uint64_t seed = draw_seed(tensor, step);
    const std::vector<uint32_t> indices =
        draw_random_indices(seed, grad.size(), kept_count(options_.density, grad.size()));
    std::vector<float> values;
    take(tensor, grad, indices, values);
    write_header(out, method(), layout(tensor));
    out.write_u64(seed);
    out.write_u32(static_cast<uint32_t>(values.size()));
    out.write_f32_array(values);
    count_payload(out.size() - start);
  }

 private:
  uint64_t draw_seed(size_t tensor, int64_t step) const {
    return mix_seed({options_.seed, static_cast<uint64_t>(step), tensor});
  }

  // Appends the values sent at `indices` (v's, scaled by n / k without error
  // feedback) and masks them.
  void take(size_t tensor, std::span<const float> grad, std::span<const uint32_t> indices,
            std::vector<float>& values) {
    const std::span<const float> v = accumulate(tensor, grad);
    float scale = 1.0f;
    if (!keeps_residual() && !indices.empty()) {
      scale = static_cast<float>(static_cast<double>(grad.size()) /
                                 static_cast<double>(indices.size()));
    }
    for (const uint32_t j : indices) values.push_back(v[j] * scale);
    mask(tensor, indices);
  }
};

}  // namespace

std::vector<uint32_t> draw_random_indices(uint64_t draw_seed, size_t n, size_t k) {
  DTRAIN_CHECK(k <= n, "drawing {} of {} indices", k, n);
  std::vector<uint32_t> indices;
  indices.reserve(k);
  if (k == n) {
    for (size_t i = 0; i < n; ++i) indices.push_back(static_cast<uint32_t>(i));
    return indices;
  }
  // Floyd's algorithm: for j = n - k .. n - 1 take t uniform in [0, j], or j
  // itself when t is taken; every k-subset is equally likely.
  Rng rng(draw_seed);
  std::vector<uint64_t> taken((n + 63) / 64, 0);
  auto is_taken = [&](size_t i) { return (taken[i / 64] >> (i % 64)) & 1u; };
  for (size_t j = n - k; j < n; ++j) {
    size_t t = rng.below(j + 1);
    if (is_taken(t)) t = j;
    taken[t / 64] |= uint64_t{1} << (t % 64);
  }
  for (size_t w = 0; w < taken.size(); ++w) {
    for (uint64_t bits = taken[w]; bits != 0; bits &= bits - 1) {
      indices.push_back(
          static_cast<uint32_t>(w * 64 + static_cast<size_t>(std::countr_zero(bits))));
    }
  }
  return indices;
}

std::unique_ptr<Compressor> make_topk_compressor(const Options& options,
                                                 std::vector<TensorLayout> layouts) {
  return std::make_unique<TopKCompressor>(options, std::move(layouts));
}

std::unique_ptr<Compressor> make_randomk_compressor(const Options& options,
                                                    std::vector<TensorLayout> layouts) {
  return std::make_unique<RandomKCompressor>(options, std::move(layouts));
}

void decode_topk_body(ByteReader& reader, const TensorLayout& layout, float weight,
                      std::span<float> out, bool to_end) {
  const size_t n = layout.numel();
  const size_t k_at = reader.offset();
  const uint32_t k = reader.read_u32("k");
  if (k > n) throw_bad_field(reader, k_at, Method::kTopK, "k", fmt::format("{} > n = {}", k, n));
  reader.need_elements(uint64_t{k} * 2, 4, "indices, values");
  const size_t indices_at = reader.offset();
  const std::span<const std::byte> index_bytes = reader.read_bytes(4 * size_t{k}, "indices");
  const size_t values_at = reader.offset();
  const std::vector<float> values = reader.read_f32_array(k, "values");
  auto index = [&](size_t i) {
    uint32_t value = 0;
    for (size_t b = 4; b-- > 0;)
      value = (value << 8) | std::to_integer<uint32_t>(index_bytes[4 * i + b]);
    return value;
  };
  for (size_t i = 0; i < k; ++i) {
    const uint32_t j = index(i);
    if (j >= n) {
      throw_bad_field(reader, indices_at + 4 * i, Method::kTopK, "indices",
                      fmt::format("index {} of {} is {}, not below n = {}", i, k, j, n));
    }
    if (i > 0 && j <= index(i - 1)) {
      throw_bad_field(reader, indices_at + 4 * i, Method::kTopK, "indices",
                      fmt::format("index {} of {} is {}, not above the previous {} (indices must "
                                  "increase strictly)",
                                  i, k, j, index(i - 1)));
    }
  }
  check_finite(reader, values_at, Method::kTopK, "values", values);
  if (to_end) reader.expect_end("message");
  for (size_t i = 0; i < k; ++i) out[index(i)] += weight * values[i];
}

void decode_randomk_body(ByteReader& reader, const TensorLayout& layout, float weight,
                         std::span<float> out, bool to_end) {
  const size_t n = layout.numel();
  const uint64_t seed = reader.read_u64("draw seed");
  const size_t k_at = reader.offset();
  const uint32_t k = reader.read_u32("k");
  if (k > n) throw_bad_field(reader, k_at, Method::kRandomK, "k", fmt::format("{} > n = {}", k, n));
  const size_t values_at = reader.offset();
  const std::vector<float> values = reader.read_f32_array(k, "values");
  check_finite(reader, values_at, Method::kRandomK, "values", values);
  if (to_end) reader.expect_end("message");
  const std::vector<uint32_t> indices = draw_random_indices(seed, n, k);
  for (size_t i = 0; i < k; ++i) out[indices[i]] += weight * values[i];
}

}  // namespace dtrain::compress::detail
