#include "comm/rendezvous/launch_env.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace dtrain::comm {
namespace {

using Env = std::map<std::string, std::string>;

std::string config_error(const Env& env, const LaunchOverrides& o = {}) {
  try {
    resolve_launch_env(env, o);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(LaunchEnv, NothingSetIsOneProcess) {
  const LaunchInfo info = resolve_launch_env({});
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.coordinator, "");
}

TEST(LaunchEnv, DtrainVariables) {
  const LaunchInfo info = resolve_launch_env({{"DTRAIN_RANK", "2"},
                                              {"DTRAIN_WORLD_SIZE", "4"},
                                              {"DTRAIN_LOCAL_RANK", "0"},
                                              {"DTRAIN_COORDINATOR", "10.0.0.1:29500"}});
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.coordinator, "10.0.0.1:29500");
  EXPECT_EQ(info.source, "DTRAIN_RANK/DTRAIN_WORLD_SIZE");
}

TEST(LaunchEnv, OpenMpiThenSlurm) {
  const Env ompi{{"OMPI_COMM_WORLD_RANK", "3"},
                 {"OMPI_COMM_WORLD_SIZE", "8"},
                 {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                 {"SLURM_PROCID", "5"},
                 {"SLURM_NTASKS", "6"},
                 {"SLURM_LOCALID", "2"},
                 {"DTRAIN_COORDINATOR", "head:1"}};
  LaunchInfo info = resolve_launch_env(ompi);
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 8);
  EXPECT_EQ(info.local_rank, 1);
  EXPECT_EQ(info.source, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE");

  const Env slurm{{"SLURM_PROCID", "5"},
                  {"SLURM_NTASKS", "6"},
                  {"SLURM_LOCALID", "2"},
                  {"DTRAIN_COORDINATOR", "head:1"}};
  info = resolve_launch_env(slurm);
  EXPECT_EQ(info.rank, 5);
  EXPECT_EQ(info.world_size, 6);
  EXPECT_EQ(info.local_rank, 2);
  EXPECT_EQ(info.source, "SLURM_PROCID/SLURM_NTASKS");
}

TEST(LaunchEnv, PrecedenceExplicitThenDtrainThenLaunchers) {
  const Env env{{"DTRAIN_RANK", "1"},
                {"OMPI_COMM_WORLD_RANK", "2"},
                {"OMPI_COMM_WORLD_SIZE", "4"},
                {"SLURM_NTASKS", "9"},
                {"DTRAIN_COORDINATOR", "a:1"}};
  LaunchInfo info = resolve_launch_env(env);
  EXPECT_EQ(info.rank, 1);        // DTRAIN_RANK beats OpenMPI
  EXPECT_EQ(info.world_size, 4);  // OpenMPI beats Slurm
  EXPECT_EQ(info.local_rank, 1);  // unknown: the rank
  LaunchOverrides o;
  o.rank = 3;
  o.coordinator = "b:2";
  info = resolve_launch_env(env, o);
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.coordinator, "b:2");
  EXPECT_EQ(info.source, "--rank/OMPI_COMM_WORLD_SIZE");
}

TEST(LaunchEnv, ErrorsNameTheVariableAndValue) {
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "x1"}, {"DTRAIN_WORLD_SIZE", "2"}}),
            "environment: 'DTRAIN_RANK': 'x1' is not an integer");
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "1 "}, {"DTRAIN_WORLD_SIZE", "2"}}),
            "environment: 'DTRAIN_RANK': '1 ' is not an integer");
  EXPECT_EQ(config_error({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}),
            "environment: 'SLURM_PROCID': rank 4 is outside 0..3 (world size 4 from SLURM_NTASKS)");
  EXPECT_EQ(
      config_error(
          {{"DTRAIN_RANK", "-1"}, {"DTRAIN_WORLD_SIZE", "2"}, {"DTRAIN_COORDINATOR", "a:1"}}),
      "environment: 'DTRAIN_RANK': rank -1 is outside 0..1 (world size 2 from DTRAIN_WORLD_SIZE)");
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "0"}}),
            "environment: 'DTRAIN_WORLD_SIZE': world size 0 is not positive");
  EXPECT_EQ(config_error({{"DTRAIN_WORLD_SIZE", "2"}}),
            "environment: 'DTRAIN_WORLD_SIZE': world size 2 is set but no rank is (set "
            "DTRAIN_RANK or --rank)");
  EXPECT_EQ(config_error({{"OMPI_COMM_WORLD_RANK", "0"}}),
            "environment: 'OMPI_COMM_WORLD_RANK': rank 0 is set but no world size is (set "
            "DTRAIN_WORLD_SIZE or --world-size)");
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "2"}}),
            "environment: 'DTRAIN_COORDINATOR': world size 2 needs a coordinator address "
            "host:port (set DTRAIN_COORDINATOR or --coordinator)");
  EXPECT_EQ(config_error({{"DTRAIN_COORDINATOR", "head"}}),
            "environment: 'DTRAIN_COORDINATOR': 'head' has no port; expected host:port, e.g. "
            "10.0.0.1:29500");
  EXPECT_EQ(config_error({{"DTRAIN_COORDINATOR", "head:70000"}}),
            "environment: 'DTRAIN_COORDINATOR': 'head:70000' has port '70000', not in 1..65535; "
            "expected host:port, e.g. 10.0.0.1:29500");
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "0"},
                          {"DTRAIN_WORLD_SIZE", "2"},
                          {"DTRAIN_LOCAL_RANK", "5"},
                          {"DTRAIN_COORDINATOR", "a:1"}}),
            "environment: 'DTRAIN_LOCAL_RANK': local rank 5 is outside 0..1");
}

// Issue #18: a huge world size ended in std::bad_alloc; it is refused up
// front, naming where it came from.
TEST(LaunchEnv, AHugeWorldSizeIsRefusedNamingItsVariable) {
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "0"},
                          {"DTRAIN_WORLD_SIZE", "2147483647"},
                          {"DTRAIN_COORDINATOR", "a:1"}}),
            "environment: 'DTRAIN_WORLD_SIZE': world size 2147483647 is over the limit of 65536");
  EXPECT_EQ(config_error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "65537"}}),
            "environment: 'SLURM_NTASKS': world size 65537 is over the limit of 65536");
  LaunchOverrides flags;
  flags.rank = 0;
  flags.world_size = 1 << 20;
  flags.coordinator = "a:1";
  EXPECT_EQ(config_error({}, flags),
            "environment: '--world-size': world size 1048576 is over the limit of 65536");
  EXPECT_EQ(config_error({{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "99999999999"}}),
            "environment: 'DTRAIN_WORLD_SIZE': '99999999999' is out of range for a 32-bit "
            "integer");
  const LaunchInfo largest = resolve_launch_env(
      {{"DTRAIN_RANK", "65535"}, {"DTRAIN_WORLD_SIZE", "65536"}, {"DTRAIN_COORDINATOR", "a:1"}});
  EXPECT_EQ(largest.world_size, kMaxWorldSize);
  EXPECT_EQ(largest.rank, 65535);
}

TEST(LaunchEnv, HostPort) {
  EXPECT_EQ(parse_host_port("[::1]:29500", "x").host, "::1");
  EXPECT_EQ(parse_host_port("[::1]:29500", "x").port, 29500);
  EXPECT_EQ(parse_host_port("node-3.cluster:80", "x").host, "node-3.cluster");
  EXPECT_THROW(parse_host_port(":80", "x"), ConfigError);
}

// A worker of a per-host agent: its rank is the job-wide slot (the agent's
// slot base plus its local rank), its world size nominal, its group's
// bounds and etcd address in the settings.
TEST(LaunchEnv, AgentWorkerOnEtcd) {
  const Env env = {{"DTRAIN_RANK", "1"},
                   {"DTRAIN_WORLD_SIZE", "2"},
                   {"DTRAIN_COORDINATOR", "127.0.0.1:29500"},
                   {"DTRAIN_RDZV", "etcd://10.0.0.5:2379/run-42"},
                   {"DTRAIN_RDZV_MIN_WORKERS", "2"},
                   {"DTRAIN_RDZV_MAX_WORKERS", "6"},
                   {"DTRAIN_RDZV_SLOT_BASE", "4"}};
  const LaunchInfo info = resolve_launch_env(env);
  EXPECT_EQ(info.rank, 5);
  EXPECT_EQ(info.world_size, 6);
  EXPECT_EQ(info.local_rank, 1);
  EXPECT_EQ(info.settings.rdzv_min_workers, 2);
  EXPECT_EQ(info.settings.rdzv_max_workers, 6);
  const RdzvUrl url = parse_rdzv_url(info.settings.rdzv, "x");
  EXPECT_EQ(url.endpoint, "10.0.0.5:2379");
  EXPECT_EQ(url.job_id, "run-42");
  Env high = env;
  high["DTRAIN_RDZV_SLOT_BASE"] = "10";  // a node index past MAX: the slot still fits
  EXPECT_EQ(resolve_launch_env(high).world_size, 12);
  for (const char* bad : {"etcd://10.0.0.5:2379", "etcd://10.0.0.5:2379/", "http://h:1/j",
                          "etcd://10.0.0.5/j", "etcd://h:1/a/b"}) {
    EXPECT_THROW(parse_rdzv_url(bad, "x"), ConfigError) << bad;
  }
  Env inverted = env;
  inverted["DTRAIN_RDZV_MIN_WORKERS"] = "7";
  EXPECT_NE(config_error(inverted).find("DTRAIN_RDZV_MIN_WORKERS"), std::string::npos);
}

TEST(LaunchEnv, SocketFolderIsSocketDirThenRunDirThenTmpdirThenTmp) {
  EXPECT_EQ(resolve_launch_settings({}).socket_dir, "/tmp");
  EXPECT_EQ(resolve_launch_settings({{"TMPDIR", "/scratch/me/"}}).socket_dir, "/scratch/me");
  // Too deep for a socket's path (sockaddr_un): /tmp.
  EXPECT_EQ(resolve_launch_settings({{"TMPDIR", "/" + std::string(60, 'd')}}).socket_dir, "/tmp");
  const Env run{{"TMPDIR", "/scratch/me"}, {"DTRAIN_RUN_DIR", "/tmp/dtrain-run-x"}};
  EXPECT_EQ(resolve_launch_settings(run).socket_dir, "/tmp/dtrain-run-x");
  Env agent = run;
  agent["DTRAIN_SOCKET_DIR"] = "/tmp/dtrain-ipc-y";
  const LaunchSettings s = resolve_launch_settings(agent);
  EXPECT_EQ(s.socket_dir, "/tmp/dtrain-ipc-y");
  EXPECT_EQ(s.run_dir, "/tmp/dtrain-run-x");  // the socket folder leaves the run folder alone
  EXPECT_EQ(resolve_launch_settings({{"DTRAIN_SOCKET_DIR", "/tmp/dtrain-ipc-y"}}).run_dir, "");
}

}  // namespace
}  // namespace dtrain::comm
