// ServerCopies (cli/server_copies.h): the launcher's view of which live ps
// servers hold each range when backups take a dead server's range over.
#include "cli/server_copies.h"

#include <gtest/gtest.h>

#include <vector>

namespace dtrain::cli {
namespace {

using Range = ServerCopies::Death::Range;

std::vector<int> takers(const ServerCopies::Death& d) {
  std::vector<int> t;
  for (const Range& r : d.served) t.push_back(r.taker);
  return t;
}

TEST(ServerCopies, TheFirstLiveBackupTakesADeadServersRangeOver) {
  ServerCopies copies(2, 1);
  const ServerCopies::Death death = copies.record_death(1);
  ASSERT_EQ(death.served.size(), 1u);
  EXPECT_EQ(death.served[0].range, 1);
  EXPECT_EQ(death.served[0].taker, 0);
  EXPECT_TRUE(death.covered());
  EXPECT_TRUE(death.lost().empty());
  EXPECT_TRUE(copies.taken_over(1));
  EXPECT_FALSE(copies.taken_over(0));
}

TEST(ServerCopies, TheSecondDeathInARangeLosesItAndNamesBothServers) {
  ServerCopies copies(2, 1);
  copies.record_death(1);
  // Server 0 served its own range (its backup, 1, is dead) and range 1.
  const ServerCopies::Death death = copies.record_death(0);
  EXPECT_FALSE(death.covered());
  EXPECT_EQ(death.lost(), (std::vector<int>{0, 1}));
  EXPECT_EQ(copies.died_holding(1), (std::vector<int>{1, 0}));
  EXPECT_EQ(copies.died_holding(0), (std::vector<int>{1, 0}));
}

TEST(ServerCopies, ATakenOverRangeIsUnreplicatedSoItsTakersDeathLosesIt) {
  // S = 3, R = 2: range 1 is held by 1, 2, 0. Server 2 takes it over when 1
  // dies and ships it to nobody, so 0's copy no longer counts.
  ServerCopies copies(3, 2);
  EXPECT_EQ(takers(copies.record_death(1)), (std::vector<int>{2}));
  const ServerCopies::Death death = copies.record_death(2);
  // Range 2 (held by 2, 0, 1) goes to 0; range 1 had only 2 left.
  ASSERT_EQ(death.served.size(), 2u);
  EXPECT_EQ(death.served[0].range, 1);
  EXPECT_EQ(death.served[0].taker, -1);
  EXPECT_EQ(death.served[1].range, 2);
  EXPECT_EQ(death.served[1].taker, 0);
  EXPECT_EQ(death.lost(), (std::vector<int>{1}));
}

TEST(ServerCopies, ADeadBackupIsNoLongerAHolder) {
  // S = 3, R = 1: range 0 is held by 0 and 1. Backup 1 dies first (its own
  // range goes to 2); then 0's death loses range 0.
  ServerCopies copies(3, 1);
  EXPECT_EQ(takers(copies.record_death(1)), (std::vector<int>{2}));
  const ServerCopies::Death death = copies.record_death(0);
  EXPECT_EQ(death.lost(), (std::vector<int>{0}));
  EXPECT_EQ(copies.died_holding(0), (std::vector<int>{1, 0}));
}

TEST(ServerCopies, WithoutReplicasEveryServerDeathLosesItsRange) {
  ServerCopies copies(2, 0);
  EXPECT_EQ(copies.record_death(0).lost(), (std::vector<int>{0}));
  EXPECT_FALSE(copies.taken_over(0));
}

TEST(ServerCopies, AReplacementIsItsRangesOnlyHolder) {
  ServerCopies copies(2, 1);
  copies.record_death(0);
  copies.record_death(1);  // both ranges lost; a replacement of 1 restores its own
  copies.record_replacement(1);
  EXPECT_FALSE(copies.taken_over(1));
  const ServerCopies::Death death = copies.record_death(1);
  EXPECT_EQ(death.lost(), (std::vector<int>{1}));
}

TEST(ServerCopies, ASlotOutOfRangeChangesNothing) {
  ServerCopies copies(2, 1);
  EXPECT_TRUE(copies.record_death(2).served.empty());
  EXPECT_TRUE(copies.record_death(-1).served.empty());
  EXPECT_TRUE(copies.record_death(1).covered());
}

}  // namespace
}  // namespace dtrain::cli
