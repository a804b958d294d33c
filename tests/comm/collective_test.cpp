#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <string>

#include "collective_test_util.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::run_ranks;
using testing::serial_reduce;

constexpr size_t kChunkBytes = 64;  // 16 floats: small buffers already span many chunks

// Counts {0, 1, odd, below the world size, several chunks per ring block}.
std::vector<size_t> counts_for(int n) {
  return {0, 1, 7, static_cast<size_t>(std::max(0, n - 1)),
          kChunkBytes / 4 * 3 * static_cast<size_t>(n) + 5};
}

CommunicatorOptions options(size_t small_allreduce_bytes, uint32_t group) {
  CommunicatorOptions o;
  o.timeout = std::chrono::milliseconds(20000);
  o.chunk_bytes = kChunkBytes;
  o.pair_chunk_bytes = 0;  // chunk_bytes with two ranks too
  o.small_allreduce_bytes = small_allreduce_bytes;
  o.pair_exchange_bytes = 0;  // keep the chosen algorithm with two ranks too
  o.group_id = group;
  return o;
}

class CollectiveWorlds : public ::testing::TestWithParam<int> {};

TEST_P(CollectiveWorlds, AllreduceMatchesSerialReferenceWithBothAlgorithms) {
  const int n = GetParam();
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator ring(transport, options(0, 1));
    Communicator halving(transport, options(size_t{1} << 30, 2));
    for (Communicator* comm : {&ring, &halving}) {
      for (const size_t count : counts_for(n)) {
        for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
          std::vector<float> data = rank_input(rank, count);
          comm->allreduce(data, op);
          EXPECT_EQ(data, serial_reduce(n, count, op))
              << "n=" << n << " count=" << count << " op=" << to_string(op)
              << (comm == &ring ? " ring" : " halving-doubling");
        }
      }
    }
  });
}

TEST_P(CollectiveWorlds, BroadcastFromEveryRoot) {
  const int n = GetParam();
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    for (const size_t count : counts_for(n)) {
      for (int root = 0; root < n; ++root) {
        std::vector<float> data = rank_input(rank, count);
        comm.broadcast(data, root);
        EXPECT_EQ(data, rank_input(root, count))
            << "n=" << n << " count=" << count << " root=" << root;
      }
    }
  });
}

TEST_P(CollectiveWorlds, AllgatherConcatenatesInRankOrder) {
  const int n = GetParam();
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    for (const size_t count : counts_for(n)) {
      const std::vector<float> mine = rank_input(rank, count);
      std::vector<float> out(count * static_cast<size_t>(n), -100.0f);
      comm.allgather(mine, out);
      std::vector<float> expected;
      for (int r = 0; r < n; ++r) {
        const std::vector<float> theirs = rank_input(r, count);
        expected.insert(expected.end(), theirs.begin(), theirs.end());
      }
      EXPECT_EQ(out, expected) << "n=" << n << " count=" << count;
    }
  });
}

TEST_P(CollectiveWorlds, AllgathervWithUnequalAndZeroCounts) {
  const int n = GetParam();
  // Rank r contributes (r * 13) % 40 floats: 0 for rank 0, several chunks for others.
  std::vector<size_t> counts(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) counts[static_cast<size_t>(r)] = static_cast<size_t>((r * 13) % 40);
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    const std::vector<float> mine = rank_input(rank, counts[static_cast<size_t>(rank)]);
    std::vector<float> out(total, -100.0f);
    comm.allgatherv(mine, out, counts);
    std::vector<float> expected;
    for (int r = 0; r < n; ++r) {
      const std::vector<float> theirs = rank_input(r, counts[static_cast<size_t>(r)]);
      expected.insert(expected.end(), theirs.begin(), theirs.end());
    }
    EXPECT_EQ(out, expected);
  });
}

TEST_P(CollectiveWorlds, ReduceScatterGivesEachRankItsBlock) {
  const int n = GetParam();
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    for (const size_t block : {size_t{0}, size_t{1}, size_t{3}, size_t{37}}) {
      for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
        const size_t total = block * static_cast<size_t>(n);
        const std::vector<float> input = rank_input(rank, total);
        std::vector<float> output(block, -100.0f);
        comm.reduce_scatter(input, output, op);
        const std::vector<float> all = serial_reduce(n, total, op);
        const std::vector<float> expected(all.begin() + static_cast<long>(block) * rank,
                                          all.begin() + static_cast<long>(block) * (rank + 1));
        EXPECT_EQ(output, expected) << "n=" << n << " block=" << block << " op=" << to_string(op);
      }
    }
  });
}

TEST_P(CollectiveWorlds, BarrierWaitsForEveryRank) {
  const int n = GetParam();
  std::atomic<int> entered{0};
  run_ranks(n, [&](int, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    for (int round = 1; round <= 3; ++round) {
      entered.fetch_add(1);
      comm.barrier();
      EXPECT_GE(entered.load(), round * n);
      comm.barrier();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, CollectiveWorlds, ::testing::Values(1, 2, 3, 4, 5, 7));

TEST(Collective, LargeAllreduceWithDefaultOptions) {
  const size_t count = 100003;
  run_ranks(3, [&](int rank, Transport& transport) {
    Communicator comm(transport);
    std::vector<float> data = rank_input(rank, count);
    comm.allreduce(data, ReduceOp::kSum);
    EXPECT_EQ(data, serial_reduce(3, count, ReduceOp::kSum));
  });
}

TEST(Collective, PointToPointFloatsAndBytes) {
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    if (rank == 0) {
      comm.send(1, rank_input(0, 50), 3);
      const std::string text = "hello";
      comm.send_bytes(1, std::as_bytes(std::span(text)));
    } else {
      std::vector<float> got(50);
      comm.recv(0, got, 3);
      EXPECT_EQ(got, rank_input(0, 50));
      const std::vector<std::byte> bytes = comm.recv_bytes(0);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), "hello");
    }
  });
}

TEST(Collective, LocalArgumentErrorsThrowUsageErrorAndKeepTheCommunicator) {
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options(256, 1));
    std::vector<float> mine(3), out(5);
    EXPECT_THROW(comm.allgather(mine, out), UsageError);
    EXPECT_THROW(comm.broadcast(mine, 2), UsageError);
    EXPECT_FALSE(comm.failed());
    std::vector<float> data = rank_input(rank, 9);
    comm.allreduce(data, ReduceOp::kSum);
    EXPECT_EQ(data, serial_reduce(2, 9, ReduceOp::kSum));
  });
}

}  // namespace
}  // namespace dtrain::comm
