// Elastic hosts on etcd sharing ONE output folder (issue #19): three
// simulated hosts (agents on 127.0.0.2/.3/.4, one worker each, lease TTL
// 2 s) against a real etcd started by the test (skipped without
// /usr/bin/etcd), all with the same --output. No agent locks the folder;
// the worker that is rank 0 of the current generation does. The host whose
// worker holds the lock (read from the lock file once training runs) is
// SIGKILLed whole, agent and worker; the survivors re-form, a new rank 0
// takes the lock, and checkpoints later than any written before the kill
// and the final weights land in the shared folder; at the end the lock
// file is empty (released cleanly) or names a survivor's worker.
// Nothing here asserts timing.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "io/file_system.h"
#include "io/output_lock.h"
#include "testing/etcd_server.h"
#include "testing/fault_fs.h"
#include "testing/process.h"
#include "testing/test_job.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;
using testing::write_file;

std::string job_toml() {
  return testing::TestJob()
      .name("shared")
      .seed(5)
      .synthetic(2000, 16, 4)
      .mlp({32})
      .optimizer("sgd", 0.05)
      .epochs(20)
      .batch(20)
      .set("train.log_every_steps", "10")
      .set("train.checkpoint_every_steps", "20")
      .set("distributed.timeout_ms", "5000")
      .toml();
}

struct Host {
  ChildProcess agent;
  pid_t worker = -1;
};

// `setsid dtrain train JOB --output OUT --rdzv ... --host-address ADDRESS`,
// stderr merged into the captured stdout.
ChildProcess start_agent(const testing::TempDir& dir, const std::string& rdzv,
                         const std::string& address) {
  return ChildProcess::spawn(
      {"/usr/bin/setsid", "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1", DTRAIN_BINARY, "train",
       dir.file("job.toml"), "--output", dir.file("shared"), "--rdzv", rdzv, "--nnodes", "2:3",
       "--nproc-per-node", "1", "--host-address", address, "--rdzv-ttl", "2"},
      {{"OPENBLAS_NUM_THREADS", "1"},
       {"DTRAIN_JOB_SECRET", "shared-secret"},
       {"TMPDIR", dir.path()}});  // socket folders below the test's (agents are SIGKILLed)
}

// The lock file's record in `folder` (nullopt: released, or none yet).
std::optional<io::LockRecord> lock_record(const std::string& folder) {
  const std::string path = folder + "/" + std::string(io::OutputLock::kFileName);
  if (!std::filesystem::exists(path)) return std::nullopt;
  return io::decode_lock_record(io::default_file_system().read_file(path, io::kUnlimitedBytes));
}

// The highest step of the checkpoints in `folder`; -1 when none.
int64_t newest_checkpoint(const std::string& folder) {
  int64_t newest = -1;
  for (const auto& e : std::filesystem::directory_iterator(folder)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("ckpt-")) newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  return newest;
}

TEST(EtcdSharedOutput, TheRankZeroHostIsKilledAndTheNewRankZeroWritesTheSharedFolder) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  testing::EtcdServer etcd;
  testing::ready_etcd_client(etcd);
  testing::TempDir dir;
  write_file(dir.file("job.toml"), job_toml());
  const std::string folder = dir.file("shared");
  const std::string rdzv = "etcd://" + etcd.endpoint() + "/shared-test";
  std::vector<Host> hosts;
  for (const std::string address : {"127.0.0.2", "127.0.0.3", "127.0.0.4"}) {
    hosts.push_back(Host{start_agent(dir, rdzv, address)});
    Host& h = hosts.back();
    ASSERT_TRUE(testing::wait_for_output(h.agent, "started 1 worker(s)")) << h.agent.output();
    h.worker = testing::agent_worker_pid(h.agent);
    ASSERT_GT(h.worker, 0) << h.agent.output();
  }
  // Slot 0 (the first host) prints the progress; by step 100 rank 0 holds
  // the lock and has written checkpoints.
  ASSERT_TRUE(testing::wait_for_output(hosts[0].agent, "(global 100)")) << hosts[0].agent.output();
  const std::optional<io::LockRecord> holder = lock_record(folder);
  ASSERT_TRUE(holder.has_value()) << "no lock record in the shared folder";
  const auto killed = std::find_if(hosts.begin(), hosts.end(),
                                   [&](const Host& h) { return h.worker == holder->pid; });
  ASSERT_NE(killed, hosts.end()) << "the lock names pid " << holder->pid << ", no host's worker";
  const int64_t before = newest_checkpoint(folder);
  ASSERT_GE(before, 20);
  ::kill(-killed->agent.pid(), SIGKILL);
  ::kill(killed->worker, SIGKILL);
  killed->agent.wait(Deadline::after(10s));
  std::vector<pid_t> survivors;
  bool new_holder_said = false;
  for (Host& h : hosts) {
    if (&h == &*killed) continue;
    survivors.push_back(h.worker);
    const std::optional<testing::ExitStatus> status = h.agent.wait(Deadline::after(180s));
    ASSERT_TRUE(status.has_value()) << h.agent.output();
    EXPECT_EQ(status->code, 0) << status->describe() << "\n" << h.agent.output();
    EXPECT_NE(h.agent.output().find("re-forming the group"), std::string::npos) << h.agent.output();
    if (h.agent.output().find("is rank 0: holds the lock of output folder '" + folder + "'") !=
        std::string::npos) {
      new_holder_said = true;
    }
  }
  EXPECT_TRUE(new_holder_said) << "no survivor took the lock";
  EXPECT_GT(newest_checkpoint(folder), before);
  EXPECT_TRUE(std::filesystem::exists(folder + "/model.safetensors"));
  const std::optional<io::LockRecord> end = lock_record(folder);
  if (end) {
    EXPECT_NE(std::find(survivors.begin(), survivors.end(), end->pid), survivors.end())
        << "the lock names pid " << end->pid;
  }
}

}  // namespace
}  // namespace dtrain
