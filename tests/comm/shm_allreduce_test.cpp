// The shared-memory allreduce with ranks as threads and as forked processes.
#include "comm/collectives/shm_allreduce.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <latch>

#include "collective_test_util.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::rank_input;
using testing::serial_reduce;

// Segment names must be unique per job: tests running in parallel processes
// use the pid, and a counter keeps the cases of one process apart.
std::string unique_job(const std::string& name) {
  static std::atomic<int> counter{0};
  return fmt::format("test-{}-{}-{}", getpid(), name, counter.fetch_add(1));
}

ShmAllreduceOptions shm_options(const std::string& job, size_t capacity_bytes) {
  ShmAllreduceOptions o;
  o.job_id = job;
  o.capacity_bytes = capacity_bytes;
  return o;
}

TEST(ShmAllreduce, ThreadsMatchTheSerialReference) {
  for (const int n : {1, 2, 3, 4, 5}) {
    const std::string job = unique_job("threads");
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < n; ++r) {
        threads.emplace_back([&, r] {
          try {
            // 64 floats per piece: the larger counts take many pieces.
            ShmAllreduce shm(r, n, shm_options(job, 256),
                             Deadline::after(std::chrono::seconds(20)));
            for (const size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{63}, size_t{1000}}) {
              for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
                std::vector<float> data = rank_input(r, count);
                shm.allreduce(data, op, Deadline::after(std::chrono::seconds(20)));
                EXPECT_EQ(data, serial_reduce(n, count, op)) << "n=" << n << " count=" << count;
              }
            }
          } catch (...) {
            errors[static_cast<size_t>(r)] = std::current_exception();
          }
        });
      }
    }
    for (const auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  }
}

// Forks ranks 1..n-1; each runs `child(rank)` and exits 0 on success.
std::vector<pid_t> fork_ranks(int n, const std::function<bool(int)>& child) {
  std::vector<pid_t> pids;
  for (int r = 1; r < n; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      bool ok = false;
      try {
        ok = child(r);
      } catch (...) {
        ok = false;
      }
      _exit(ok ? 0 : 1);
    }
    pids.push_back(pid);
  }
  return pids;
}

int exit_status(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(ShmAllreduce, ForkedProcessesMatchTheSerialReference) {
  const int n = 3;
  const std::string job = unique_job("fork");
  const size_t count = 100001;  // several 64 KiB pieces
  const auto run = [&](int rank) {
    ShmAllreduce shm(rank, n, shm_options(job, 64 << 10),
                     Deadline::after(std::chrono::seconds(20)));
    bool ok = true;
    for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      std::vector<float> data = rank_input(rank, count);
      shm.allreduce(data, op, Deadline::after(std::chrono::seconds(20)));
      ok = ok && data == serial_reduce(n, count, op);
    }
    return ok;
  };
  const std::vector<pid_t> pids = fork_ranks(n, run);
  EXPECT_TRUE(run(0));
  for (const pid_t pid : pids) EXPECT_EQ(exit_status(pid), 0);
}

TEST(ShmAllreduce, KilledProcessIsNamed) {
  const int n = 3;
  const std::string job = unique_job("kill");
  // Rank 2 maps the segments, then dies by SIGKILL before it arrives.
  const std::vector<pid_t> pids = fork_ranks(n, [&](int rank) {
    ShmAllreduce shm(rank, n, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
    if (rank == 2) raise(SIGKILL);
    std::vector<float> data(100, 1.0f);
    try {
      shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::seconds(20)));
    } catch (const CommError& e) {
      return e.peer() == 2;
    }
    return false;
  });
  ShmAllreduce shm(0, n, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
  std::vector<float> data(100, 1.0f);
  try {
    shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::seconds(20)));
    ADD_FAILURE() << "allreduce completed without rank 2";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 2) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 2 (pid"), std::string::npos) << e.what();
  }
  EXPECT_EQ(exit_status(pids[0]), 0);
  EXPECT_EQ(exit_status(pids[1]), 128 + SIGKILL);
  // Failed for good.
  EXPECT_THROW(shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::seconds(1))),
               CommError);
}

TEST(ShmAllreduce, AbsentRankTimesOutNamingIt) {
  const std::string job = unique_job("timeout");
  std::latch done(1);
  std::jthread idle([&] {
    ShmAllreduce shm(1, 2, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
    done.wait();  // alive, but never calls allreduce
  });
  ShmAllreduce shm(0, 2, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
  std::vector<float> data(10, 1.0f);
  try {
    shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::milliseconds(200)),
                  "allreduce #4");
    ADD_FAILURE() << "allreduce completed without rank 1";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("allreduce #4 with rank 1: timed out"), std::string::npos)
        << e.what();
  }
  done.count_down();
}

TEST(ShmAllreduce, MismatchedCountsAreNamed) {
  const std::string job = unique_job("mismatch");
  std::string error_of_rank1;
  std::jthread other([&] {
    ShmAllreduce shm(1, 2, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
    std::vector<float> data(7, 1.0f);
    try {
      shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::seconds(20)));
    } catch (const CommError& e) {
      error_of_rank1 = e.what();
    }
  });
  ShmAllreduce shm(0, 2, shm_options(job, 4096), Deadline::after(std::chrono::seconds(20)));
  std::vector<float> data(9, 1.0f);
  EXPECT_THROW(shm.allreduce(data, ReduceOp::kSum, Deadline::after(std::chrono::seconds(20))),
               CommError);
  other.join();
  EXPECT_NE(error_of_rank1.find("(7 floats, sum) on rank 1 does not match"), std::string::npos)
      << error_of_rank1;
}

// Runs body(rank, comm) on two threads sharing memory and returns each rank's
// error message ("" if none).
std::vector<std::string> shm_errors(const std::function<void(int, Communicator&)>& body) {
  const std::string job = unique_job("comm-mismatch");
  std::vector<std::string> errors(2);
  testing::run_ranks(2, [&](int rank, Transport& transport) {
    CommunicatorOptions o;
    o.job_id = job;
    o.timeout = std::chrono::seconds(20);
    Communicator comm(transport, o);
    EXPECT_TRUE(comm.uses_shm());
    try {
      body(rank, comm);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  });
  return errors;
}

TEST(ShmAllreduce, AllreduceAgainstAnotherCollectiveNamesBothSides) {
  const auto errors = shm_errors([](int rank, Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    if (rank == 0)
      comm.allreduce(data, ReduceOp::kSum);
    else
      comm.broadcast(data, 0);  // waits for rank 0 over the transport
  });
  // Operation #1 was the host check.
  const std::string both =
      "allreduce #2 (100 floats, sum) on rank 0 does not match broadcast #2 "
      "(100 floats, root 0) on rank 1";
  EXPECT_NE(errors[0].find(both), std::string::npos) << errors[0];
  // Rank 1 learns it from rank 0's abort instead of waiting for its deadline.
  EXPECT_NE(errors[1].find(both), std::string::npos) << errors[1];
}

TEST(ShmAllreduce, PeerThatRanAheadIsReportedWithWhatItRuns) {
  const auto errors = shm_errors([](int rank, Communicator& comm) {
    std::vector<float> data(100, 1.0f);
    if (rank == 0) {
      comm.allreduce(data, ReduceOp::kSum);
    } else {
      comm.broadcast(data, 1);  // the root sends and returns
      comm.barrier();
    }
  });
  // Rank 0 sees rank 1 either still announcing its broadcast or already past
  // it (it needs nothing from rank 0); both name rank 1's collective.
  const bool saw_broadcast =
      errors[0].find(
          "allreduce #2 (100 floats, sum) on rank 0 does not match broadcast #2 "
          "(100 floats, root 1) on rank 1") != std::string::npos;
  const bool saw_it_ahead =
      errors[0].find(
          "allreduce #2 (100 floats, sum) on rank 0 does not match rank 1, which "
          "finished it without this rank and runs barrier #3") != std::string::npos;
  EXPECT_TRUE(saw_broadcast || saw_it_ahead) << errors[0];
  EXPECT_NE(errors[1].find("barrier #3"), std::string::npos) << errors[1];
}

TEST(ShmAllreduce, CommunicatorPicksSharedMemoryOnOneHost) {
  const std::string job = unique_job("comm");
  testing::run_ranks(3, [&](int rank, Transport& transport) {
    CommunicatorOptions o;
    o.job_id = job;
    o.shm_capacity_bytes = 4096;
    Communicator comm(transport, o);
    EXPECT_TRUE(comm.uses_shm());
    std::vector<float> data = rank_input(rank, 5000);
    comm.allreduce(data, ReduceOp::kMean);
    EXPECT_EQ(data, serial_reduce(3, 5000, ReduceOp::kMean));
    o.shm_allreduce = false;
    o.group_id = 2;
    Communicator plain(transport, o);
    EXPECT_FALSE(plain.uses_shm());
  });
}

}  // namespace
}  // namespace dtrain::comm
