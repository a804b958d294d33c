// The ring's send window (ring_collectives.h, CommunicatorOptions::
// ring_window_bytes), ranks as threads over the in-memory transport:
// - every ring collective equals the serial reference at windows of 1, 2
//   and 3 chunks and with no bound, at world sizes 2..5, for sizes with
//   ragged and empty blocks;
// - a rank's sends never run more than the window ahead of its receives, and
//   do reach it (the pipeline is used, not serialised): a counting transport
//   records the largest lead of sends over completed receives;
// - with two ranks, allreduces up to pair_chunk_max_bytes go in
//   pair_chunk_bytes (counted messages), larger ones and other worlds in
//   chunk_bytes, every result against the serial reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "collective_test_util.h"
#include "comm/collectives/collective_protocol.h"
#include "comm/collectives/communicator.h"
#include "comm/collectives/ring_collectives.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::CountingTransport;
using testing::rank_input;
using testing::run_ranks;
using testing::serial_reduce;

constexpr size_t kChunkBytes = 64;  // 16 floats

CommunicatorOptions window_options(size_t window_chunks) {
  CommunicatorOptions o;
  o.timeout = std::chrono::milliseconds(20000);
  o.chunk_bytes = kChunkBytes;
  o.pair_chunk_bytes = 0;       // chunk_bytes with two ranks too
  o.small_allreduce_bytes = 0;  // always the ring
  o.pair_exchange_bytes = 0;    // keep the chosen algorithm with two ranks too
  o.ring_window_bytes = window_chunks * kChunkBytes;
  return o;
}

class RingWindowWorlds : public ::testing::TestWithParam<int> {};

TEST_P(RingWindowWorlds, EveryRingCollectiveMatchesTheReferenceAtEveryWindow) {
  const int n = GetParam();
  const auto un = static_cast<size_t>(n);
  const size_t chunk = kChunkBytes / sizeof(float);
  // Empty blocks, one chunk, ragged blocks of several chunks.
  const std::vector<size_t> counts = {1, 7, 5 * chunk * un + 3, 9 * chunk * un};
  run_ranks(n, [&](int rank, Transport& transport) {
    for (const size_t window : {size_t{1}, size_t{2}, size_t{3}, size_t{1} << 30}) {
      Communicator comm(transport, window_options(window));
      for (const size_t count : counts) {
        const std::string where = fmt::format("n={} window={} count={}", n, window, count);
        std::vector<float> data = rank_input(rank, count);
        comm.allreduce(data, ReduceOp::kSum);
        EXPECT_EQ(data, serial_reduce(n, count, ReduceOp::kSum)) << where << " allreduce";

        const std::vector<float> mine = rank_input(rank, count);
        std::vector<float> gathered(count * un);
        comm.allgather(mine, gathered);
        for (int r = 0; r < n; ++r) {
          EXPECT_TRUE(std::equal(gathered.begin() + static_cast<std::ptrdiff_t>(count * r),
                                 gathered.begin() + static_cast<std::ptrdiff_t>(count * (r + 1)),
                                 rank_input(r, count).begin()))
              << where << " allgather, rank " << r << "'s part";
        }

        const std::vector<float> input = rank_input(rank, count * un);
        std::vector<float> block(count);
        comm.reduce_scatter(input, block, ReduceOp::kSum);
        const std::vector<float> total = serial_reduce(n, count * un, ReduceOp::kSum);
        EXPECT_TRUE(std::equal(
            block.begin(), block.end(),
            total.begin() + static_cast<std::ptrdiff_t>(count * static_cast<size_t>(rank))))
            << where << " reduce_scatter";

        std::vector<float> halves = rank_input(rank, count);
        comm.allreduce16(halves, /*bf16=*/true);  // small integers: exact in bf16
        EXPECT_EQ(halves, serial_reduce(n, count, ReduceOp::kSum)) << where << " allreduce16";
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, RingWindowWorlds, ::testing::Values(2, 3, 4, 5));

TEST(RingWindow, SendsLeadTheReceivesByExactlyTheWindow) {
  for (const int n : {2, 3, 5}) {
    const auto un = static_cast<size_t>(n);
    const size_t chunk = kChunkBytes / sizeof(float);
    // Equal blocks of 8 chunks each: more than every window below.
    const size_t count = 8 * chunk * un;
    for (const size_t window : {size_t{1}, size_t{3}, size_t{8}}) {
      std::vector<long long> leads(un, -1);
      run_ranks(n, [&](int rank, Transport& inner) {
        CountingTransport transport(inner);
        CollectiveChannel channel(transport, /*tag=*/7, OpDescriptor{.count = count, .seq = 1},
                                  Deadline::after(std::chrono::seconds(20)));
        std::vector<float> data = rank_input(rank, count);
        ring_allreduce(channel, data, ReduceOp::kSum, chunk, window);
        EXPECT_EQ(data, serial_reduce(n, count, ReduceOp::kSum));
        leads[static_cast<size_t>(rank)] = transport.lead();
      });
      for (int r = 0; r < n; ++r) {
        EXPECT_EQ(leads[static_cast<size_t>(r)], static_cast<long long>(window))
            << "n=" << n << " window=" << window << " rank " << r;
      }
    }
  }
}

// Messages rank 0 sends for one ring allreduce of `count` floats over `n`
// ranks in chunks of kChunkBytes, two ranks in chunks of `pair_chunk_bytes`
// up to `pair_max_bytes` (the sum checked against serial_reduce).
long long pair_chunk_messages(int n, size_t count, size_t pair_chunk_bytes, size_t pair_max_bytes) {
  CommunicatorOptions options = window_options(1000);
  options.pair_chunk_bytes = pair_chunk_bytes;
  options.pair_chunk_max_bytes = pair_max_bytes;
  return testing::messages_per_allreduce(n, count, options);
}

TEST(RingPairChunks, TwoRanksUpToTheLimitSendPairChunks) {
  const size_t pair_chunk = 4 * kChunkBytes;  // 64 floats
  const size_t limit = 4 * pair_chunk;        // 256 floats
  const size_t floats = limit / sizeof(float);
  // Two ranks, at the limit: each half is 2 pair chunks, sent in the
  // reduce-scatter and again in the allgather.
  EXPECT_EQ(pair_chunk_messages(2, floats, pair_chunk, limit), 4);
  // Ragged: 130 floats per half, 3 pair chunks (the last of 2 floats).
  EXPECT_EQ(pair_chunk_messages(2, 260, pair_chunk, 260 * sizeof(float)), 6);
  // Off, above the limit, or with three ranks: kChunkBytes (16 floats).
  EXPECT_EQ(pair_chunk_messages(2, floats, 0, limit), 16);
  EXPECT_EQ(pair_chunk_messages(2, floats + 2, pair_chunk, limit), 18);
  EXPECT_EQ(pair_chunk_messages(3, 3 * 64, pair_chunk, ~size_t{0}), 2 * 2 * 4);
}

}  // namespace
}  // namespace dtrain::comm
