// Per-host agents (cli/etcd_agent.h) as simulated hosts with their own
// addresses (127.0.0.2, 127.0.0.3: all of 127/8 is loopback on Linux),
// against a real etcd started by the test (skipped without /usr/bin/etcd),
// through the dtrain executable, with lease TTLs of 1-2 s:
//  - the workers bind their host's address, get no DTRAIN_COORDINATOR, the
//    job finishes, the last agent removes the job's keys, and the same job
//    id runs again;
//  - a host frozen (SIGSTOP of its agent and worker) past the TTL is left
//    out when it resumes: its agent says so (LeftOut) and exits 1; the
//    other host finishes;
//  - etcd stopped for 5 s during training: the job finishes, or an agent
//    fails with an error naming etcd; nothing hangs;
//  - a host killed while the group forms: the others form without it;
//  - an agent killed before it claimed a node index: nothing of it is in
//    etcd, and the next agent claims node 0.
// Nothing here asserts timing.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

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

// `timeout_ms` bounds each collective and each rendezvous (all its rounds).
std::string job_toml(int epochs, int timeout_ms = 5000) {
  return testing::TestJob()
      .name("hosts")
      .seed(5)
      .synthetic(2000, 16, 4)
      .mlp({32})
      .optimizer("sgd", 0.05)
      .epochs(epochs)
      .batch(20)
      .set("train.log_every_steps", "10")
      .set("distributed.timeout_ms", std::to_string(timeout_ms))
      .toml();
}

struct Host {
  ChildProcess agent;
  std::string output;
};

// One host: `setsid dtrain train JOB --rdzv ... --host-address ADDRESS` in
// its own session, stderr merged into the captured stdout.
// `env` is added to the agent's environment.
Host start_host(const testing::TempDir& dir, const std::string& rdzv, const std::string& address,
                const std::string& nnodes, int ttl_s, std::map<std::string, std::string> env = {}) {
  const std::string out = dir.file("out-" + address);
  env.emplace("OPENBLAS_NUM_THREADS", "1");
  env.emplace("DTRAIN_JOB_SECRET", "hosts-secret");
  return Host{ChildProcess::spawn({"/usr/bin/setsid", "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1",
                                   DTRAIN_BINARY, "train", dir.file("job.toml"), "--output", out,
                                   "--rdzv", rdzv, "--nnodes", nnodes, "--nproc-per-node", "1",
                                   "--host-address", address, "--rdzv-ttl", std::to_string(ttl_s)},
                                  env),
              out};
}

std::optional<testing::ExitStatus> finish(ChildProcess& agent) {
  return agent.wait(Deadline::after(120s));
}

class EtcdHosts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
    etcd_.emplace();
    testing::ready_etcd_client(*etcd_);
  }
  std::string rdzv(const std::string& id) const { return "etcd://" + etcd_->endpoint() + "/" + id; }

  std::optional<testing::EtcdServer> etcd_;
  testing::TempDir dir_;
};

TEST_F(EtcdHosts, WorkersBindTheirHostAndTheJobIdRunsAgain) {
  write_file(dir_.file("job.toml"), job_toml(2));
  for (int run = 0; run < 2; ++run) {
    Host a = start_host(dir_, rdzv("again"), "127.0.0.2", "2", 2);
    Host b = start_host(dir_, rdzv("again"), "127.0.0.3", "2", 2);
    for (Host* h : {&a, &b}) {
      const auto status = finish(h->agent);
      ASSERT_TRUE(status.has_value()) << h->agent.output();
      EXPECT_EQ(status->code, 0) << "run " << run << "\n" << h->agent.output();
      EXPECT_NE(h->agent.output().find("no coordinator"), std::string::npos) << h->agent.output();
      EXPECT_EQ(h->agent.output().find("DTRAIN_COORDINATOR"), std::string::npos)
          << h->agent.output();
    }
    EXPECT_NE(a.agent.output().find("host address 127.0.0.2"), std::string::npos)
        << a.agent.output();
    EXPECT_TRUE(std::filesystem::exists(a.output + "/model.safetensors") ||
                std::filesystem::exists(b.output + "/model.safetensors"));
    // The last agent to leave removed the job's keys.
    comm::EtcdClient client(etcd_->endpoint());
    EXPECT_TRUE(client.range_prefix("/dtrain/again/", Deadline::after(5s)).empty());
    std::filesystem::remove_all(a.output);
    std::filesystem::remove_all(b.output);
  }
}

TEST_F(EtcdHosts, AHostFrozenPastItsLeaseIsLeftOutAndTheOtherFinishes) {
  write_file(dir_.file("job.toml"), job_toml(40));
  Host a = start_host(dir_, rdzv("stale"), "127.0.0.2", "1:2", 1);
  ASSERT_TRUE(testing::wait_for_output(a.agent, "agent: node 0")) << a.agent.output();
  Host b = start_host(dir_, rdzv("stale"), "127.0.0.3", "1:2", 1);
  ASSERT_TRUE(testing::wait_for_output(b.agent, "started 1 worker(s)")) << b.agent.output();
  ASSERT_TRUE(testing::wait_for_output(a.agent, "step 10")) << a.agent.output();
  const pid_t b_worker = testing::agent_worker_pid(b.agent);
  ASSERT_GT(b_worker, 0) << b.agent.output();
  ::kill(-b.agent.pid(), SIGSTOP);
  ::kill(b_worker, SIGSTOP);
  // The other host re-forms without it (its lease expired).
  const bool reformed = testing::wait_for_output(a.agent, "generation 1");
  ::kill(b_worker, SIGCONT);
  ::kill(-b.agent.pid(), SIGCONT);
  ASSERT_TRUE(reformed) << a.agent.output();
  const auto stale = finish(b.agent);
  ASSERT_TRUE(stale.has_value()) << b.agent.output();
  EXPECT_EQ(stale->code, 1) << stale->describe() << "\n" << b.agent.output();
  EXPECT_NE(b.agent.output().find("LeftOut"), std::string::npos) << b.agent.output();
  const auto survivor = finish(a.agent);
  ASSERT_TRUE(survivor.has_value()) << a.agent.output();
  EXPECT_EQ(survivor->code, 0) << survivor->describe() << "\n" << a.agent.output();
  EXPECT_TRUE(std::filesystem::exists(a.output + "/model.safetensors")) << a.agent.output();
}

TEST_F(EtcdHosts, EtcdStoppedForFiveSecondsNeitherHangsNorFailsSilently) {
  write_file(dir_.file("job.toml"), job_toml(40));
  Host a = start_host(dir_, rdzv("outage"), "127.0.0.2", "2", 2);
  ASSERT_TRUE(testing::wait_for_output(a.agent, "agent: node 0")) << a.agent.output();
  Host b = start_host(dir_, rdzv("outage"), "127.0.0.3", "2", 2);
  ASSERT_TRUE(testing::wait_for_output(a.agent, "step 10")) << a.agent.output();
  etcd_->signal(SIGSTOP);
  std::this_thread::sleep_for(5s);
  etcd_->signal(SIGCONT);
  for (Host* h : {&a, &b}) {
    const auto status = finish(h->agent);
    ASSERT_TRUE(status.has_value()) << "hung:\n" << h->agent.output();
    if (status->code != 0) {
      EXPECT_NE(h->agent.output().find("etcd"), std::string::npos) << h->agent.output();
    }
  }
}

TEST_F(EtcdHosts, AHostKilledWhileTheGroupFormsIsLeftBehind) {
  write_file(dir_.file("job.toml"), job_toml(2, 60000));
  Host a = start_host(dir_, rdzv("forming"), "127.0.0.2", "2:3", 2);
  ASSERT_TRUE(testing::wait_for_output(a.agent, "agent: node 0")) << a.agent.output();
  Host b = start_host(dir_, rdzv("forming"), "127.0.0.3", "2:3", 2);
  ASSERT_TRUE(testing::wait_for_output(b.agent, "agent: node 1")) << b.agent.output();
  ::kill(-a.agent.pid(), SIGKILL);
  a.agent.wait(Deadline::after(10s));
  Host c = start_host(dir_, rdzv("forming"), "127.0.0.4", "2:3", 2);
  for (Host* h : {&b, &c}) {
    const auto status = finish(h->agent);
    ASSERT_TRUE(status.has_value()) << h->agent.output();
    EXPECT_EQ(status->code, 0) << status->describe() << "\n" << h->agent.output();
  }
  EXPECT_TRUE(std::filesystem::exists(b.output + "/model.safetensors") ||
              std::filesystem::exists(c.output + "/model.safetensors"));
}

TEST_F(EtcdHosts, AnAgentKilledBeforeItClaimsANodeIndexLeavesNothingInEtcd) {
  write_file(dir_.file("job.toml"), job_toml(1));
  Host early = start_host(dir_, rdzv("early"), "127.0.0.2", "1", 2,
                          {{"DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM", "1"}});
  ASSERT_TRUE(testing::wait_for_output(early.agent, "stopped before claiming a node index"))
      << early.agent.output();
  ::kill(-early.agent.pid(), SIGKILL);
  ASSERT_TRUE(early.agent.wait(Deadline::after(10s)).has_value()) << early.agent.output();
  comm::EtcdClient client(etcd_->endpoint());
  EXPECT_TRUE(client.range_prefix("/dtrain/early/", Deadline::after(5s)).empty());
  // Its index was never taken: the next agent of the job is node 0.
  Host next = start_host(dir_, rdzv("early"), "127.0.0.3", "1", 2);
  const auto status = finish(next.agent);
  ASSERT_TRUE(status.has_value()) << next.agent.output();
  EXPECT_EQ(status->code, 0) << status->describe() << "\n" << next.agent.output();
  EXPECT_NE(next.agent.output().find("agent: node 0"), std::string::npos) << next.agent.output();
}

}  // namespace
}  // namespace dtrain
