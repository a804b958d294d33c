// Mismatched calls, dead ranks, asynchronous work and sub-groups.
#include <gtest/gtest.h>

#include <string>

#include "collective_test_util.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::run_ranks;
using testing::serial_reduce;

CommunicatorOptions short_timeout(std::chrono::milliseconds timeout) {
  CommunicatorOptions o;
  o.timeout = timeout;
  o.chunk_bytes = 256;
  o.pair_chunk_bytes = 0;  // chunk_bytes with two ranks too
  return o;
}

// Runs body on n threads and returns each rank's error message ("" if none).
std::vector<std::string> errors_of(int n, const std::function<void(int, Transport&)>& body) {
  std::vector<std::string> errors(static_cast<size_t>(n));
  run_ranks(n, [&](int rank, Transport& transport) {
    try {
      body(rank, transport);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  });
  return errors;
}

TEST(CollectiveMismatch, AllreduceAgainstBroadcastNamesBothSides) {
  const auto errors = errors_of(2, [](int rank, Transport& transport) {
    Communicator comm(transport, short_timeout(std::chrono::seconds(20)));
    if (rank == 0) {
      std::vector<float> data(1000, 1.0f);
      comm.allreduce(data, ReduceOp::kSum);
    } else {
      std::vector<float> data(10, 1.0f);
      comm.broadcast(data, 1);  // the root sends and returns
    }
  });
  EXPECT_NE(errors[0].find("allreduce #1 (1000 floats, sum) on rank 0 does not match "
                           "broadcast #1 (10 floats, root 1) from rank 1"),
            std::string::npos)
      << errors[0];
}

TEST(CollectiveMismatch, DifferentCountsFailEveryRank) {
  for (const size_t small_bytes : {size_t{0}, size_t{1} << 20}) {  // ring, halving-doubling
    const auto errors = errors_of(3, [&](int rank, Transport& transport) {
      CommunicatorOptions o = short_timeout(std::chrono::seconds(20));
      o.small_allreduce_bytes = small_bytes;
      o.pair_exchange_bytes = 0;  // keep the chosen algorithm with two ranks too
      Communicator comm(transport, o);
      std::vector<float> data(rank == 2 ? 10 : 1000, 1.0f);
      comm.allreduce(data, ReduceOp::kSum);
    });
    for (int r = 0; r < 3; ++r) {
      EXPECT_NE(errors[static_cast<size_t>(r)].find("does not match"), std::string::npos)
          << "rank " << r << ": " << errors[static_cast<size_t>(r)];
    }
    // Rank 2 either detects the mismatch itself or learns it from the rank
    // that did first ("rank 0 gave up on the group: ..."); either way its
    // message names its own call and the disagreeing one.
    EXPECT_NE(errors[2].find("allreduce #1 (10 floats, sum)"), std::string::npos) << errors[2];
    EXPECT_NE(errors[2].find("allreduce #1 (1000 floats, sum)"), std::string::npos) << errors[2];
  }
}

TEST(CollectiveFailure, KilledRankIsNamedByItsNeighbours) {
  InProcHub hub(4);
  std::vector<std::string> errors(4);
  std::vector<int> peers(4, -2);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < 4; ++r) {
      threads.emplace_back([&, r] {
        auto transport = hub.transport(r);
        if (r == 2) {
          hub.kill(2);
          return;
        }
        CommunicatorOptions options = short_timeout(std::chrono::seconds(3));
        options.pow2_halving_doubling_bytes = 0;  // the ring at 4 ranks too
        Communicator comm(*transport, options);
        std::vector<float> data(100000, 1.0f);  // ring, many chunks
        try {
          comm.allreduce(data, ReduceOp::kSum);
        } catch (const CommError& e) {
          errors[static_cast<size_t>(r)] = e.what();
          peers[static_cast<size_t>(r)] = e.peer();
        }
        // Failed for good: the next call throws without communicating.
        EXPECT_THROW(comm.barrier(), CommError);
      });
    }
  }
  // Ring neighbours of rank 2 receive from it (3) or send to it (1).
  EXPECT_EQ(peers[1], 2) << errors[1];
  EXPECT_EQ(peers[3], 2) << errors[3];
  EXPECT_NE(errors[3].find("rank 2 died"), std::string::npos) << errors[3];
  // Rank 0 awaits rank 3, not the dead rank: rank 3's abort tells it which
  // rank broke the group, long before its deadline.
  EXPECT_EQ(peers[0], 2) << errors[0];
  EXPECT_NE(errors[0].find("gave up on the group"), std::string::npos) << errors[0];
}

TEST(CollectiveAsync, QueuedAllreducesCompleteInCallOrder) {
  run_ranks(3, [](int rank, Transport& transport) {
    CommunicatorOptions o = short_timeout(std::chrono::seconds(20));
    o.small_allreduce_bytes = 64;
    o.pair_exchange_bytes = 0;  // keep the chosen algorithm with two ranks too
    Communicator comm(transport, o);
    // sum then max on the same buffer: run in the other order, the result differs.
    std::vector<float> a = rank_input(rank, 301);
    std::vector<float> b = rank_input(rank, 5);
    std::vector<float> c = rank_input(rank, 4000);
    Work w1 = comm.allreduce_async(a, ReduceOp::kSum);
    Work w2 = comm.allreduce_async(b, ReduceOp::kMean);
    Work w3 = comm.allreduce_async(a, ReduceOp::kMax);
    Work w4 = comm.allreduce_async(c, ReduceOp::kSum);
    std::vector<float> d = rank_input(rank, 17);
    comm.allreduce(d, ReduceOp::kMax);  // waits for the queue, then runs
    for (const Work* w : {&w1, &w2, &w3, &w4}) {
      w->wait(Deadline::after(std::chrono::seconds(20)));
      EXPECT_TRUE(w->is_completed());
    }
    EXPECT_EQ(a, serial_reduce(3, 301, ReduceOp::kSum));
    EXPECT_EQ(b, serial_reduce(3, 5, ReduceOp::kMean));
    EXPECT_EQ(c, serial_reduce(3, 4000, ReduceOp::kSum));
    EXPECT_EQ(d, serial_reduce(3, 17, ReduceOp::kMax));
  });
}

TEST(CollectiveAsync, PendingWorkFailsWithTheErrorAndLaterCallsThrow) {
  InProcHub hub(2);
  std::vector<std::string> errors;
  {
    std::jthread dead([&] {
      auto transport = hub.transport(1);
      hub.kill(1);
    });
  }
  auto transport = hub.transport(0);
  Communicator comm(*transport, short_timeout(std::chrono::seconds(5)));
  std::vector<float> a(10, 1.0f), b(10, 1.0f);
  Work w1 = comm.allreduce_async(a, ReduceOp::kSum);
  Work w2 = comm.allreduce_async(b, ReduceOp::kSum);
  for (const Work* w : {&w1, &w2}) {
    try {
      w->wait(Deadline::after(std::chrono::seconds(20)));
      ADD_FAILURE() << "work completed although rank 1 is dead";
    } catch (const CommError& e) {
      errors.emplace_back(e.what());
    }
  }
  EXPECT_NE(errors[0].find("rank 1 died"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("failed earlier"), std::string::npos) << errors[1];
  EXPECT_TRUE(comm.failed());
  EXPECT_THROW(comm.allreduce(a, ReduceOp::kSum), CommError);
}

TEST(CollectiveAsync, DestructionFailsQueuedWork) {
  InProcHub hub(2);
  auto transport = hub.transport(0);
  Work first, second;
  std::vector<float> a(10, 1.0f), b(10, 1.0f);
  {
    // Rank 1 never joins: the first allreduce runs until its deadline.
    Communicator comm(*transport, short_timeout(std::chrono::milliseconds(300)));
    first = comm.allreduce_async(a, ReduceOp::kSum);
    second = comm.allreduce_async(b, ReduceOp::kSum);
  }
  EXPECT_TRUE(first.is_completed());
  EXPECT_TRUE(second.is_completed());
  EXPECT_THROW(first.wait(Deadline::never()), CommError);
  EXPECT_THROW(second.wait(Deadline::never()), CommError);
}

TEST(CollectiveGroups, SplitAndSubgroupDoNotInterfere) {
  run_ranks(5, [](int rank, Transport& transport) {
    Communicator world(transport, short_timeout(std::chrono::seconds(20)));
    // Colours: even ranks and odd ranks, ordered by descending rank.
    std::unique_ptr<Communicator> half = world.split(rank % 2, -rank);
    ASSERT_NE(half, nullptr);
    const int half_size = rank % 2 == 0 ? 3 : 2;
    EXPECT_EQ(half->size(), half_size);
    // Highest rank of the colour gets group rank 0.
    EXPECT_EQ(half->rank(), (rank % 2 == 0 ? (4 - rank) / 2 : (3 - rank) / 2));
    std::unique_ptr<Communicator> pair = world.subgroup({3, 1});
    EXPECT_EQ(pair != nullptr, rank == 1 || rank == 3);
    std::unique_ptr<Communicator> none = world.split(rank == 0 ? -1 : 0, 0);
    EXPECT_EQ(none == nullptr, rank == 0);

    // Interleave traffic of all groups: each must reduce only its members.
    std::vector<float> w = rank_input(rank, 999);
    std::vector<float> h(40, static_cast<float>(rank));
    std::vector<float> p(7, static_cast<float>(rank + 1));
    Work async_world = world.allreduce_async(w, ReduceOp::kSum);
    half->allreduce(h, ReduceOp::kSum);
    if (pair) {
      pair->allreduce(p, ReduceOp::kMax);
      EXPECT_EQ(pair->rank(), rank == 3 ? 0 : 1);
      EXPECT_EQ(p, std::vector<float>(7, 4.0f));
    }
    async_world.wait(Deadline::after(std::chrono::seconds(20)));
    EXPECT_EQ(w, serial_reduce(5, 999, ReduceOp::kSum));
    EXPECT_EQ(h, std::vector<float>(40, rank % 2 == 0 ? 6.0f : 4.0f));
    if (none) {
      std::vector<float> q(3, 1.0f);
      none->allreduce(q, ReduceOp::kSum);
      EXPECT_EQ(q, std::vector<float>(3, 4.0f));
    }
  });
}

}  // namespace
}  // namespace dtrain::comm
