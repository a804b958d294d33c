// Restart mode of the per-host agent (`dtrain train JOB --rdzv etcd://...
// --nnodes MIN:MAX --nproc-per-node K --no-elastic`,
// cli/etcd_restart_agent.h) through the dtrain executable, against a real
// etcd started by the test (skipped without /usr/bin/etcd), with a 2 s lease:
// agents ("hosts") on loopback share one output folder, one worker each.
//  - The first host (node rank 0: the coordinator and the checkpoint
//    writer) is SIGKILLed with its process group once a checkpoint exists;
//    the survivors restart from it as generation 1, finish and write the
//    final model, saying which step they resumed from.
//  - A worker (not its agent) is SIGKILLed: its agent reports the failure
//    and every agent restarts the group; no ipc socket is left in the
//    agents' TMPDIR (each agent's socket folder, removed at its end).
//  - With no restart left, the same failure ends every agent non-zero
//    with a line naming the budget.
//  - A host that arrives while the group runs below MAX is admitted by a
//    restart that uses none of the budget.
//  - A job run to its end leaves no key in etcd (the last agent removes
//    them), so the same job id runs again.
//  - A host frozen (SIGSTOP) past its agent's lease is left out when it
//    resumes: its agent says so (LeftOut) and exits 1; the other host
//    restarts without it and finishes.
//  - The same with the frozen host's worker as rank 0, holding the shared
//    folder's lock: the new rank 0 waits for the lock, the frozen host's
//    agent stops its worker once it runs again, and the new rank 0 finishes.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "cli/etcd_restart_agent.h"
#include "cli_test_util.h"
#include "comm/rendezvous/etcd_client.h"
#include "testing/etcd_server.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::write_file;

const std::string kJob = testing::TestJob()
                             .name("restart-agents")
                             .seed(5)
                             .synthetic(4000, 16, 4)
                             .mlp({32})
                             .optimizer("sgd", 0.05)
                             .epochs(30)
                             .batch(20)
                             .set("train.log_every_steps", "100")
                             .set("train.checkpoint_every_steps", "20")
                             .set("distributed.timeout_ms", "5000")
                             .toml();

// One host: `setsid dtrain train JOB --rdzv ... --no-elastic` in its own
// process group (its pid is the group's id), stderr merged into stdout.
// `extra`: more flags; `env`: more (or other) environment variables.
ChildProcess start_agent(const std::string& job, const std::string& out, const std::string& rdzv,
                         const std::string& nnodes, int max_restarts,
                         const std::vector<std::string>& extra = {},
                         const std::map<std::string, std::string>& env = {}) {
  std::vector<std::string> argv = {"/usr/bin/setsid",
                                   "/bin/sh",
                                   "-c",
                                   "exec \"$0\" \"$@\" 2>&1",
                                   DTRAIN_BINARY,
                                   "train",
                                   job,
                                   "--output",
                                   out,
                                   "--rdzv",
                                   rdzv,
                                   "--nnodes",
                                   nnodes,
                                   "--nproc-per-node",
                                   "1",
                                   "--no-elastic",
                                   "--max-restarts",
                                   std::to_string(max_restarts)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  std::map<std::string, std::string> environment = env;
  environment.insert({{"OPENBLAS_NUM_THREADS", "1"},
                      {"DTRAIN_JOB_SECRET", "restart-agents-secret"},
                      {"DTRAIN_TCP_ONLY", "1"},
                      {"DTRAIN_RDZV_LEASE_TTL_S", "2"},
                      {"DTRAIN_RDZV_SETTLE_MS", "3000"},
                      {"DTRAIN_RDZV_JOIN_TIMEOUT_S", "60"}});
  return ChildProcess::spawn(argv, environment);
}

bool has_checkpoint(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("ckpt-") && name.ends_with(".dtc")) return true;
  }
  return false;
}

// The pid of the first worker an agent's log says it started.
pid_t first_worker_pid(const std::string& output) {
  const size_t started = output.find("started 1 worker(s)");
  const size_t pid = output.find("(pid ", started);
  if (started == std::string::npos || pid == std::string::npos) return -1;
  return static_cast<pid_t>(std::stol(output.substr(pid + 5)));
}

struct Cluster {
  testing::EtcdServer etcd;
  testing::TempDir dir;
  std::string rdzv;
  std::vector<ChildProcess> agents;

  // `host_env[h]`: more environment variables for host h.
  Cluster(const std::string& job_id, int hosts, const std::string& nnodes, int max_restarts,
          const std::string& job = kJob, const std::vector<std::string>& extra = {},
          const std::vector<std::map<std::string, std::string>>& host_env = {}) {
    testing::ready_etcd_client(etcd);
    write_file(dir.file("job.toml"), job);
    rdzv = "etcd://" + etcd.endpoint() + "/" + job_id;
    for (int h = 0; h < hosts; ++h) {
      const size_t i = static_cast<size_t>(h);
      std::map<std::string, std::string> env =
          i < host_env.size() ? host_env[i] : std::map<std::string, std::string>{};
      // The agents' socket folders below the test's own: none is left in
      // /tmp, even by an agent the test SIGKILLs.
      env.emplace("TMPDIR", dir.path());
      agents.push_back(start_agent(dir.file("job.toml"), dir.file("out"), rdzv, nnodes,
                                   max_restarts, extra, env));
      // Node indexes in start order: the first agent is node 0 (rank 0).
      EXPECT_TRUE(testing::wait_for_output(agents.back(), "agent: node " + std::to_string(h)))
          << agents.back().output();
    }
  }
  // Until node `node`'s agent lease expired in etcd (its alive key is gone).
  bool wait_for_lapsed_agent(const std::string& job_id, int node) {
    comm::EtcdClient client(etcd.endpoint());
    const std::string key = "/dtrain/" + job_id + "/agents/" + std::to_string(node);
    const Deadline deadline = Deadline::after(60s);
    while (!deadline.expired()) {
      if (client.range_prefix(key, Deadline::after(5s)).empty()) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
  bool wait_for_checkpoint(ChildProcess& watched) {
    const Deadline deadline = Deadline::after(120s);
    while (!has_checkpoint(dir.file("out")) && !deadline.expired()) {
      if (!watched.read_some(200)) return false;
    }
    return has_checkpoint(dir.file("out"));
  }
};

TEST(EtcdRestartAgentCli, SurvivorsRestartFromTheCheckpointAfterTheFirstHostIsKilled) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  Cluster c("restart-host", 3, "2:3", 2);
  ASSERT_TRUE(c.wait_for_checkpoint(c.agents[0])) << c.agents[0].output();
  ::kill(-c.agents[0].pid(), SIGKILL);
  c.agents[0].wait(Deadline::after(10s));
  for (size_t h = 1; h < c.agents.size(); ++h) {
    const std::optional<testing::ExitStatus> status = c.agents[h].wait(Deadline::after(120s));
    ASSERT_TRUE(status.has_value()) << c.agents[h].output();
    EXPECT_EQ(status->code, 0) << status->describe() << "\n" << c.agents[h].output();
    EXPECT_NE(c.agents[h].output().find("of generation 1"), std::string::npos)
        << c.agents[h].output();
  }
  const std::string survivors = c.agents[1].output() + c.agents[2].output();
  EXPECT_NE(survivors.find("restarting the group from its newest checkpoint"), std::string::npos)
      << survivors;
  EXPECT_NE(survivors.find("resumed from"), std::string::npos) << survivors;
  EXPECT_NE(survivors.find(" at step "), std::string::npos) << survivors;
  EXPECT_TRUE(std::filesystem::exists(c.dir.file("out/model.safetensors"))) << survivors;
}

TEST(EtcdRestartAgentCli, AKilledWorkerRestartsEveryHost) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  Cluster c("restart-worker", 2, "2", 1);
  ASSERT_TRUE(c.wait_for_checkpoint(c.agents[1])) << c.agents[1].output();
  // The workers' ipc sockets are in their agents' folders below TMPDIR.
  EXPECT_FALSE(testing::socket_files(c.dir.path()).empty());
  const pid_t worker = first_worker_pid(c.agents[1].output());
  ASSERT_GT(worker, 0) << c.agents[1].output();
  ::kill(worker, SIGKILL);
  for (ChildProcess& agent : c.agents) {
    const std::optional<testing::ExitStatus> status = agent.wait(Deadline::after(120s));
    ASSERT_TRUE(status.has_value()) << agent.output();
    EXPECT_EQ(status->code, 0) << status->describe() << "\n" << agent.output();
    EXPECT_NE(agent.output().find("restart 1 of 1"), std::string::npos) << agent.output();
    EXPECT_NE(agent.output().find("of generation 1"), std::string::npos) << agent.output();
  }
  EXPECT_TRUE(std::filesystem::exists(c.dir.file("out/model.safetensors")));
  // The killed worker's socket went with its agent's folder.
  EXPECT_EQ(testing::socket_files(c.dir.path()), std::vector<std::string>{});
}

TEST(EtcdRestartAgentCli, ExhaustedRestartBudgetEndsEveryHostNonZero) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  Cluster c("restart-budget", 2, "2", 0);
  ASSERT_TRUE(testing::wait_for_output(c.agents[1], "started 1 worker(s)")) << c.agents[1].output();
  const pid_t worker = first_worker_pid(c.agents[1].output());
  ASSERT_GT(worker, 0) << c.agents[1].output();
  ::kill(worker, SIGKILL);
  for (ChildProcess& agent : c.agents) {
    const std::optional<testing::ExitStatus> status = agent.wait(Deadline::after(60s));
    ASSERT_TRUE(status.has_value()) << agent.output();
    EXPECT_NE(status->code, 0) << agent.output();
    EXPECT_NE(agent.output().find("restart budget exhausted (0 of 0 used)"), std::string::npos)
        << agent.output();
  }
}

// Host 1's agent is blind to the group while its worker runs (a test hook):
// it learns of the admission only from its read after its worker failed
// (host 0's was stopped for the new host), as any agent whose watcher was
// slower than the failure does; without that read it would spend a restart
// it does not have. The settle time is long enough that the round waits for
// it on a loaded machine (the round forms at once when every member is in).
TEST(EtcdRestartAgentCli, ANewHostBelowMaxIsAdmittedByARestartThatCostsNoBudget) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  const std::map<std::string, std::string> settle = {{"DTRAIN_RDZV_SETTLE_MS", "10000"}};
  std::map<std::string, std::string> blind = settle;
  blind["DTRAIN_TEST_AGENT_BLIND"] = "1";
  Cluster c("restart-admit", 2, "2:3", 0, kJob, {}, {settle, blind});
  ASSERT_TRUE(testing::wait_for_output(c.agents[0], "started 1 worker(s)")) << c.agents[0].output();
  c.agents.push_back(start_agent(c.dir.file("job.toml"), c.dir.file("out"), c.rdzv, "2:3",
                                 /*max_restarts=*/0, {}, settle));
  for (ChildProcess& agent : c.agents) {
    const std::optional<testing::ExitStatus> status = agent.wait(Deadline::after(120s));
    ASSERT_TRUE(status.has_value()) << agent.output();
    EXPECT_EQ(status->code, 0) << status->describe() << "\n" << agent.output();
    EXPECT_NE(agent.output().find("of generation 1 (nodes [0, 1, 2])"), std::string::npos)
        << agent.output();
  }
  for (size_t h : {0, 1}) {
    EXPECT_NE(c.agents[h].output().find("wait to join; restarting the group from its newest "
                                        "checkpoint (no restart used)"),
              std::string::npos)
        << "host " << h << ":\n"
        << c.agents[h].output();
  }
}

TEST(EtcdRestartAgentCli, TheLastAgentRemovesTheKeysAndTheJobIdRunsAgain) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  const std::string short_job = testing::TestJob()
                                    .name("restart-again")
                                    .seed(5)
                                    .synthetic(400, 16, 4)
                                    .mlp({32})
                                    .optimizer("sgd", 0.05)
                                    .epochs(2)
                                    .batch(20)
                                    .toml();
  Cluster c("restart-again", 2, "2", 0, short_job, {"--rdzv-ttl", "2"});
  for (int run = 0; run < 2; ++run) {
    if (run == 1) {
      std::filesystem::remove_all(c.dir.file("out"));
      c.agents.clear();
      for (int h = 0; h < 2; ++h) {
        c.agents.push_back(start_agent(c.dir.file("job.toml"), c.dir.file("out"), c.rdzv, "2", 0,
                                       {"--rdzv-ttl", "2"}));
      }
    }
    for (ChildProcess& agent : c.agents) {
      const std::optional<testing::ExitStatus> status = agent.wait(Deadline::after(120s));
      ASSERT_TRUE(status.has_value()) << agent.output();
      EXPECT_EQ(status->code, 0) << "run " << run << ": " << status->describe() << "\n"
                                 << agent.output();
    }
    EXPECT_TRUE(std::filesystem::exists(c.dir.file("out/model.safetensors"))) << "run " << run;
    comm::EtcdClient client(c.etcd.endpoint());
    EXPECT_TRUE(client.range_prefix("/dtrain/restart-again/", Deadline::after(5s)).empty())
        << "run " << run;
  }
}

// Two hosts (1:2, 2 s leases) with a checkpoint written; host `frozen`'s
// agent and worker are SIGSTOPped until the other host's output shows
// `seen` and the frozen agent's lease lapsed in etcd, then resumed. The
// frozen host must be left out (exit 1, LeftOut), the other must finish
// (exit 0, resuming from the checkpoint) and write the model.
void freeze_one_host_past_its_lease(const std::string& job_id, int frozen,
                                    const std::string& seen) {
  Cluster c(job_id, 2, "1:2", 1, kJob, {"--rdzv-ttl", "2"});
  ChildProcess& stale = c.agents[frozen];
  ChildProcess& other = c.agents[1 - frozen];
  ASSERT_TRUE(c.wait_for_checkpoint(c.agents[0])) << c.agents[0].output();
  ASSERT_TRUE(testing::wait_for_output(stale, "started 1 worker(s)")) << stale.output();
  const pid_t worker = first_worker_pid(stale.output());
  ASSERT_GT(worker, 0) << stale.output();
  ::kill(-stale.pid(), SIGSTOP);
  ::kill(-worker, SIGSTOP);
  const bool went_on =
      testing::wait_for_output(other, seen) && c.wait_for_lapsed_agent(job_id, frozen);
  ::kill(-worker, SIGCONT);
  ::kill(-stale.pid(), SIGCONT);
  ASSERT_TRUE(went_on) << other.output();
  const std::optional<testing::ExitStatus> left_out = stale.wait(Deadline::after(60s));
  ASSERT_TRUE(left_out.has_value()) << stale.output();
  EXPECT_EQ(left_out->code, 1) << left_out->describe() << "\n" << stale.output();
  EXPECT_NE(stale.output().find("LeftOut"), std::string::npos) << stale.output();
  const std::optional<testing::ExitStatus> survivor = other.wait(Deadline::after(120s));
  ASSERT_TRUE(survivor.has_value()) << other.output();
  EXPECT_EQ(survivor->code, 0) << survivor->describe() << "\n" << other.output();
  EXPECT_NE(other.output().find("resumed from"), std::string::npos) << other.output();
  EXPECT_TRUE(std::filesystem::exists(c.dir.file("out/model.safetensors"))) << other.output();
}

TEST(EtcdRestartAgentCli, AHostFrozenPastItsLeaseIsLeftOutAndTheOtherFinishes) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  // Host 1: the other host restarts without it (its leases lapsed).
  freeze_one_host_past_its_lease("restart-stale", 1, "of generation 1");
}

TEST(EtcdRestartAgentCli, ANewRankZeroWaitsForTheLockOfAFrozenOne) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  // Host 0: node rank 0, its worker holds the lock the new rank 0 waits for.
  freeze_one_host_past_its_lease("restart-lock", 0, "waiting up to");
}

TEST(EtcdRestartAgentCli, RefusesRestartsThatWouldTrainFromScratch) {
  testing::TempDir dir;
  write_file(dir.file("job.toml"), kJob);
  const testing::CliRun run = testing::run_dtrain(
      {"train", dir.file("job.toml"), "--output", dir.file("out"), "--rdzv", "etcd://127.0.0.1:1/j",
       "--nnodes", "1:2", "--no-elastic", "--no-resume", "--max-restarts", "1"},
      {{"DTRAIN_JOB_SECRET", "s"}});
  EXPECT_EQ(run.status.code, 2) << run.status.describe() << "\n" << run.output;
  EXPECT_NE(run.output.find("job.resume"), std::string::npos) << run.output;
}

TEST(EtcdRestartAgentCli, WorkersGetTheCommandLineWithoutTheAgentFlags) {
  const std::vector<std::string> argv = {
      "/bin/dtrain", "train", "job.toml",         "--rdzv", "etcd://h:1/j", "--nnodes=1:2",
      "--output",    "out",   "--nproc-per-node", "2",      "--no-elastic"};
  const std::vector<std::string> expected = {"/bin/dtrain", "train", "job.toml",
                                             "--output",    "out",   "--no-elastic"};
  EXPECT_EQ(cli::worker_argv(argv), expected);
}

}  // namespace
}  // namespace dtrain
