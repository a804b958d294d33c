// ThreadTeam (core/thread_team.h): every member runs once per run() on a
// thread of its own, member 0 on the caller; the first exception by member
// index is rethrown after every member finished; the team keeps working after
// a throw; the destructor stops and joins parked workers, whether or not they
// ever ran.
#include "core/thread_team.h"

#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace dtrain {
namespace {

TEST(ThreadTeam, RunsEveryMemberOncePerRunOnItsOwnThread) {
  ThreadTeam team(3);
  EXPECT_EQ(team.count(), 3);
  std::vector<int> seen(3, 0);
  std::vector<std::thread::id> ids(3);
  for (int round = 0; round < 50; ++round) {
    team.run([&](int64_t m) {
      seen[static_cast<size_t>(m)]++;
      ids[static_cast<size_t>(m)] = std::this_thread::get_id();
    });
  }
  EXPECT_EQ(seen, (std::vector<int>{50, 50, 50}));
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  EXPECT_EQ(std::set<std::thread::id>(ids.begin(), ids.end()).size(), 3u);
}

TEST(ThreadTeam, RethrowsTheLowestMembersErrorAfterAllFinishedAndKeepsWorking) {
  ThreadTeam team(3);
  std::vector<int> finished(3, 0);
  try {
    team.run([&](int64_t m) {
      finished[static_cast<size_t>(m)] = 1;
      if (m >= 1) throw UsageError("member " + std::to_string(m) + " failed");
    });
    ADD_FAILURE() << "run() returned without rethrowing";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("member 1 failed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(finished, (std::vector<int>{1, 1, 1}));
  std::vector<int> seen(3, 0);
  team.run([&](int64_t m) { seen[static_cast<size_t>(m)]++; });
  EXPECT_EQ(seen, (std::vector<int>{1, 1, 1}));
}

TEST(ThreadTeam, DestructorJoinsParkedWorkersWhetherOrNotTheyRan) {
  for (int64_t count : {1, 2, 4}) {
    {
      const ThreadTeam idle(count);  // never ran: its workers are parked since start
    }
    int64_t total = 0;
    {
      ThreadTeam team(count);
      std::vector<int64_t> per_member(static_cast<size_t>(count), 0);
      for (int round = 0; round < 10; ++round) {
        team.run([&](int64_t m) { per_member[static_cast<size_t>(m)] += m + 1; });
      }
      for (int64_t v : per_member) total += v;
    }  // joined here; a worker left running would race with the reads below under TSan
    EXPECT_EQ(total, 10 * count * (count + 1) / 2) << "count " << count;
  }
}

}  // namespace
}  // namespace dtrain
