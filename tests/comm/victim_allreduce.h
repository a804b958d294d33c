// The child side of the victim tests over real processes: every rank loops
// allreduces of `count` ones on `comm` until one fails; the last rank (the
// victim) prints kReady after its first, and the parent then kills or stops
// it (multiprocess_job.h, run_victim_test). A survivor's failure must name
// the victim and the operation, come from detection rather than a timeout
// when the victim was killed, and arrive within `bound`.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/collectives/communicator.h"
#include "core/error.h"
#include "multiprocess_job.h"

namespace dtrain::comm::test {

inline void allreduce_until_victim_fails(Communicator& comm, size_t count, bool killed,
                                         std::chrono::milliseconds bound) {
  const int victim = comm.size() - 1;
  std::vector<float> data(count);
  for (int i = 0;; ++i) {
    std::fill(data.begin(), data.end(), 1.0f);
    const auto started = Deadline::Clock::now();
    try {
      comm.allreduce(data, ReduceOp::kSum);
    } catch (const CommError& e) {
      const auto took = Deadline::Clock::now() - started;
      const std::string what = e.what();
      ASSERT_NE(comm.rank(), victim) << "the victim failed: " << what;
      std::printf("survivor %d after %d allreduces: %s\n", comm.rank(), i, what.c_str());
      EXPECT_EQ(e.peer(), victim) << what;
      EXPECT_NE(what.find(fmt::format("rank {}", victim)), std::string::npos) << what;
      EXPECT_NE(what.find("allreduce"), std::string::npos) << what;
      // A dead process closes its connections: detected, not waited out.
      if (killed) {
        EXPECT_EQ(dynamic_cast<const TimeoutError*>(&e), nullptr) << what;
      }
      EXPECT_LT(took, bound) << what;
      return;
    }
    ASSERT_EQ(data, std::vector<float>(data.size(), static_cast<float>(comm.size())));
    if (comm.rank() == victim && i == 0) {
      std::printf("%s\n", kReady);
      std::fflush(stdout);
    }
    // Bounded: the parent signals the victim right after its first allreduce.
    ASSERT_LT(i, 100000) << "the victim was never stopped";
  }
}

}  // namespace dtrain::comm::test
