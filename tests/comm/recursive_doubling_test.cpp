// Recursive doubling (recursive_doubling.h) and the two-rank exchange that
// the Communicator builds on it (CommunicatorOptions::pair_exchange_bytes),
// ranks as threads over the in-memory transport:
// - against the serial reference at 1, 2, 4 and 8 ranks, sizes {0, 1, odd,
//   several chunks with a ragged last one}, every op, windows of 1 and 3;
// - partners end bit-identical where the order of the operands matters
//   (kMax of a NaN on either side);
// - the Communicator sends one message per rank for a small two-rank
//   allreduce (two through halving-doubling or the ring), and none of that
//   above the limit or with more ranks;
// - a count mismatch fails both ranks naming both calls.
// Over real processes on loopback tcp: ring_tcp_multiprocess_test.cpp.
#include "comm/collectives/recursive_doubling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "collective_test_util.h"
#include "comm/collectives/collective_protocol.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::run_ranks;
using testing::serial_reduce;

constexpr size_t kChunk = 16;  // floats per message

CollectiveChannel make_channel(Transport& transport, size_t count, ReduceOp op) {
  return CollectiveChannel(transport, /*tag=*/9,
                           OpDescriptor{.reduce = op, .count = count, .seq = 1},
                           Deadline::after(std::chrono::seconds(20)));
}

TEST(RecursiveDoubling, MatchesTheSerialReferenceAtPowersOfTwo) {
  for (const int n : {1, 2, 4, 8}) {
    for (const size_t count : {size_t{0}, size_t{1}, size_t{7}, 5 * kChunk + 3}) {
      for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
        for (const size_t window : {size_t{1}, size_t{3}}) {
          run_ranks(n, [&](int rank, Transport& transport) {
            CollectiveChannel channel = make_channel(transport, count, op);
            std::vector<float> data = rank_input(rank, count);
            recursive_doubling_allreduce(channel, data, op, kChunk, window);
            EXPECT_EQ(data, serial_reduce(n, count, op))
                << "n=" << n << " count=" << count << " " << to_string(op) << " window=" << window
                << " rank " << rank;
          });
        }
      }
    }
  }
}

TEST(RecursiveDoubling, PartnersEndBitIdenticalWhenTheOperandOrderMatters) {
  // max(NaN, 1) is NaN and max(1, NaN) is 1 (std::max keeps its first
  // argument unless the second is larger): partners that each put their own
  // value first would disagree at both positions.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> results(2);
  run_ranks(2, [&](int rank, Transport& transport) {
    std::vector<float> data =
        rank == 0 ? std::vector<float>{nan, 1.0f, 2.0f} : std::vector<float>{1.0f, nan, 3.0f};
    CollectiveChannel channel = make_channel(transport, data.size(), ReduceOp::kMax);
    recursive_doubling_allreduce(channel, data, ReduceOp::kMax, kChunk, 1);
    results[static_cast<size_t>(rank)] = data;
  });
  ASSERT_EQ(results[0].size(), results[1].size());
  EXPECT_EQ(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(float)),
            0);
  // The lower rank's value is the left operand: max(NaN, 1), max(1, NaN).
  EXPECT_TRUE(std::isnan(results[0][0]));
  EXPECT_EQ(results[0][1], 1.0f);
  EXPECT_EQ(results[0][2], 3.0f);
}

TEST(PairExchange, TwoRanksExchangeSmallBuffersInOneMessageEach) {
  const auto messages = [](int n, size_t count, size_t bytes) {
    return testing::messages_per_allreduce(n, count, &CommunicatorOptions::pair_exchange_bytes,
                                           bytes);
  };

  const CommunicatorOptions defaults;
  const size_t limit_floats = defaults.pair_exchange_bytes / sizeof(float);
  EXPECT_EQ(messages(2, 1024, defaults.pair_exchange_bytes), 1);
  EXPECT_EQ(messages(2, limit_floats, defaults.pair_exchange_bytes), 1);
  // Off, above the limit, or with more ranks: two rounds.
  EXPECT_EQ(messages(2, 1024, 0), 2);
  EXPECT_EQ(messages(2, limit_floats + 1, defaults.pair_exchange_bytes), 2);
  EXPECT_GT(messages(4, 1024, defaults.pair_exchange_bytes), 1);
}

TEST(PairExchange, ACountMismatchFailsBothRanksNamingBothCalls) {
  testing::expect_count_mismatch_named_everywhere(2, 100, 1, CommunicatorOptions{});
}

}  // namespace
}  // namespace dtrain::comm
