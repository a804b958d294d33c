// reduce() over FakeGroup (ranks as threads): every rank gets bit-identical
// sums, equal to the serial reference (each rank's encode() decoded and
// summed in rank order), over world sizes {1, 2, 3, 5} and tensors of 0, 1,
// an odd number and ~1000 floats in one call; the payload counts match the
// bytes the group saw.
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>

#include "compress/compress_internal.h"
#include "compress/compress_test_util.h"
#include "compress/compressor.h"
#include "compress/low_rank.h"
#include "core/rng.h"
#include "testing/fake_group.h"

namespace dtrain::compress {
namespace {

using dtrain::testing::FakeGroup;
using dtrain::testing::run_ranks;
using testing::encode_one;
using testing::normal_vector;
using testing::options_of;

constexpr int64_t kSteps = 3;

std::vector<TensorLayout> layouts_for(Method method) {
  if (method == Method::kPowerSgd) return {{40, 30}, {17, 20}, {64, 50}};
  return {{1, 1}, {1, 7}, {1, 0}, {3, 333}};
}

Options reduce_options(Method method) {
  Options options = options_of(method);
  options.min_size = method == Method::kPowerSgd ? 1 : 0;
  options.density = 0.1;
  options.levels = 8;
  options.qsgd_bucket = 100;  // {3, 333}: 10 buckets, the last of 99 entries
  options.rank = 2;
  return options;
}

std::vector<float> gradient(const TensorLayout& layout, int rank, size_t tensor, int64_t step) {
  return normal_vector(layout.numel(), 1000 * static_cast<uint64_t>(rank) + 100 * tensor +
                                           static_cast<uint64_t>(step));
}

// results[rank][step][tensor] after reduce() over `world` ranks.
using Results = std::vector<std::vector<std::vector<std::vector<float>>>>;

struct ReduceRun {
  Results results;
  std::vector<uint64_t> payload;      // per rank, as the compressor counted
  std::vector<uint64_t> group_bytes;  // per rank, as the group counted
};

ReduceRun run_reduce(const Options& options, int world) {
  const std::vector<TensorLayout> layouts = layouts_for(options.method);
  ReduceRun run;
  run.results.resize(static_cast<size_t>(world));
  run.payload.resize(static_cast<size_t>(world));
  run.group_bytes = run_ranks(world, [&](FakeGroup& group) {
    auto c = make_compressor(options, layouts);
    std::vector<size_t> tensors(layouts.size());
    for (size_t t = 0; t < layouts.size(); ++t) tensors[t] = t;
    auto& mine = run.results[static_cast<size_t>(group.rank())];
    for (int64_t step = 0; step < kSteps; ++step) {
      std::vector<std::vector<float>> grads;
      for (size_t t = 0; t < layouts.size(); ++t) {
        grads.push_back(gradient(layouts[t], group.rank(), t, step));
      }
      std::vector<std::span<float>> spans(grads.begin(), grads.end());
      c->reduce(tensors, spans, group, step);
      mine.push_back(grads);
    }
    run.payload[static_cast<size_t>(group.rank())] = c->payload_bytes();
  });
  return run;
}

// The serial reference: each rank's compressor encodes each tensor; the
// messages are decoded and summed in rank order.
std::vector<std::vector<std::vector<float>>> serial_reference(const Options& options, int world) {
  const std::vector<TensorLayout> layouts = layouts_for(options.method);
  std::vector<std::unique_ptr<Compressor>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(make_compressor(options, layouts));
  std::vector<std::vector<std::vector<float>>> sums;
  for (int64_t step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> sum;
    for (const auto& l : layouts) sum.emplace_back(l.numel(), 0.0f);
    for (int r = 0; r < world; ++r) {
      for (size_t t = 0; t < layouts.size(); ++t) {
        const auto message = encode_one(*ranks[static_cast<size_t>(r)], t,
                                        gradient(layouts[t], r, t, step), step, r);
        decode_add(message, layouts[t], 1.0f, sum[t], "reference");
      }
    }
    sums.push_back(sum);
  }
  return sums;
}

void expect_identical_on_every_rank(const Results& results) {
  for (size_t r = 1; r < results.size(); ++r) {
    ASSERT_EQ(results[r], results[0]) << "rank " << r << " differs from rank 0";
  }
}

class CompressReduce : public ::testing::TestWithParam<std::tuple<Method, bool, int>> {};

// top-k, random-k, QSGD and sign: exactly the serial reference.
TEST_P(CompressReduce, MatchesTheSerialReferenceOnEveryRank) {
  const auto [method, error_feedback, world] = GetParam();
  Options options = reduce_options(method);
  options.error_feedback = error_feedback;
  const ReduceRun run = run_reduce(options, world);
  expect_identical_on_every_rank(run.results);
  const auto reference = serial_reference(options, world);
  for (int64_t step = 0; step < kSteps; ++step) {
    EXPECT_EQ(run.results[0][static_cast<size_t>(step)], reference[static_cast<size_t>(step)])
        << "step " << step;
  }
  // The sums are not trivially zero.
  EXPECT_GT(testing::norm2(run.results[0][0][3]), 0.0);
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(run.payload[static_cast<size_t>(r)], run.group_bytes[static_cast<size_t>(r)]);
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, CompressReduce,
                         ::testing::Combine(::testing::Values(Method::kTopK, Method::kRandomK,
                                                              Method::kQsgd, Method::kSign),
                                            ::testing::Bool(), ::testing::Values(1, 2, 3, 5)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) ? "_ef_" : "_noef_") +
                                  std::to_string(std::get<2>(info.param)) + "ranks";
                         });

TEST(CompressReduce, MomentumCorrectionMatchesTheSerialReference) {
  for (const Method method : {Method::kTopK, Method::kRandomK}) {
    Options options = reduce_options(method);
    options.momentum = 0.9;
    options.warmup_steps = 2;
    const ReduceRun run = run_reduce(options, 3);
    expect_identical_on_every_rank(run.results);
    const auto reference = serial_reference(options, 3);
    for (int64_t step = 0; step < kSteps; ++step) {
      EXPECT_EQ(run.results[0][static_cast<size_t>(step)], reference[static_cast<size_t>(step)])
          << to_string(method) << " step " << step;
    }
  }
}

TEST(CompressReduceRandomK, EveryRankSendsTheSamePositions) {
  Options options = reduce_options(Method::kRandomK);
  options.error_feedback = false;
  const ReduceRun run = run_reduce(options, 3);
  expect_identical_on_every_rank(run.results);
  // The sum is non-zero exactly at the k drawn positions (the three ranks'
  // values never cancel): positions drawn per rank would leave up to 3k.
  const auto& sum = run.results[0][0][3];
  size_t nonzero = 0;
  for (const float v : sum) nonzero += v != 0.0f ? 1 : 0;
  EXPECT_EQ(nonzero, 100u);  // ceil(0.1 * 999)
  EXPECT_EQ(run.payload[0], 4u * (1 + 1 + 0 + 100) * kSteps);
}

// fp16 / bf16: the group's 16-bit allreduce; within the format's precision
// of the exact sum.
TEST(CompressReduceHalf, SumsWithinTheFormatsPrecision) {
  for (const Method method : {Method::kFp16, Method::kBf16}) {
    for (const int world : {1, 3, 4}) {
      const ReduceRun run = run_reduce(reduce_options(method), world);
      expect_identical_on_every_rank(run.results);
      const std::vector<TensorLayout> layouts = layouts_for(method);
      for (size_t t = 0; t < layouts.size(); ++t) {
        for (size_t i = 0; i < layouts[t].numel(); ++i) {
          double exact = 0.0;
          double magnitude = 0.0;
          for (int r = 0; r < world; ++r) {
            const float g = gradient(layouts[t], r, t, 0)[i];
            exact += g;
            magnitude += std::fabs(g);
          }
          const double tolerance = magnitude * (method == Method::kFp16 ? 0x1p-10 : 0x1p-7) + 1e-6;
          EXPECT_NEAR(run.results[0][0][t][i], exact, tolerance)
              << to_string(method) << " tensor " << t << " entry " << i;
        }
      }
      EXPECT_EQ(run.payload[0], 2u * (1 + 7 + 0 + 999) * kSteps);
      EXPECT_EQ(run.payload[0], run.group_bytes[0]);
    }
  }
}

// PowerSGD's serial reference: the steps of powersgd.cpp's header with the
// sums over ranks done in rank order, in one process.
std::vector<std::vector<std::vector<float>>> powersgd_reference(const Options& options, int world) {
  const std::vector<TensorLayout> layouts = layouts_for(Method::kPowerSgd);
  const auto w = static_cast<size_t>(world);
  std::vector<std::vector<std::vector<float>>> residual(
      w, std::vector<std::vector<float>>(layouts.size()));
  std::vector<std::vector<float>> q(layouts.size());
  std::vector<std::vector<std::vector<float>>> sums;
  for (int64_t step = 0; step < kSteps; ++step) {
    std::vector<std::vector<float>> sum;
    for (size_t t = 0; t < layouts.size(); ++t) {
      const size_t rows = layouts[t].rows;
      const size_t cols = layouts[t].cols;
      const auto r = static_cast<size_t>(options.rank);
      if (q[t].empty()) {
        Rng rng(detail::mix_seed({options.seed, t}));
        for (size_t j = 0; j < cols * r; ++j) q[t].push_back(rng.normal());
      }
      detail::orthogonalize_columns(q[t], cols, r);
      std::vector<std::vector<float>> m(w);
      std::vector<float> p(rows * r, 0.0f);
      for (size_t k = 0; k < w; ++k) {
        m[k] = gradient(layouts[t], static_cast<int>(k), t, step);
        if (options.error_feedback && !residual[k][t].empty()) {
          for (size_t j = 0; j < m[k].size(); ++j) m[k][j] = residual[k][t][j] + m[k][j];
        }
        std::vector<float> pk(rows * r);
        detail::multiply(m[k], rows, cols, q[t], r, pk);
        for (size_t j = 0; j < p.size(); ++j) p[j] += pk[j];
      }
      detail::orthogonalize_columns(p, rows, r);
      std::vector<float> q_sum(cols * r, 0.0f);
      for (size_t k = 0; k < w; ++k) {
        std::vector<float> qk(cols * r);
        detail::multiply_transposed(m[k], rows, cols, p, r, qk);
        for (size_t j = 0; j < q_sum.size(); ++j) q_sum[j] += qk[j];
      }
      for (size_t j = 0; j < q_sum.size(); ++j) q[t][j] = q_sum[j] / static_cast<float>(world);
      std::vector<float> approximation(rows * cols);
      detail::multiply_outer(p, rows, q[t], cols, r, approximation);
      for (size_t k = 0; k < w; ++k) {
        residual[k][t].resize(rows * cols);
        for (size_t j = 0; j < approximation.size(); ++j) {
          residual[k][t][j] = m[k][j] - approximation[j];
        }
      }
      for (float& v : approximation) v *= static_cast<float>(world);
      sum.push_back(approximation);
    }
    sums.push_back(sum);
  }
  return sums;
}

TEST(CompressReducePowerSgd, MatchesTheSerialReferenceOnEveryRank) {
  for (const int world : {1, 2, 3, 5}) {
    const Options options = reduce_options(Method::kPowerSgd);
    const ReduceRun run = run_reduce(options, world);
    expect_identical_on_every_rank(run.results);
    const auto reference = powersgd_reference(options, world);
    for (int64_t step = 0; step < kSteps; ++step) {
      for (size_t t = 0; t < 3; ++t) {
        const auto& got = run.results[0][static_cast<size_t>(step)][t];
        const auto& want = reference[static_cast<size_t>(step)][t];
        EXPECT_LE(testing::distance(got, want), 1e-5 * testing::norm2(want))
            << world << " ranks, step " << step << ", tensor " << t;
      }
    }
    // (rows + cols) r 4 bytes per matrix per step: P and Q.
    const uint64_t per_step = ((40 + 30) + (17 + 20) + (64 + 50)) * 2 * 4;
    EXPECT_EQ(run.payload[0], per_step * kSteps);
    EXPECT_EQ(run.payload[0], run.group_bytes[0]);
  }
}

// One rank: reduce() is encode() + decode_add() (W = 1).
TEST(CompressReducePowerSgd, OneRankEqualsEncodeAndDecode) {
  const Options options = reduce_options(Method::kPowerSgd);
  const ReduceRun run = run_reduce(options, 1);
  const auto reference = serial_reference(options, 1);
  for (int64_t step = 0; step < kSteps; ++step) {
    EXPECT_EQ(run.results[0][static_cast<size_t>(step)], reference[static_cast<size_t>(step)]);
  }
}

// Three ranks with the same matrix of rank <= r: the sum is 3 M.
TEST(CompressReducePowerSgd, IsExactForTheSameLowRankMatrixOnThreeRanks) {
  Options options = options_of(Method::kPowerSgd);
  options.rank = 3;
  const std::vector<float> m = testing::low_rank_matrix(50, 40, 3, 8);
  std::mutex mutex;
  std::vector<std::vector<float>> sums(3);
  run_ranks(3, [&](FakeGroup& group) {
    auto c = make_compressor(options, {{50, 40}});
    std::vector<float> g = m;
    const std::vector<size_t> tensors = {0};
    const std::vector<std::span<float>> grads = {g};
    c->reduce(tensors, grads, group, 0);
    std::lock_guard lock(mutex);
    sums[static_cast<size_t>(group.rank())] = g;
  });
  std::vector<float> expected = m;
  for (float& v : expected) v *= 3.0f;
  for (const auto& sum : sums) {
    EXPECT_LT(testing::distance(sum, expected), 1e-4 * testing::norm2(expected));
  }
}

// A group whose rank `liar` sends garbage in its allgather contribution.
class CorruptingGroup final : public Group {
 public:
  CorruptingGroup(FakeGroup& inner, int liar, size_t byte)
      : inner_(inner), liar_(liar), byte_(byte) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void allreduce_sum(std::span<float> data) override { inner_.allreduce_sum(data); }
  void allreduce_sum_16(std::span<float> data, bool bf16) override {
    inner_.allreduce_sum_16(data, bf16);
  }
  std::vector<std::vector<std::byte>> allgather_bytes(std::span<const std::byte> mine) override {
    std::vector<std::byte> sent(mine.begin(), mine.end());
    if (rank() == liar_) sent[byte_] ^= std::byte{0xff};
    return inner_.allgather_bytes(sent);
  }
  void sparse_allreduce_sum(std::span<const uint32_t> indices, std::span<const float> values,
                            std::span<float> out) override {
    inner_.sparse_allreduce_sum(indices, values, out);
  }

 private:
  FakeGroup& inner_;  // the caller's, alive for this group's scope
  int liar_;
  size_t byte_;
};

// QSGD and sign decode their peers' messages: a malformed one fails the
// reduce on every rank with a CommError naming the peer.
TEST(CompressReduceAllgather, MalformedPeerMessageIsACommErrorNamingThePeer) {
  for (const Method method : {Method::kQsgd, Method::kSign}) {
    // The tag, rows, and the top byte of the first body field (QSGD: levels
    // above 2^24; sign: a negative scale).
    for (const size_t byte : {size_t{0}, size_t{1}, size_t{12}}) {
      std::mutex mutex;
      std::vector<int> blamed;
      run_ranks(3, [&](FakeGroup& fake) {
        CorruptingGroup group(fake, 1, byte);
        auto c = make_compressor(reduce_options(method), {{3, 333}});
        std::vector<float> g = gradient({3, 333}, group.rank(), 0, 0);
        const std::vector<size_t> tensors = {0};
        const std::vector<std::span<float>> grads = {g};
        try {
          c->reduce(tensors, grads, group, 0);
        } catch (const CommError& e) {
          std::lock_guard lock(mutex);
          blamed.push_back(e.peer());
          EXPECT_NE(std::string(e.what()).find("message of rank 1"), std::string::npos) << e.what();
        }
      });
      EXPECT_EQ(blamed, (std::vector<int>{1, 1, 1})) << to_string(method) << " byte " << byte;
    }
  }
}

TEST(CompressFakeGroup, RanksThatDisagreeAllFailAlike) {
  std::mutex mutex;
  std::vector<int> blamed;
  run_ranks(3, [&](FakeGroup& group) {
    std::vector<float> data(group.rank() == 2 ? 5 : 4, 1.0f);
    try {
      group.allreduce_sum(data);
    } catch (const CommError& e) {
      std::lock_guard lock(mutex);
      blamed.push_back(e.peer());
    }
  });
  EXPECT_EQ(blamed, (std::vector<int>{2, 2, 2}));
}

}  // namespace
}  // namespace dtrain::compress
