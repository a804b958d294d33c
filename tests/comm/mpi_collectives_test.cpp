// MpiCollectives against the serial reference. Runs under mpirun (ctest
// comm_mpi_np2, comm_mpi_np3); main() owns the MPI session.
#include "comm/collectives/mpi_collectives.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>

#include "collective_test_util.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::serial_reduce;

const std::vector<size_t> kCounts = {0, 1, 7, 100003};

TEST(MpiCollectives, AllreduceMatchesSerialReference) {
  MpiCollectives mpi;
  for (const size_t count : kCounts) {
    for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
      std::vector<float> data = rank_input(mpi.rank(), count);
      mpi.allreduce(data, op);
      EXPECT_EQ(data, serial_reduce(mpi.size(), count, op)) << "count=" << count;
    }
  }
}

TEST(MpiCollectives, BroadcastAllgatherReduceScatterAndBarrier) {
  MpiCollectives mpi;
  const int n = mpi.size();
  for (const size_t count : kCounts) {
    for (int root = 0; root < n; ++root) {
      std::vector<float> data = rank_input(mpi.rank(), count);
      mpi.broadcast(data, root);
      EXPECT_EQ(data, rank_input(root, count));
    }
    std::vector<float> out(count * static_cast<size_t>(n));
    mpi.allgather(rank_input(mpi.rank(), count), out);
    std::vector<float> expected;
    for (int r = 0; r < n; ++r) {
      const auto theirs = rank_input(r, count);
      expected.insert(expected.end(), theirs.begin(), theirs.end());
    }
    EXPECT_EQ(out, expected);
    std::vector<float> block(count);
    mpi.reduce_scatter(rank_input(mpi.rank(), count * static_cast<size_t>(n)), block,
                       ReduceOp::kSum);
    const auto all = serial_reduce(n, count * static_cast<size_t>(n), ReduceOp::kSum);
    EXPECT_EQ(block, std::vector<float>(all.begin() + static_cast<long>(count) * mpi.rank(),
                                        all.begin() + static_cast<long>(count) * (mpi.rank() + 1)));
  }
  std::vector<size_t> counts(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) counts[static_cast<size_t>(r)] = static_cast<size_t>(r * 5);
  std::vector<float> out(std::accumulate(counts.begin(), counts.end(), size_t{0}));
  mpi.allgatherv(rank_input(mpi.rank(), counts[static_cast<size_t>(mpi.rank())]), out, counts);
  std::vector<float> expected;
  for (int r = 0; r < n; ++r) {
    const auto theirs = rank_input(r, counts[static_cast<size_t>(r)]);
    expected.insert(expected.end(), theirs.begin(), theirs.end());
  }
  EXPECT_EQ(out, expected);
  mpi.barrier();
  EXPECT_THROW(mpi.broadcast(out, n), UsageError);
}

// A strategy sees only the interface: both backends give the same answer.
TEST(MpiCollectives, UsableThroughTheCollectivesInterface) {
  MpiCollectives mpi;
  Collectives& collectives = mpi;
  std::vector<float> data = rank_input(collectives.rank(), 33);
  collectives.allreduce(data, ReduceOp::kMean);
  EXPECT_EQ(data, serial_reduce(collectives.size(), 33, ReduceOp::kMean));
}

}  // namespace
}  // namespace dtrain::comm

int main(int argc, char** argv) {
  dtrain::comm::MpiSession session(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    // One rank reports; the others still fail the process on a failure.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    std::unique_ptr<::testing::TestEventListener> quiet(
        listeners.Release(listeners.default_result_printer()));
  }
  const int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any_failed;
}
