// Each method's encode() / decode_add() round trip and its error feedback,
// against serial references written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <set>
#include <string>

#include "compress/compress_test_util.h"
#include "compress/compressor.h"
#include "core/byte_codec.h"

namespace dtrain::compress {
namespace {

using testing::decoded;
using testing::encode_one;
using testing::normal_vector;
using testing::options_of;
using testing::state_array;

// The top-k reference: sort the indices by |v| descending, ties by index.
std::vector<uint32_t> top_k_reference(std::span<const float> v, size_t k) {
  std::vector<uint32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<uint32_t> nonzero_indices(std::span<const float> v) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0.0f) out.push_back(static_cast<uint32_t>(i));
  }
  return out;
}

// ---------------------------------------------------------------- top-k

TEST(CompressTopK, KeepsExactlyTheKLargestMagnitudes) {
  for (const size_t n : {1u, 7u, 1000u, 4099u}) {
    Options options = options_of(Method::kTopK);
    options.density = 0.03;
    options.error_feedback = false;
    auto c = make_compressor(options, {{1, n}});
    std::vector<float> g = normal_vector(n, 11 + n);
    // Ties: a block of equal magnitudes of both signs at the top.
    for (size_t i = 0; i < std::min<size_t>(n, 6); ++i) g[n - 1 - i] = (i % 2 ? 5.0f : -5.0f);
    const size_t k = std::max<size_t>(1, static_cast<size_t>(std::ceil(0.03 * n)));
    const std::vector<float> out = decoded(encode_one(*c, 0, g, 0), {1, n});
    const std::vector<uint32_t> expected = top_k_reference(g, k);
    EXPECT_EQ(nonzero_indices(out), expected) << "n = " << n;
    for (const uint32_t j : expected) EXPECT_EQ(out[j], g[j]);
  }
}

TEST(CompressTopK, TiesGoToTheLowerIndex) {
  Options options = options_of(Method::kTopK);
  options.density = 0.25;
  options.error_feedback = false;
  auto c = make_compressor(options, {{2, 10}});
  std::vector<float> g(20, 1.0f);
  for (size_t i = 0; i < 20; i += 3) g[i] = -1.0f;
  g[17] = 2.0f;
  const std::vector<float> out = decoded(encode_one(*c, 0, g, 0), {2, 10});
  EXPECT_EQ(nonzero_indices(out), (std::vector<uint32_t>{0, 1, 2, 3, 17}));
}

TEST(CompressTopK, ResidualIsWhatWasNotSent) {
  Options options = options_of(Method::kTopK);
  options.density = 0.1;
  auto c = make_compressor(options, {{1, 300}});
  std::vector<float> e(300, 0.0f);
  std::vector<float> sent_total(300, 0.0f);
  std::vector<float> grad_total(300, 0.0f);
  for (int64_t step = 0; step < 6; ++step) {
    const std::vector<float> g = normal_vector(300, 100 + static_cast<uint64_t>(step));
    std::vector<float> v(300);
    for (size_t i = 0; i < 300; ++i) v[i] = g[i] + e[i];
    const std::vector<float> sent = decoded(encode_one(*c, 0, g, step), {1, 300});
    EXPECT_EQ(nonzero_indices(sent), top_k_reference(v, 30));
    e = state_array(*c, "residual/0");
    ASSERT_EQ(e.size(), 300u);
    for (size_t i = 0; i < 300; ++i) {
      EXPECT_EQ(e[i], v[i] - sent[i]) << i;  // exact: e_i is v_i or 0
      sent_total[i] += sent[i];
      grad_total[i] += g[i];
    }
  }
  for (size_t i = 0; i < 300; ++i) EXPECT_NEAR(sent_total[i] + e[i], grad_total[i], 1e-5) << i;
}

TEST(CompressTopK, WithoutErrorFeedbackKeepsNoResidual) {
  Options options = options_of(Method::kTopK);
  options.error_feedback = false;
  auto c = make_compressor(options, {{1, 100}});
  (void)encode_one(*c, 0, normal_vector(100, 1), 0);
  EXPECT_TRUE(c->save().arrays.empty());
}

TEST(CompressTopK, DensityWarmsUpGeometricallyFromAQuarter) {
  Options options = options_of(Method::kTopK);
  options.density = 0.01;
  options.warmup_steps = 4;
  options.error_feedback = false;
  const size_t n = 10000;
  auto c = make_compressor(options, {{1, n}});
  const std::vector<float> g = normal_vector(n, 5);
  for (int64_t step = 0; step < 7; ++step) {
    const double density =
        step < 4 ? 0.25 * std::pow(0.01 / 0.25, static_cast<double>(step) / 4.0) : 0.01;
    const auto k = static_cast<size_t>(std::ceil(density * n));
    EXPECT_EQ(nonzero_indices(decoded(encode_one(*c, 0, g, step), {1, n})).size(), k)
        << "step " << step;
  }
}

// DGC (Lin et al. 2018) on `steps` random gradients of n entries: u = m u +
// g, v = v + u, the message holds v at the positions sent (checked by
// `expect_positions(v, sent)`), u and v are zeroed there, and the state
// arrays equal u and v. Returns, per entry, sum of what was sent + v - sum of
// the velocities: 0 when nothing is lost or counted twice.
std::vector<double> expect_dgc_reference(
    const Options& options, size_t n, int steps, uint64_t seed,
    const std::function<void(const std::vector<float>&, const std::vector<uint32_t>&)>&
        expect_positions) {
  auto c = make_compressor(options, {{1, n}});
  const auto m = static_cast<float>(options.momentum);
  std::vector<float> u(n, 0.0f);
  std::vector<float> v(n, 0.0f);
  std::vector<double> balance(n, 0.0);
  for (int64_t step = 0; step < steps; ++step) {
    const std::vector<float> g = normal_vector(n, seed + static_cast<uint64_t>(step));
    for (size_t i = 0; i < n; ++i) {
      u[i] = m * u[i] + g[i];
      v[i] += u[i];
      balance[i] -= u[i];
    }
    const std::vector<float> sent = decoded(encode_one(*c, 0, g, step), {1, n});
    const std::vector<uint32_t> indices = nonzero_indices(sent);
    expect_positions(v, indices);
    for (const uint32_t j : indices) {
      EXPECT_EQ(sent[j], v[j]);
      balance[j] += sent[j];
      u[j] = 0.0f;
      v[j] = 0.0f;
    }
    EXPECT_EQ(state_array(*c, "velocity/0"), u) << "step " << step;
    EXPECT_EQ(state_array(*c, "residual/0"), v) << "step " << step;
  }
  for (size_t i = 0; i < n; ++i) balance[i] += v[i];
  return balance;
}

// Top-k sends the k largest |v|.
TEST(CompressTopK, MomentumCorrectionMatchesTheDgcReference) {
  Options options = options_of(Method::kTopK);
  options.density = 0.05;
  options.momentum = 0.9;
  expect_dgc_reference(options, 200, 5, 40, [](const auto& v, const auto& sent) {
    EXPECT_EQ(sent, top_k_reference(v, 10));
  });
}

// ---------------------------------------------------------------- random-k

TEST(CompressRandomK, DrawsKDistinctIndicesThatDependOnTheStepOnly) {
  Options options = options_of(Method::kRandomK);
  options.density = 0.02;
  options.error_feedback = false;
  const size_t n = 5000;
  auto a = make_compressor(options, {{1, n}, {1, n}});
  auto b = make_compressor(options, {{1, n}, {1, n}});
  const std::vector<float> g = normal_vector(n, 9);  // no zeros
  const auto first = nonzero_indices(decoded(encode_one(*a, 0, g, 3, 0), {1, n}));
  EXPECT_EQ(first.size(), 100u);
  EXPECT_EQ(std::set<uint32_t>(first.begin(), first.end()).size(), 100u);
  // Another worker (rank), another compressor: the same positions.
  EXPECT_EQ(nonzero_indices(decoded(encode_one(*b, 0, normal_vector(n, 10), 3, 2), {1, n})), first);
  // Another step or another tensor: other positions.
  EXPECT_NE(nonzero_indices(decoded(encode_one(*a, 0, g, 4), {1, n})), first);
  EXPECT_NE(nonzero_indices(decoded(encode_one(*a, 1, g, 3), {1, n})), first);
}

TEST(CompressRandomK, WithoutErrorFeedbackScalesByNOverK) {
  Options options = options_of(Method::kRandomK);
  options.density = 0.1;
  options.error_feedback = false;
  auto c = make_compressor(options, {{1, 50}});
  const std::vector<float> g = normal_vector(50, 3);
  const std::vector<float> out = decoded(encode_one(*c, 0, g, 0), {1, 50});
  const auto sent = nonzero_indices(out);
  ASSERT_EQ(sent.size(), 5u);
  for (const uint32_t j : sent) EXPECT_EQ(out[j], g[j] * 10.0f);
}

TEST(CompressRandomK, ResidualIsWhatWasNotSent) {
  Options options = options_of(Method::kRandomK);
  options.density = 0.2;
  const size_t n = 101;
  auto c = make_compressor(options, {{1, n}});
  std::vector<float> e(n, 0.0f);
  std::vector<double> sent_total(n, 0.0);
  std::vector<double> grad_total(n, 0.0);
  for (int64_t step = 0; step < 8; ++step) {
    const std::vector<float> g = normal_vector(n, 70 + static_cast<uint64_t>(step));
    const std::vector<float> sent = decoded(encode_one(*c, 0, g, step), {1, n});
    const std::vector<float> residual = state_array(*c, "residual/0");
    for (size_t i = 0; i < n; ++i) {
      const float v = g[i] + e[i];
      EXPECT_EQ(residual[i], v - sent[i]) << i;
      sent_total[i] += sent[i];
      grad_total[i] += g[i];
    }
    e = residual;
  }
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(sent_total[i] + e[i], grad_total[i], 1e-5);
}

// DGC's momentum correction on random-k, by hand: n = 4, k = 2, m = 0.5,
// g0 = (1, 2, 3, 4), g1 = (2, 2, 2, 2). Step 0: u = e = g0, sent g0 at S0,
// u and e zeroed on S0. Step 1: u = 0.5 u + 2 is 2 on S0 and 0.5 g0 + 2
// elsewhere; e += u is 2 on S0 and 1.5 g0 + 2 = (3.5, 5, 6.5, 8) elsewhere.
TEST(CompressRandomK, MomentumCorrectionByHand) {
  Options options = options_of(Method::kRandomK);
  options.density = 0.5;
  options.momentum = 0.5;
  auto c = make_compressor(options, {{1, 4}});
  const std::vector<float> g0 = {1, 2, 3, 4};
  const std::vector<float> sent0 = decoded(encode_one(*c, 0, g0, 0), {1, 4});
  const auto s0 = nonzero_indices(sent0);
  ASSERT_EQ(s0.size(), 2u);
  std::vector<bool> in_s0(4, false);
  for (const uint32_t j : s0) in_s0[j] = true;
  for (size_t j = 0; j < 4; ++j) {
    EXPECT_EQ(sent0[j], in_s0[j] ? g0[j] : 0.0f) << j;
    EXPECT_EQ(state_array(*c, "velocity/0")[j], in_s0[j] ? 0.0f : g0[j]) << j;
    EXPECT_EQ(state_array(*c, "residual/0")[j], in_s0[j] ? 0.0f : g0[j]) << j;
  }
  const std::vector<float> g1 = {2, 2, 2, 2};
  const std::vector<float> sent1 = decoded(encode_one(*c, 0, g1, 1), {1, 4});
  const auto s1 = nonzero_indices(sent1);
  ASSERT_EQ(s1.size(), 2u);
  const std::vector<float> u_off_s0 = {2.5f, 3.0f, 3.5f, 4.0f};
  const std::vector<float> v_off_s0 = {3.5f, 5.0f, 6.5f, 8.0f};
  const std::vector<float> u = state_array(*c, "velocity/0");
  const std::vector<float> e = state_array(*c, "residual/0");
  for (size_t j = 0; j < 4; ++j) {
    const bool in_s1 = std::find(s1.begin(), s1.end(), j) != s1.end();
    const float v = in_s0[j] ? 2.0f : v_off_s0[j];
    EXPECT_EQ(sent1[j], in_s1 ? v : 0.0f) << j;
    EXPECT_EQ(e[j], in_s1 ? 0.0f : v) << j;
    EXPECT_EQ(u[j], in_s1 ? 0.0f : (in_s0[j] ? 2.0f : u_off_s0[j])) << j;
  }
}

// With momentum correction, what was sent plus the residual is, per entry,
// the sum of the velocities accumulated (u = m u + g, masked where sent):
// nothing is lost and nothing counted twice.
TEST(CompressRandomK, MomentumResidualIsWhatWasNotSent) {
  Options options = options_of(Method::kRandomK);
  options.density = 0.1;
  options.momentum = 0.9;
  const std::vector<double> balance = expect_dgc_reference(
      options, 300, 12, 90, [](const auto&, const auto& sent) { EXPECT_EQ(sent.size(), 30u); });
  for (size_t i = 0; i < balance.size(); ++i) EXPECT_NEAR(balance[i], 0.0, 1e-4) << i;
}

// ---------------------------------------------------------------- QSGD

// Bucket b's norm ||g_b|| for buckets of d entries (the last one shorter).
std::vector<double> bucket_norms(std::span<const float> g, size_t d) {
  std::vector<double> norms;
  for (size_t start = 0; start < g.size(); start += d) {
    norms.push_back(testing::norm2(g.subspan(start, std::min(d, g.size() - start))));
  }
  return norms;
}

// d = 10 does not divide n = 64: 7 buckets, the last of 4 entries.
TEST(CompressQsgd, DecodesToItsBucketsLevelGridAndIsUnbiased) {
  Options options = options_of(Method::kQsgd);
  options.levels = 4;
  options.qsgd_bucket = 10;
  const size_t n = 64, d = 10;
  auto c = make_compressor(options, {{8, 8}});
  std::vector<float> g = normal_vector(n, 21);
  for (size_t i = 20; i < 30; ++i) g[i] *= 100.0f;  // a bucket far above the others
  for (size_t i = 40; i < 50; ++i) g[i] = 0.0f;     // and an all-zero one
  const double norm = testing::norm2(g);
  const std::vector<double> norms = bucket_norms(g, d);
  ASSERT_EQ(norms.size(), 7u);
  std::vector<double> mean(n, 0.0);
  const int draws = 4000;
  for (int64_t step = 0; step < draws; ++step) {
    const std::vector<std::byte> message = encode_one(*c, 0, g, step);
    // s, d, m, 7 norms, 3 bits of level + sign per entry.
    EXPECT_EQ(message.size(), 9u + 4 + 4 + 4 + 7 * 4 + (n * 4 + 7) / 8);
    const std::vector<float> out = decoded(message, {8, 8});
    for (size_t i = 0; i < n; ++i) {
      const double norm_b = norms[i / d];
      if (norm_b == 0.0) {
        ASSERT_EQ(out[i], 0.0f) << i;
        continue;
      }
      const double level = std::fabs(out[i]) / norm_b * 4.0;
      ASSERT_NEAR(level, std::round(level), 1e-4) << "step " << step << " entry " << i;
      // Rounds to one of the two levels around s |g| / ||g_b||.
      const double x = std::fabs(g[i]) / norm_b * 4.0;
      ASSERT_LT(std::fabs(std::round(level) - x), 1.0 + 1e-4);
      if (out[i] != 0.0f) {
        ASSERT_EQ(out[i] < 0.0f, g[i] < 0.0f);
      }
      mean[i] += out[i] / draws;
    }
  }
  // Each draw's standard deviation is at most ||g_b|| / (2 s); over 4000
  // draws the mean's is below 0.002 ||g_b||: 5 sigma.
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(mean[i], g[i], 0.01 * norms[i / d]) << i;
  double error = 0.0;
  for (size_t i = 0; i < n; ++i) error += (mean[i] - g[i]) * (mean[i] - g[i]);
  EXPECT_LT(std::sqrt(error), 0.05 * norm);
}

// qsgd_bucket = 0 (and any d >= n) is one bucket: the tensor's norm, the
// same message either way.
TEST(CompressQsgd, BucketZeroIsTheWholeTensor) {
  const size_t n = 100;
  const std::vector<float> g = normal_vector(n, 22);
  auto message_with = [&](size_t bucket) {
    Options options = options_of(Method::kQsgd);
    options.levels = 8;
    options.qsgd_bucket = bucket;
    return encode_one(*make_compressor(options, {{1, n}}), 0, g, 3);
  };
  const std::vector<std::byte> whole = message_with(0);
  EXPECT_EQ(whole, message_with(n));
  EXPECT_EQ(whole, message_with(512));
  ASSERT_EQ(whole.size(), 9u + 4 + 4 + 4 + 4 + (n * 5 + 7) / 8);
  ByteReader reader(whole, "test");
  reader.read_bytes(9, "header");
  EXPECT_EQ(reader.read_u32("levels"), 8u);
  EXPECT_EQ(reader.read_u32("bucket"), n);
  EXPECT_EQ(reader.read_u32("norm count"), 1u);
  EXPECT_EQ(reader.read_f32("norm"), static_cast<float>(testing::norm2(g)));
  const std::vector<float> out = decoded(whole, {1, n});
  for (size_t i = 0; i < n; ++i) {
    const double level = std::fabs(out[i]) / testing::norm2(g) * 8.0;
    ASSERT_NEAR(level, std::round(level), 1e-4) << i;
  }
}

// The point of buckets (Alistarh et al. 2017, Lemma 3.1): E||Q(g) - g||^2 is
// at most min(d / s^2, sqrt(d) / s) ||g||^2, 1.41 ||g||^2 for d = 512, s = 16,
// against 19.8 ||g||^2 with one bucket of n = 100,000. Measured over 200
// draws of a normal gradient (fixed seeds): 0.33 and 14.8 ||g||^2, a ratio
// of 0.023 (each an average over 2 x 10^7 squared errors: far from 0.25).
TEST(CompressQsgd, BucketsCutTheVarianceOfALargeTensor) {
  const size_t n = 100'000;
  const std::vector<float> g = normal_vector(n, 23);
  const double squared_norm = testing::norm2(g) * testing::norm2(g);
  auto variance = [&](size_t bucket) {
    Options options = options_of(Method::kQsgd);
    options.levels = 16;
    options.qsgd_bucket = bucket;
    auto c = make_compressor(options, {{1, n}});
    const int draws = 200;
    double total = 0.0;
    for (int64_t step = 0; step < draws; ++step) {
      const std::vector<float> out = decoded(encode_one(*c, 0, g, step), {1, n});
      total += testing::distance(out, g) * testing::distance(out, g);
    }
    return total / draws / squared_norm;
  };
  const double bucketed = variance(512);
  const double whole = variance(0);
  EXPECT_LT(bucketed, 0.25 * whole) << bucketed << " vs " << whole;
  EXPECT_LT(bucketed, std::sqrt(512.0) / 16);
  EXPECT_LT(whole, std::sqrt(static_cast<double>(n)) / 16);
  RecordProperty("variance_over_squared_norm_d512", std::to_string(bucketed));
  RecordProperty("variance_over_squared_norm_whole", std::to_string(whole));
}

TEST(CompressQsgd, DrawsDependOnTheRank) {
  Options options = options_of(Method::kQsgd);
  options.levels = 2;
  auto c = make_compressor(options, {{1, 500}});
  const std::vector<float> g = normal_vector(500, 2);
  EXPECT_EQ(encode_one(*c, 0, g, 7, 1), encode_one(*c, 0, g, 7, 1));
  EXPECT_NE(encode_one(*c, 0, g, 7, 1), encode_one(*c, 0, g, 7, 2));
}

TEST(CompressQsgd, ZeroGradientDecodesToZero) {
  auto c = make_compressor(options_of(Method::kQsgd), {{1, 33}});
  const std::vector<float> g(33, 0.0f);
  EXPECT_EQ(decoded(encode_one(*c, 0, g, 0), {1, 33}), g);
}

// ---------------------------------------------------------------- sign

TEST(CompressSign, KeepsSignsAndTheMeanMagnitude) {
  Options options = options_of(Method::kSign);
  options.error_feedback = false;
  const size_t n = 77;
  auto c = make_compressor(options, {{7, 11}});
  std::vector<float> g = normal_vector(n, 4);
  g[5] = 0.0f;
  double l1 = 0.0;
  for (const float x : g) l1 += std::fabs(x);
  const auto scale = static_cast<float>(l1 / n);
  const std::vector<std::byte> message = encode_one(*c, 0, g, 0);
  EXPECT_EQ(message.size(), 9u + 4 + 10);
  const std::vector<float> out = decoded(message, {7, 11});
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(out[i], g[i] < 0.0f ? -scale : scale) << i;
}

TEST(CompressSign, ResidualIsWhatWasNotSent) {
  const size_t n = 40;
  auto c = make_compressor(options_of(Method::kSign), {{1, n}});
  std::vector<float> e(n, 0.0f);
  std::vector<double> sent_total(n, 0.0);
  std::vector<double> grad_total(n, 0.0);
  for (int64_t step = 0; step < 10; ++step) {
    const std::vector<float> g = normal_vector(n, 300 + static_cast<uint64_t>(step));
    const std::vector<float> sent = decoded(encode_one(*c, 0, g, step), {1, n});
    const std::vector<float> residual = state_array(*c, "residual/0");
    for (size_t i = 0; i < n; ++i) {
      const float v = g[i] + e[i];
      EXPECT_EQ(residual[i], v - sent[i]) << i;
      sent_total[i] += sent[i];
      grad_total[i] += g[i];
    }
    e = residual;
  }
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(sent_total[i] + e[i], grad_total[i], 1e-4);
}

// ---------------------------------------------------------------- fp16 / bf16

TEST(CompressHalf, RoundTripsWithinTheFormatsPrecision) {
  const std::vector<float> g = normal_vector(1000, 8, 3.0f);
  float max_abs = 0.0f;
  for (const float x : g) max_abs = std::max(max_abs, std::fabs(x));
  for (const Method method : {Method::kFp16, Method::kBf16}) {
    auto c = make_compressor(options_of(method), {{10, 100}});
    const std::vector<std::byte> message = encode_one(*c, 0, g, 0);
    EXPECT_EQ(message.size(), 9u + (method == Method::kFp16 ? 4 : 0) + 2000);
    const std::vector<float> out = decoded(message, {10, 100});
    for (size_t i = 0; i < g.size(); ++i) {
      // fp16: 11 bits of mantissa (relative 2^-11), down to 2^-24 of the
      // scaled range; bf16: 8 bits (2^-8).
      const double tolerance = method == Method::kFp16
                                   ? std::fabs(g[i]) * 0x1p-11 + max_abs * 0x1p-24
                                   : std::fabs(g[i]) * 0x1p-8;
      EXPECT_NEAR(out[i], g[i], tolerance) << to_string(method) << " " << i;
    }
  }
}

TEST(CompressHalf, Fp16DoesNotOverflowAtHugeValues) {
  auto c = make_compressor(options_of(Method::kFp16), {{1, 4}});
  const std::vector<float> g = {1e30f, -3e29f, 5e27f, 0.0f};
  const std::vector<float> out = decoded(encode_one(*c, 0, g, 0), {1, 4});
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_TRUE(std::isfinite(out[i])) << i;
    EXPECT_NEAR(out[i], g[i], std::fabs(g[i]) * 0x1p-11) << i;
  }
}

TEST(CompressHalf, ZeroTensorRoundTrips) {
  auto c = make_compressor(options_of(Method::kFp16), {{1, 3}});
  const std::vector<float> g(3, 0.0f);
  EXPECT_EQ(decoded(encode_one(*c, 0, g, 0), {1, 3}), g);
}

// ---------------------------------------------------------------- PowerSGD

// M of rank <= r: P = M Q spans M's columns, so P Q'^T = P P^T M = M after
// the first step (no warm start needed); tested for rank == r and rank < r.
TEST(CompressPowerSgd, IsExactForAMatrixOfRankAtMostR) {
  struct Case {
    size_t rows, cols, matrix_rank;
    int r;
  };
  for (const Case& k : {Case{40, 30, 2, 2}, Case{64, 50, 1, 3}, Case{33, 70, 4, 4}}) {
    Options options = options_of(Method::kPowerSgd);
    options.rank = k.r;
    auto c = make_compressor(options, {{k.rows, k.cols}});
    ASSERT_TRUE(c->compresses(0));
    const std::vector<float> m = testing::low_rank_matrix(k.rows, k.cols, k.matrix_rank, 17);
    const std::vector<std::byte> message = encode_one(*c, 0, m, 0);
    EXPECT_EQ(message.size(), 9u + 4 + (k.rows + k.cols) * static_cast<size_t>(k.r) * 4);
    const std::vector<float> out = decoded(message, {k.rows, k.cols});
    EXPECT_LT(testing::distance(out, m), 1e-4 * testing::norm2(m))
        << k.rows << " x " << k.cols << " rank " << k.matrix_rank << " r " << k.r;
    // With error feedback the residual is what the message missed.
    const std::vector<float> e = state_array(*c, "residual/0");
    for (size_t i = 0; i < m.size(); ++i) ASSERT_EQ(e[i], m[i] - out[i]) << i;
  }
}

TEST(CompressPowerSgd, ResidualIsWhatWasNotSentForAFullRankMatrix) {
  Options options = options_of(Method::kPowerSgd);
  options.rank = 2;
  auto c = make_compressor(options, {{30, 20}});
  std::vector<float> e(600, 0.0f);
  for (int64_t step = 0; step < 3; ++step) {
    const std::vector<float> g = normal_vector(600, 50 + static_cast<uint64_t>(step));
    const std::vector<float> sent = decoded(encode_one(*c, 0, g, step), {30, 20});
    const std::vector<float> residual = state_array(*c, "residual/0");
    for (size_t i = 0; i < 600; ++i) ASSERT_EQ(residual[i], (g[i] + e[i]) - sent[i]) << i;
    EXPECT_GT(testing::norm2(residual), 0.1);  // rank 2 of a random 30 x 20 misses much
    e = residual;
  }
}

// Warm start: on a fixed matrix the steps are a subspace iteration, whose
// approximation improves toward the best rank-r one.
TEST(CompressPowerSgd, WarmStartImprovesTheApproximationOfAFixedMatrix) {
  Options options = options_of(Method::kPowerSgd);
  options.rank = 1;
  options.error_feedback = false;
  auto c = make_compressor(options, {{30, 30}});
  // A dominant rank-1 part plus noise.
  std::vector<float> m = testing::low_rank_matrix(30, 30, 1, 3);
  const std::vector<float> noise = normal_vector(900, 4, 0.3f);
  for (size_t i = 0; i < m.size(); ++i) m[i] += noise[i];
  std::vector<double> errors;
  for (int64_t step = 0; step < 6; ++step) {
    errors.push_back(testing::distance(decoded(encode_one(*c, 0, m, step), {30, 30}), m));
  }
  EXPECT_LT(errors.back(), errors.front());
  EXPECT_NEAR(errors[5], errors[4], 1e-3 * errors[4]);  // converged
}

TEST(CompressPowerSgd, CompressesOnlyWhereItSavesEnough) {
  Options options = options_of(Method::kPowerSgd);
  options.rank = 4;
  options.min_size = 50;
  auto c = make_compressor(options, {{10, 10}, {100, 100}, {1, 10000}, {7, 7}, {17, 20}});
  EXPECT_FALSE(c->compresses(0));  // (10 + 10) 4 2 = 160 >= 100
  EXPECT_TRUE(c->compresses(1));   // 1600 < 10000
  EXPECT_FALSE(c->compresses(2));  // a vector: (1 + 10000) 1 2 >= 10000
  EXPECT_FALSE(c->compresses(3));  // 49 floats < min_size
  EXPECT_TRUE(c->compresses(4));   // 37 * 4 * 2 = 296 < 340
}

}  // namespace
}  // namespace dtrain::compress
