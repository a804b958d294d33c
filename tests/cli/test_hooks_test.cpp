// The fault-injection hook DTRAIN_TEST_KILL_AT_STEP=SLOT:STEP (cli/test_hooks.h):
// which process it names and what it refuses.
#include "cli/test_hooks.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace dtrain::cli {
namespace {

TEST(TestKillStep, NamesTheFirstProcessOfOneSlot) {
  const std::map<std::string, std::string> env = {{"DTRAIN_TEST_KILL_AT_STEP", "3:30"}};
  EXPECT_EQ(test_kill_step(env, 3), 30);
  EXPECT_EQ(test_kill_step(env, 2), std::nullopt);
  EXPECT_EQ(test_kill_step({}, 3), std::nullopt);
  std::map<std::string, std::string> first = env;
  first["DTRAIN_RESTART_COUNT"] = "0";
  EXPECT_EQ(test_kill_step(first, 3), 30);
  std::map<std::string, std::string> replacement = env;
  replacement["DTRAIN_RESTART_COUNT"] = "1";
  EXPECT_EQ(test_kill_step(replacement, 3), std::nullopt);
  EXPECT_EQ(test_kill_switch(replacement, 3), nullptr);
  EXPECT_NE(test_kill_switch(env, 3), nullptr);
}

TEST(TestKillStep, EachSlotOfAListGetsItsOwnStep) {
  const std::map<std::string, std::string> env = {{"DTRAIN_TEST_KILL_AT_STEP", "1:3,0:6,1:9"}};
  EXPECT_EQ(test_kill_step(env, 1), 3);  // the first entry naming a slot counts
  EXPECT_EQ(test_kill_step(env, 0), 6);
  EXPECT_EQ(test_kill_step(env, 2), std::nullopt);
  EXPECT_EQ(test_stop_step({{"DTRAIN_TEST_STOP_AT_STEP", "2:4,3:5"}}, 3), 5);
}

TEST(TestKillStep, AMalformedValueIsAConfigError) {
  for (const char* bad :
       {"3", "3:", ":30", "a:30", "3:30x", "-1:5", "3:-5", "3:30,", ",3:30", "3:30,4"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(test_kill_step({{"DTRAIN_TEST_KILL_AT_STEP", bad}}, 3), ConfigError);
  }
}

TEST(TestComputeTime, ARankEntryBeatsTheAllOne) {
  const std::map<std::string, std::string> env = {
      {"DTRAIN_TEST_COMPUTE_SECONDS", "all:0.01:0.001,2:0.01:0.004"}};
  const auto two = test_compute_time(env, 2);
  ASSERT_TRUE(two.has_value());
  EXPECT_DOUBLE_EQ(two->fixed_s, 0.01);
  EXPECT_DOUBLE_EQ(two->per_row_s, 0.004);
  const auto zero = test_compute_time(env, 0);
  ASSERT_TRUE(zero.has_value());
  EXPECT_DOUBLE_EQ(zero->per_row_s, 0.001);
  EXPECT_FALSE(test_compute_time({{"DTRAIN_TEST_COMPUTE_SECONDS", "1:0:1"}}, 0).has_value());
  EXPECT_FALSE(test_compute_time({}, 0).has_value());
}

TEST(TestComputeTime, AMalformedValueIsAConfigError) {
  for (const char* bad : {"", "1", "1:0", "x:0:1", "1:a:1", "1:0:1,", "1:-1:0", "1:0:inf"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(test_compute_time({{"DTRAIN_TEST_COMPUTE_SECONDS", bad}}, 1), ConfigError);
  }
}

TEST(TestStepMs, PacesEveryWorkerAndKeepsTheKillSwitch) {
  comm::LaunchInfo launch;
  launch.rank = 1;
  launch.world_size = 2;
  const train::RunHooks paced = test_hooks({{"DTRAIN_TEST_STEP_MS", "0"}}, launch);
  ASSERT_TRUE(paced.trainer_callback);
  EXPECT_NE(paced.trainer_callback(0), nullptr);
  EXPECT_FALSE(test_hooks({}, launch).trainer_callback);
  for (const char* bad : {"", "x", "-1", "60001", "5ms"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(test_hooks({{"DTRAIN_TEST_STEP_MS", bad}}, launch), ConfigError);
  }
}

}  // namespace
}  // namespace dtrain::cli
