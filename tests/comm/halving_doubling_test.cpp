// Halving-doubling (halving_doubling.h), pipelined in chunks, ranks as
// threads over the in-memory transport:
// - any chunk size and window gives the one-message-per-round result bit for
//   bit (the chunking changes no reduction order), at 2..8 ranks (the fold
//   at non-powers of two), sizes {0, 1, odd, fewer than the ranks, several
//   chunks with a ragged last one}, every op, with inputs whose sums round;
// - all ranks end bit-identical, and at 4 ranks block b holds the documented
//   order (x_b + x_{b^2}) + (x_{b^1} + x_{b^3});
// - the Communicator sends 2 log2(n) messages per rank for a large
//   power-of-two allreduce (the ring's 2(n-1) when the option is off or the
//   world is not a power of two);
// - a count mismatch in the middle of a pipelined round fails every rank
//   naming both calls.
// Over real processes on loopback tcp: ring_tcp_multiprocess_test.cpp.
#include "comm/collectives/halving_doubling.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "collective_test_util.h"
#include "comm/collectives/collective_protocol.h"
#include "comm/collectives/communicator.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::run_ranks;

// Floats of mixed magnitudes: their sums round, so any change in the order
// of the additions shows in the bits.
std::vector<float> rounding_input(int rank, size_t count) {
  std::mt19937 rng(static_cast<unsigned>(1000 + rank));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = unit(rng) * (i % 3 == 0 ? 1e4f : 1e-3f);
  return v;
}

// Every rank's result of one halving-doubling allreduce.
std::vector<std::vector<float>> run_halving_doubling(int n, size_t count, ReduceOp op, size_t chunk,
                                                     size_t window) {
  std::vector<std::vector<float>> results(static_cast<size_t>(n));
  run_ranks(n, [&](int rank, Transport& transport) {
    CollectiveChannel channel(transport, /*tag=*/9,
                              OpDescriptor{.reduce = op, .count = count, .seq = 1},
                              Deadline::after(std::chrono::seconds(20)));
    std::vector<float> data = rounding_input(rank, count);
    halving_doubling_allreduce(channel, data, op, chunk, window);
    results[static_cast<size_t>(rank)] = std::move(data);
  });
  return results;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST(HalvingDoubling, ChunkingChangesNoBitAtAnyWorldSize) {
  constexpr size_t kChunk = 16;
  for (const int n : {2, 3, 4, 5, 6, 8}) {
    for (const size_t count : {size_t{0}, size_t{1}, size_t{5}, 5 * kChunk + 3, 37 * kChunk + 11}) {
      for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
        // One message per round: the reference.
        const auto whole = run_halving_doubling(n, count, op, count + 1, 1);
        for (int r = 1; r < n; ++r) {
          ASSERT_TRUE(same_bits(whole[0], whole[static_cast<size_t>(r)]))
              << "n=" << n << " count=" << count << " rank " << r << " differs from rank 0";
        }
        for (const size_t window : {size_t{1}, size_t{3}}) {
          const auto chunked = run_halving_doubling(n, count, op, kChunk, window);
          for (int r = 0; r < n; ++r) {
            EXPECT_TRUE(same_bits(whole[0], chunked[static_cast<size_t>(r)]))
                << "n=" << n << " count=" << count << " " << to_string(op) << " window=" << window
                << " rank " << r;
          }
        }
      }
    }
  }
}

TEST(HalvingDoubling, FourRanksSumInTheDocumentedOrder) {
  const size_t count = 4 * 40 + 3;
  const auto results = run_halving_doubling(4, count, ReduceOp::kSum, 7, 2);
  std::vector<std::vector<float>> x;
  for (int r = 0; r < 4; ++r) x.push_back(rounding_input(r, count));
  const std::vector<size_t> offsets = block_offsets(count, 4);
  std::vector<float> expected(count);
  for (size_t b = 0; b < 4; ++b) {
    for (size_t i = offsets[b]; i < offsets[b + 1]; ++i) {
      expected[i] = (x[b][i] + x[b ^ 2][i]) + (x[b ^ 1][i] + x[b ^ 3][i]);
    }
  }
  // The ring's order differs, and so does the result: the check has teeth.
  std::vector<float> serial = x[0];
  for (int r = 1; r < 4; ++r) {
    for (size_t i = 0; i < count; ++i) serial[i] += x[static_cast<size_t>(r)][i];
  }
  ASSERT_FALSE(same_bits(serial, expected));
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(same_bits(results[static_cast<size_t>(r)], expected));
}

TEST(HalvingDoubling, TheCommunicatorTakesItAtPowersOfTwoAboveTwoRanks) {
  const auto messages = [](int n, size_t count, size_t bytes) {
    return testing::messages_per_allreduce(
        n, count, &CommunicatorOptions::pow2_halving_doubling_bytes, bytes);
  };

  const CommunicatorOptions defaults;
  const size_t large = 4 * defaults.small_allreduce_bytes / sizeof(float) + 3;
  EXPECT_EQ(messages(4, large, defaults.pow2_halving_doubling_bytes), 4);
  EXPECT_EQ(messages(8, large, defaults.pow2_halving_doubling_bytes), 6);
  // Off, above the limit, or not a power of two: the ring, 2(n-1).
  EXPECT_EQ(messages(4, large, 0), 6);
  EXPECT_EQ(messages(4, large, large * sizeof(float) - 1), 6);
  EXPECT_EQ(messages(3, large, defaults.pow2_halving_doubling_bytes), 4);
}

TEST(HalvingDoubling, ACountMismatchMidRoundFailsEveryRankNamingBothCalls) {
  CommunicatorOptions options;
  options.small_allreduce_bytes = 0;
  options.chunk_bytes = 64;  // 16 floats: many chunks per round
  options.timeout = std::chrono::seconds(20);
  testing::expect_count_mismatch_named_everywhere(4, 1000, 2, options);
}

}  // namespace
}  // namespace dtrain::comm
