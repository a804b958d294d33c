// Communicator::submit(): arbitrary work on the communicator's background
// thread, whose collectives run inline and take their sequence numbers when
// they execute.
#include <gtest/gtest.h>

#include <array>
#include <stdexcept>
#include <string>

#include "collective_test_util.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::run_ranks;
using testing::serial_reduce;

constexpr auto kWait = std::chrono::seconds(30);

CommunicatorOptions options() {
  CommunicatorOptions o;
  o.timeout = std::chrono::seconds(20);
  o.chunk_bytes = 64;
  o.pair_chunk_bytes = 0;         // chunk_bytes with two ranks too
  o.small_allreduce_bytes = 128;  // both algorithms below
  o.pair_exchange_bytes = 0;      // keep the chosen algorithm with two ranks too
  return o;
}

TEST(CommunicatorSubmit, BodyRunsCollectivesInlineInterleavedWithAsyncWork) {
  constexpr int kRanks = 3;
  run_ranks(kRanks, [](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> first = rank_input(rank, 100);
    std::vector<float> inside_small = rank_input(rank, 5);
    std::vector<float> inside_large = rank_input(rank, 301);
    const std::vector<float> mine = rank_input(rank, 7);
    std::vector<float> gathered(7 * kRanks);
    std::vector<float> last = rank_input(rank, 64);
    std::vector<float> blocking = rank_input(rank, 33);

    const Work before = comm.allreduce_async(first, ReduceOp::kSum);
    const Work body = comm.submit("two allreduces and an allgather", [&] {
      comm.allreduce(inside_small, ReduceOp::kSum);
      comm.allgather(mine, gathered);
      comm.allreduce(inside_large, ReduceOp::kMax);
    });
    const Work after = comm.allreduce_async(last, ReduceOp::kMean);
    comm.allreduce(blocking, ReduceOp::kSum);  // waits for the three above
    EXPECT_TRUE(before.is_completed());
    EXPECT_TRUE(body.is_completed());
    EXPECT_TRUE(after.is_completed());
    before.wait(Deadline::after(kWait));
    body.wait(Deadline::after(kWait));
    after.wait(Deadline::after(kWait));

    EXPECT_EQ(first, serial_reduce(kRanks, 100, ReduceOp::kSum));
    EXPECT_EQ(inside_small, serial_reduce(kRanks, 5, ReduceOp::kSum));
    EXPECT_EQ(inside_large, serial_reduce(kRanks, 301, ReduceOp::kMax));
    EXPECT_EQ(last, serial_reduce(kRanks, 64, ReduceOp::kMean));
    EXPECT_EQ(blocking, serial_reduce(kRanks, 33, ReduceOp::kSum));
    for (int r = 0; r < kRanks; ++r) {
      const std::vector<float> expected = rank_input(r, 7);
      EXPECT_TRUE(std::equal(expected.begin(), expected.end(), gathered.begin() + 7 * r))
          << "block of rank " << r;
    }
  });
}

TEST(CommunicatorSubmit, SequenceNumbersAreTakenAtExecution) {
  // The body's allreduce executes first (the blocking call waits for the
  // queue), so it is #1 and the blocking allreduce #2 on every rank, whatever
  // the threads' timing; the mismatch of the second names those numbers.
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data(10, 1.0f);
    const Work queued = comm.submit("one allreduce", [&] { comm.allreduce(data, ReduceOp::kSum); });
    std::vector<float> other(rank == 0 ? 4 : 6, 1.0f);
    try {
      comm.allreduce(other, ReduceOp::kSum);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
    queued.wait(Deadline::after(kWait));
    EXPECT_EQ(data, std::vector<float>(10, 2.0f));
  });
  const std::string both = errors[0] + " | " + errors[1];
  EXPECT_NE(both.find("allreduce #2 (4 floats, sum)"), std::string::npos) << both;
  EXPECT_NE(both.find("allreduce #2 (6 floats, sum)"), std::string::npos) << both;
}

TEST(CommunicatorSubmit, MismatchInsideABodyFailsNamingBothSides) {
  std::vector<std::string> errors(2);
  std::array<bool, 2> failed{};  // not vector<bool>: its bits share bytes across threads
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data(rank == 0 ? 1000 : 10, 1.0f);
    const Work work = comm.submit("mismatched", [&] { comm.allreduce(data, ReduceOp::kSum); });
    try {
      work.wait(Deadline::after(kWait));
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
    failed[static_cast<size_t>(rank)] = comm.failed();
    std::vector<float> later(3, 1.0f);
    EXPECT_THROW(comm.allreduce(later, ReduceOp::kSum), CommError);
  });
  for (int r = 0; r < 2; ++r) {
    const std::string& e = errors[static_cast<size_t>(r)];
    EXPECT_NE(e.find("allreduce #1 (1000 floats, sum)"), std::string::npos) << e;
    EXPECT_NE(e.find("allreduce #1 (10 floats, sum)"), std::string::npos) << e;
    EXPECT_TRUE(failed[static_cast<size_t>(r)]) << "rank " << r;
  }
}

TEST(CommunicatorSubmit, OtherExceptionsCompleteTheWorkAndLeaveTheCommunicatorUsable) {
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    const Work work = comm.submit("throws", [] { throw std::runtime_error("not a comm error"); });
    EXPECT_THROW(work.wait(Deadline::after(kWait)), std::runtime_error);
    EXPECT_FALSE(comm.failed());
    std::vector<float> data = rank_input(rank, 9);
    comm.allreduce(data, ReduceOp::kSum);
    EXPECT_EQ(data, serial_reduce(2, 9, ReduceOp::kSum));
  });
}

TEST(CommunicatorSubmit, BodyDoesNotRunOnAFailedCommunicator) {
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data(rank == 0 ? 4 : 5, 1.0f);
    EXPECT_THROW(comm.allreduce(data, ReduceOp::kSum), CommError);
    bool ran = false;
    const Work work = comm.submit("after failure", [&] { ran = true; });
    EXPECT_THROW(work.wait(Deadline::after(kWait)), CommError);
    EXPECT_FALSE(ran);
  });
}

}  // namespace
}  // namespace dtrain::comm
