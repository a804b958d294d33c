// ThreadTeam (core/thread_team.h): every member runs once per run() on a
// thread of its own, member 0 on the caller; the first exception by member
// index is rethrown after every member finished; the team keeps working after
// a throw; the destructor stops and joins parked workers, whether or not they
// ever ran. Each for three spins: none (every wait sleeps at once), 1 us
// (runs that find the workers polling or asleep, by chance) and 10 s (every
// wait between the test's runs is a poll, and the destructor must end the
// polling workers). With caller_runs_unclaimed, every member still runs
// exactly once per run, on its worker or on the caller, errors included.
#include "core/thread_team.h"

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace dtrain {
namespace {

using std::chrono::microseconds;

const std::vector<microseconds> kSpins = {microseconds(0), microseconds(1),
                                          std::chrono::seconds(10)};

TEST(ThreadTeam, RunsEveryMemberOncePerRunOnItsOwnThread) {
  for (const microseconds spin : kSpins) {
    ThreadTeam team(3, spin);
    EXPECT_EQ(team.count(), 3);
    std::vector<int> seen(3, 0);
    std::vector<std::thread::id> ids(3);
    for (int round = 0; round < 50; ++round) {
      team.run([&](int64_t m) {
        seen[static_cast<size_t>(m)]++;
        ids[static_cast<size_t>(m)] = std::this_thread::get_id();
      });
    }
    EXPECT_EQ(seen, (std::vector<int>{50, 50, 50})) << "spin " << spin.count();
    EXPECT_EQ(ids[0], std::this_thread::get_id());
    EXPECT_EQ(std::set<std::thread::id>(ids.begin(), ids.end()).size(), 3u);
  }
}

// Each run sees every write of the run before it, on whichever member made
// it: the next run starts only after every member's call returned.
TEST(ThreadTeam, EachRunSeesThePreviousRunsWritesFromEveryMember) {
  for (const microseconds spin : kSpins) {
    ThreadTeam team(4, spin);
    std::vector<int64_t> cells(4, 0);
    for (int64_t round = 1; round <= 200; ++round) {
      team.run([&](int64_t m) {
        // Member m reads its neighbour's cell, written last run by another thread.
        const int64_t neighbour = cells[static_cast<size_t>((m + 1) % 4)];
        if (neighbour != round - 1) throw UsageError("stale cell " + std::to_string(neighbour));
      });
      team.run([&](int64_t m) { cells[static_cast<size_t>(m)] = round; });
    }
    EXPECT_EQ(cells, (std::vector<int64_t>{200, 200, 200, 200})) << "spin " << spin.count();
  }
}

TEST(ThreadTeam, RethrowsTheLowestMembersErrorAfterAllFinishedAndKeepsWorking) {
  for (const microseconds spin : kSpins) {
    ThreadTeam team(3, spin);
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
    EXPECT_EQ(seen, (std::vector<int>{1, 1, 1})) << "spin " << spin.count();
  }
}

// With the 10 s spin the workers are polling when the destructor runs: it
// must end the poll, not wait it out (a hang fails the test by its timeout).
TEST(ThreadTeam, DestructorJoinsParkedOrPollingWorkersWhetherOrNotTheyRan) {
  for (const microseconds spin : kSpins) {
    for (int64_t count : {1, 2, 4}) {
      {
        const ThreadTeam idle(count, spin);  // never ran
      }
      int64_t total = 0;
      {
        ThreadTeam team(count, spin);
        std::vector<int64_t> per_member(static_cast<size_t>(count), 0);
        for (int round = 0; round < 10; ++round) {
          team.run([&](int64_t m) { per_member[static_cast<size_t>(m)] += m + 1; });
        }
        for (int64_t v : per_member) total += v;
      }  // joined here; a worker left running would race with the reads below under TSan
      EXPECT_EQ(total, 10 * count * (count + 1) / 2)
          << "count " << count << " spin " << spin.count();
    }
  }
}

// The caller takes over members no worker claimed before fn(0) returned:
// with workers asleep (spin 0) and a short fn(0) that happens often, with a
// spin now and then. Whichever thread runs a member, it runs once per run,
// a member's work is seen by the next run, and only the caller and the
// member's own worker ever run it.
TEST(ThreadTeam, CallerRunsUnclaimedMembersEachMemberStillRunsOncePerRun) {
  for (const microseconds spin : kSpins) {
    ThreadTeam team(3, spin, /*caller_runs_unclaimed=*/true);
    std::vector<int64_t> runs(3, 0);
    std::vector<std::set<std::thread::id>> threads(3);
    for (int64_t round = 1; round <= 300; ++round) {
      team.run([&](int64_t m) {
        const size_t i = static_cast<size_t>(m);
        if (runs[i] != round - 1) throw UsageError("member ran twice or skipped a run");
        runs[i] = round;
        threads[i].insert(std::this_thread::get_id());
      });
    }
    EXPECT_EQ(runs, (std::vector<int64_t>{300, 300, 300})) << "spin " << spin.count();
    EXPECT_EQ(threads[0], std::set<std::thread::id>{std::this_thread::get_id()});
    for (size_t m = 1; m < 3; ++m) {
      threads[m].erase(std::this_thread::get_id());
      EXPECT_LE(threads[m].size(), 1u) << "member " << m << " ran on a thread not its own";
    }
  }
}

TEST(ThreadTeam, CallerRunsUnclaimedMembersErrorsAreRethrownLowestFirst) {
  for (const microseconds spin : kSpins) {
    ThreadTeam team(3, spin, /*caller_runs_unclaimed=*/true);
    for (int round = 0; round < 50; ++round) {
      try {
        team.run([&](int64_t m) {
          if (m >= 1) throw UsageError("member " + std::to_string(m) + " failed");
        });
        ADD_FAILURE() << "run() returned without rethrowing";
      } catch (const UsageError& e) {
        ASSERT_NE(std::string(e.what()).find("member 1 failed"), std::string::npos) << e.what();
      }
    }
    std::vector<int> seen(3, 0);
    team.run([&](int64_t m) { seen[static_cast<size_t>(m)]++; });
    EXPECT_EQ(seen, (std::vector<int>{1, 1, 1})) << "spin " << spin.count();
  }
}

}  // namespace
}  // namespace dtrain
