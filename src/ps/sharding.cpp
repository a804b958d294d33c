#include "ps/sharding.h"

#include <array>
#include <bit>
#include <cmath>
#include <numbers>
#include <set>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::ps {

ShardPlan::ShardPlan(std::vector<DenseSpec> tensors, int num_servers)
    : tensors_(std::move(tensors)), num_servers_(num_servers) {
  if (num_servers < 1) {
    throw UsageError(fmt::format("ps shard plan: {} servers; need at least 1", num_servers));
  }
  std::set<std::string> names;
  for (const DenseSpec& spec : tensors_) {
    if (spec.name.empty()) throw UsageError("ps shard plan: a dense tensor has an empty name");
    if (!names.insert(spec.name).second) {
      throw UsageError(
          fmt::format("ps shard plan: dense tensor name '{}' appears twice", spec.name));
    }
    for (int64_t extent : spec.shape) {
      if (extent < 0) {
        throw UsageError(fmt::format("ps shard plan: tensor '{}' has a negative extent in {}",
                                     spec.name, shape_str(spec.shape)));
      }
    }
    tensor_begin_.push_back(total_);
    total_ += shape_numel(spec.shape);
  }
  // Server s holds [s*T/S, (s+1)*T/S): sizes differ by at most one element.
  slices_.resize(static_cast<size_t>(num_servers));
  size_t tensor = 0;
  for (int s = 0; s < num_servers; ++s) {
    const int64_t begin = range_begin(s);
    const int64_t end = range_end(s);
    int64_t at = begin;
    while (at < end) {
      while (tensor_begin_[tensor] + shape_numel(tensors_[tensor].shape) <= at) ++tensor;
      const int64_t tensor_end = tensor_begin_[tensor] + shape_numel(tensors_[tensor].shape);
      const int64_t stop = std::min(end, tensor_end);
      slices_[static_cast<size_t>(s)].push_back(
          ShardSlice{tensor, at - tensor_begin_[tensor], stop - at, at - begin});
      at = stop;
    }
  }
}

void ShardPlan::check_server(int server) const {
  if (server < 0 || server >= num_servers_) {
    throw UsageError(
        fmt::format("ps shard plan: server {} out of range [0, {})", server, num_servers_));
  }
}

int64_t ShardPlan::tensor_begin(size_t i) const {
  if (i >= tensors_.size()) {
    throw UsageError(
        fmt::format("ps shard plan: tensor {} out of range [0, {})", i, tensors_.size()));
  }
  return tensor_begin_[i];
}

int64_t ShardPlan::range_begin(int server) const {
  check_server(server);
  return total_ * server / num_servers_;
}

int64_t ShardPlan::range_end(int server) const {
  check_server(server);
  return total_ * (server + 1) / num_servers_;
}

const std::vector<ShardSlice>& ShardPlan::slices(int server) const {
  check_server(server);
  return slices_[static_cast<size_t>(server)];
}

std::vector<SlicePiece> slice_pieces(const ShardPlan& plan, const ShardSlice& slice) {
  const Shape& shape = plan.tensors().at(slice.tensor).shape;
  auto row = [&](int64_t offset, int64_t count) {
    return SlicePiece{offset - slice.offset, count, {1, static_cast<size_t>(count)}};
  };
  const int64_t cols = shape.size() >= 2 && shape[0] > 0 ? shape_numel(shape) / shape[0] : 0;
  const int64_t begin = slice.offset;
  const int64_t end = slice.offset + slice.count;
  if (cols == 0 || slice.count == 0) return {row(begin, slice.count)};
  // [begin, first_row) and [last_row, end) are the partial rows at either
  // end, [first_row, last_row) the whole rows (empty when the slice holds
  // none; first_row > last_row when it lies within one row).
  const int64_t first_row = (begin + cols - 1) / cols * cols;
  const int64_t last_row = end / cols * cols;
  if (first_row > last_row) return {row(begin, slice.count)};
  std::vector<SlicePiece> pieces;
  if (begin < first_row) pieces.push_back(row(begin, first_row - begin));
  if (first_row < last_row) {
    pieces.push_back(SlicePiece{
        first_row - begin,
        last_row - first_row,
        {static_cast<size_t>((last_row - first_row) / cols), static_cast<size_t>(cols)}});
  }
  if (last_row < end) pieces.push_back(row(last_row, end - last_row));
  return pieces;
}

namespace {

// splitmix64's finaliser: a bijective 64-bit mix.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

}  // namespace

namespace {

void check_servers(int num_servers) {
  if (num_servers < 1) {
    throw UsageError(fmt::format("ps sparse placement: {} servers; need at least 1", num_servers));
  }
}

// The placement rule, with the table's mix and the server count's kind
// computed once for a batch: a power of two takes the low bits (what %
// gives), else %.
struct Placement {
  Placement(uint32_t table, int num_servers)
      : table_mix(mix64(0x9E3779B97F4A7C15ull + table)),
        servers(static_cast<uint64_t>(num_servers)),
        power_of_two(std::has_single_bit(servers)) {}
  int of(uint64_t key) const {
    const uint64_t h = mix64(key ^ table_mix);
    return static_cast<int>(power_of_two ? h & (servers - 1) : h % servers);
  }
  uint64_t table_mix, servers;
  bool power_of_two;
};

}  // namespace

int sparse_server_of(uint32_t table, uint64_t key, int num_servers) {
  check_servers(num_servers);
  return Placement(table, num_servers).of(key);
}

void sparse_servers_of(uint32_t table, std::span<const uint64_t> keys, int num_servers,
                       std::span<int> out) {
  check_servers(num_servers);
  if (out.size() != keys.size()) {
    throw UsageError(
        fmt::format("ps sparse placement: {} outputs for {} keys", out.size(), keys.size()));
  }
  const Placement placement(table, num_servers);
  for (size_t i = 0; i < keys.size(); ++i) out[i] = placement.of(keys[i]);
}

size_t first_key_not_on(uint32_t table, std::span<const uint64_t> keys, int server,
                        int num_servers) {
  check_servers(num_servers);
  const Placement placement(table, num_servers);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (placement.of(keys[i]) != server) return i;
  }
  return keys.size();
}

namespace {

// ln(u) for u in [2^-24, 1]: u = m * 2^e with m in [sqrt(1/2), sqrt(2)), and
// ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series to
// s^9 (error below 1e-8). Plain float arithmetic, so that a loop of it
// vectorises.
float log_unit(float u) {
  const auto bits = std::bit_cast<uint32_t>(u);
  // m > sqrt(2) halves m (its exponent one lower: exact) and adds one to e;
  // done in integers, as a float comparison, a select or a bool-to-float
  // conversion kept GCC 12 from vectorising the loop.
  const uint32_t mantissa = bits & 0x7FFFFFu;
  const uint32_t big = mantissa > (std::bit_cast<uint32_t>(1.41421356f) & 0x7FFFFFu) ? 1u : 0u;
  const auto e =
      static_cast<float>(static_cast<int32_t>(bits >> 23) - 127 + static_cast<int32_t>(big));
  const float m =
      std::bit_cast<float>((mantissa | 0x3F800000u) - (big << 23));  // [sqrt(1/2), sqrt(2))
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return e * 0.693147181f + 2.0f * s * series;
}

}  // namespace

namespace {

// Box-Muller (Box & Muller 1958), both outputs of each pair: one 64-bit
// draw gives u1 in (0, 1] and u2 in [0, 1), 24 bits each; the radius
// sqrt(-2 ln u1) <= 5.8, the angle a = 2 pi u2 - pi = 2h with h in
// [-pi/2, pi/2), and cos a = 1 - 2 sin^2 h, sin a = 2 sin h cos h from
// Taylor series of h to h^11 / h^12 (errors below 1e-7).
// Rows are made on first touch, and Rng::normal's double log and cos per
// value made row creation a third of a server's CPU; this is plain float
// arithmetic over arrays, so that it vectorises.
// The pairs' values (c, s) from their uniforms (u1, h) and the std.
void box_muller(const float* __restrict u1, const float* __restrict h, float init_std, size_t count,
                float* __restrict c, float* __restrict s) {
  for (size_t p = 0; p < count; ++p) {
    const float r = init_std * std::sqrt(-2.0f * log_unit(u1[p]));
    const float x = h[p];
    const float x2 = x * x;
    const float sin_h =
        x *
        (1.0f + x2 * (-1.0f / 6 +
                      x2 * (1.0f / 120 +
                            x2 * (-1.0f / 5040 + x2 * (1.0f / 362880 + x2 * (-1.0f / 39916800))))));
    const float cos_h =
        1.0f +
        x2 * (-0.5f +
              x2 * (1.0f / 24 +
                    x2 * (-1.0f / 720 +
                          x2 * (1.0f / 40320 + x2 * (-1.0f / 3628800 + x2 * (1.0f / 479001600))))));
    c[p] = r * (1.0f - 2.0f * sin_h * sin_h);
    s[p] = r * (2.0f * sin_h * cos_h);
  }
}

struct PairBatch {
  static constexpr size_t kPairs = 256;
  std::array<float, kPairs> u1{}, h{}, c{}, s{};
  std::array<float*, kPairs> out{};  // where c goes; s goes to out + 1 ...
  std::array<bool, kPairs> both{};   // ... unless the row ends at c
  size_t n = 0;

  void draw(Rng& rng, float* dest, bool two) {
    const uint64_t bits = rng.next_u64();
    u1[n] = static_cast<float>((bits >> 40) + 1) * 0x1.0p-24f;
    h[n] = (static_cast<float>((bits >> 8) & 0xFFFFFFu) * 0x1.0p-24f - 0.5f) *
           std::numbers::pi_v<float>;
    out[n] = dest;
    both[n] = two;
    ++n;
  }

  void flush(float init_std) {
    const size_t count = n;
    box_muller(u1.data(), h.data(), init_std, count, c.data(), s.data());
    for (size_t p = 0; p < count; ++p) {
      out[p][0] = c[p];
      if (both[p]) out[p][1] = s[p];
    }
    n = 0;
  }
};

}  // namespace

void init_sparse_row(uint64_t seed, uint32_t table, uint64_t key, float init_std,
                     std::span<float> out) {
  float* const row = out.data();
  init_sparse_rows(seed, table, {&key, 1}, init_std, out.size(), {&row, 1});
}

void init_sparse_rows(uint64_t seed, uint32_t table, std::span<const uint64_t> keys, float init_std,
                      size_t dim, std::span<float* const> rows) {
  if (init_std == 0.0f) {
    for (float* row : rows) std::fill(row, row + dim, 0.0f);
    return;
  }
  // Each row's draws are serial from its own Rng; the arithmetic runs over
  // the pairs of many rows (or of a long row's parts) at a time.
  const uint64_t table_mix = mix64(0xD1B54A32D192ED03ull + table);
  PairBatch batch;
  for (size_t i = 0; i < keys.size(); ++i) {
    Rng rng(mix64(seed ^ mix64(keys[i] ^ table_mix)));
    float* const row = rows[i];
    for (size_t first = 0; first < dim; first += 2) {
      if (batch.n == PairBatch::kPairs) batch.flush(init_std);
      batch.draw(rng, row + first, first + 1 < dim);
    }
  }
  batch.flush(init_std);
}

}  // namespace dtrain::ps
