// Slurm's hostlists and the coordinator derived from a hand-set Slurm
// environment (no Slurm needed).
#include "comm/rendezvous/slurm_coordinator.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "comm/rendezvous/launch_env.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using Env = std::map<std::string, std::string>;
using Hosts = std::vector<std::string>;

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(SlurmHostlist, Expands) {
  const std::vector<std::pair<std::string, Hosts>> cases = {
      {"localhost", {"localhost"}},
      {"a,b", {"a", "b"}},
      {"node[1-3]", {"node1", "node2", "node3"}},
      {"node[01-04,07],gpu3", {"node01", "node02", "node03", "node04", "node07", "gpu3"}},
      {"n[08-10]", {"n08", "n09", "n10"}},
      {"n[8-10]", {"n8", "n9", "n10"}},
      {"n[5]", {"n5"}},
      {"rack[1-2]-n[1-2]", {"rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"}},
      {"n[1-2]x,m", {"n1x", "n2x", "m"}},
      {"10.0.0.[1-2]", {"10.0.0.1", "10.0.0.2"}},
      {"[3-4]", {"3", "4"}},
  };
  for (const auto& [list, hosts] : cases) {
    EXPECT_EQ(expand_hostlist(list, "SLURM_STEP_NODELIST"), hosts) << list;
  }
}

TEST(SlurmHostlist, MalformedListsSayWhatAndWhere) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "hostlist '' is empty (at character 1)"},
      {"node[1-2", "hostlist 'node[1-2' has a '[' that is never closed (at character 5)"},
      {"node1-2]", "hostlist 'node1-2]' has a ']' without its '[' (at character 8)"},
      {"n[1[2]]", "hostlist 'n[1[2]]' has a '[' inside brackets (at character 4)"},
      {"a,,b", "hostlist 'a,,b' has an empty name (at character 3)"},
      {"a,", "hostlist 'a,' has an empty name (at character 3)"},
      {"n[]", "hostlist 'n[]' has an empty range (at character 3)"},
      {"n[1,]", "hostlist 'n[1,]' has an empty range (at character 5)"},
      {"n[a-b]", "hostlist 'n[a-b]' has range bound 'a', not a number (at character 3)"},
      {"n[1-]", "hostlist 'n[1-]' has range bound '', not a number (at character 5)"},
      {"n[1-2-3]", "hostlist 'n[1-2-3]' has range bound '2-3', not a number (at character 5)"},
      {"n[5-3]", "hostlist 'n[5-3]' has range '5-3' whose end is below its start (at character 3)"},
      {"n[0-99999]", "hostlist 'n[0-99999]' names more than 65536 hosts (at character 3)"},
      {"a[0-999]b[0-999]",
       "hostlist 'a[0-999]b[0-999]' names more than 65536 hosts (at character 1)"},
  };
  for (const auto& [list, message] : cases) {
    EXPECT_EQ(config_error([&] { expand_hostlist(list, "SLURM_JOB_NODELIST"); }),
              "environment: 'SLURM_JOB_NODELIST': " + message)
        << list;
  }
}

TEST(SlurmCoordinator, PortIsAPureFunctionOfJobAndStep) {
  EXPECT_EQ(slurm_coordinator_port(0, 0), 20000);
  EXPECT_EQ(slurm_coordinator_port(1, 0), 20008);
  EXPECT_EQ(slurm_coordinator_port(1, 3), 20011);
  EXPECT_EQ(slurm_coordinator_port(1499, 7), 31999);
  EXPECT_EQ(slurm_coordinator_port(1500, 0), 20000);
  // The batch script's step (4294967294) and 1500 consecutive jobs: in range,
  // and consecutive jobs never share a port.
  EXPECT_EQ(slurm_coordinator_port(42, 4294967294u), 20000 + 42 * 8 + 6);
  std::set<int> ports;
  for (uint64_t job = 123456; job < 123456 + 1500; ++job) {
    const int port = slurm_coordinator_port(job, 0);
    EXPECT_GE(port, 20000);
    EXPECT_LE(port, 31999);
    ports.insert(port);
  }
  EXPECT_EQ(ports.size(), 1500u);
}

const Env kSlurm{{"SLURM_PROCID", "1"},
                 {"SLURM_NTASKS", "4"},
                 {"SLURM_LOCALID", "1"},
                 {"SLURM_JOB_ID", "4711"},
                 {"SLURM_STEP_ID", "2"},
                 {"SLURM_JOB_NODELIST", "big[1-9]"},
                 {"SLURM_STEP_NODELIST", "node[07-08],gpu1"}};

TEST(SlurmCoordinator, DerivedFromTheStepNodeListAndTheJobId) {
  const LaunchInfo info = resolve_launch_env(kSlurm);
  EXPECT_EQ(info.coordinator, fmt::format("node07:{}", 20000 + (4711 % 1500) * 8 + 2));
  EXPECT_EQ(info.coordinator_source,
            "Slurm: the first host of SLURM_STEP_NODELIST, the port of SLURM_JOB_ID=4711 "
            "SLURM_STEP_ID=2");
  EXPECT_TRUE(info.discovery.launch_id.empty());
}

TEST(SlurmCoordinator, FallsBackToTheJobNodeListThenNodeList) {
  Env env = kSlurm;
  env.erase("SLURM_STEP_NODELIST");
  env.erase("SLURM_STEP_ID");
  EXPECT_EQ(resolve_launch_env(env).coordinator, fmt::format("big1:{}", 20000 + 211 * 8));
  env.erase("SLURM_JOB_NODELIST");
  env["SLURM_NODELIST"] = "login1,x";
  env["SLURM_STEPID"] = "1";
  const LaunchInfo info = resolve_launch_env(env);
  EXPECT_EQ(info.coordinator, fmt::format("login1:{}", 20000 + 211 * 8 + 1));
  EXPECT_EQ(info.coordinator_source,
            "Slurm: the first host of SLURM_NODELIST, the port of SLURM_JOB_ID=4711 "
            "SLURM_STEPID=1");
}

TEST(SlurmCoordinator, AGivenCoordinatorWins) {
  Env env = kSlurm;
  env["DTRAIN_COORDINATOR"] = "head:29500";
  LaunchInfo info = resolve_launch_env(env);
  EXPECT_EQ(info.coordinator, "head:29500");
  EXPECT_EQ(info.coordinator_source, "DTRAIN_COORDINATOR");
  LaunchOverrides o;
  o.coordinator = "flag:1";
  info = resolve_launch_env(env, o);
  EXPECT_EQ(info.coordinator, "flag:1");
  EXPECT_EQ(info.coordinator_source, "--coordinator");
}

TEST(SlurmCoordinator, OnlyWhenSlurmGaveTheRank) {
  // dtrain's own rank with Slurm's variables around: nothing is derived.
  Env env = kSlurm;
  env["DTRAIN_RANK"] = "1";
  LaunchOverrides o;
  o.require_coordinator = false;
  EXPECT_EQ(resolve_launch_env(env, o).coordinator, "");
  // A single task needs no coordinator.
  env = kSlurm;
  env["SLURM_PROCID"] = "0";
  env["SLURM_NTASKS"] = "1";
  env.erase("SLURM_LOCALID");
  EXPECT_EQ(resolve_launch_env(env).coordinator, "");
}

TEST(SlurmCoordinator, MissingOrMalformedVariables) {
  Env env = kSlurm;
  env.erase("SLURM_JOB_ID");
  EXPECT_EQ(config_error([&] { resolve_launch_env(env); }),
            "environment: 'DTRAIN_COORDINATOR': world size 4 needs a coordinator address "
            "host:port (set DTRAIN_COORDINATOR or --coordinator)");
  env = kSlurm;
  env["SLURM_JOB_ID"] = "12x";
  EXPECT_EQ(config_error([&] { resolve_launch_env(env); }),
            "environment: 'SLURM_JOB_ID': '12x' is not a non-negative integer");
  env = kSlurm;
  env["SLURM_STEP_NODELIST"] = "node[1-";
  EXPECT_EQ(config_error([&] { resolve_launch_env(env); }),
            "environment: 'SLURM_STEP_NODELIST': hostlist 'node[1-' has a '[' that is never "
            "closed (at character 5)");
}

}  // namespace
}  // namespace dtrain::comm
