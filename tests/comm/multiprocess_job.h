// The parent side of the comm tests that run ranks as real processes: the
// test process hosts the rendezvous coordinator and spawns its own binary
// once per rank, running a disabled child test (`child_test`) that reads its
// role from DTRAIN_TEST_* variables and prints kStarted first; a child's
// failed expectations make it exit non-zero.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "core/log.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain::comm::test {

// Printed by every child first: proves the gtest filter matched the child test.
inline constexpr const char* kStarted = "DTRAIN_CHILD_STARTED";
// Printed by a victim once the others are busy with it.
inline constexpr const char* kReady = "DTRAIN_READY";

// Test harness only; library code never reads the environment.
inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

struct ProcessJob {
  // The children's ipc sockets (a killed child cannot remove its own);
  // declared before `children`: removed after they are reaped.
  dtrain::testing::TempDir ipc_dir;
  std::string child_test;
  std::string name;
  std::string secret;
  int world = 0;
  std::unique_ptr<RendezvousServer> coordinator;
  std::vector<dtrain::testing::ChildProcess> children;

  ProcessJob(std::string child_test_name, const std::string& test, int world_size,
             std::string job_secret = "")
      : child_test(std::move(child_test_name)),
        name(fmt::format("{}-{}", test, getpid())),
        secret(std::move(job_secret)),
        world(world_size),
        coordinator(std::make_unique<RendezvousServer>("127.0.0.1", 0, world_size,
                                                       JobAuth(name, secret), Logger::null())) {}

  dtrain::testing::ChildProcess spawn(int rank, const std::string& scenario,
                                      const std::string& child_secret,
                                      std::map<std::string, std::string> extra = {}) {
    extra.insert({{"DTRAIN_TEST_RANK", std::to_string(rank)},
                  {"DTRAIN_TEST_WORLD", std::to_string(world)},
                  {"DTRAIN_TEST_JOB", name},
                  {"DTRAIN_TEST_SECRET", child_secret},
                  {"DTRAIN_TEST_SCENARIO", scenario},
                  {"DTRAIN_TEST_IPC_DIR", ipc_dir.path()},
                  {"DTRAIN_TEST_COORDINATOR", coordinator->address()}});
    return dtrain::testing::spawn_test_child(child_test, extra);
  }
  void spawn_all(const std::string& scenario,
                 const std::map<std::string, std::string>& extra = {}) {
    for (int r = 0; r < world; ++r) children.push_back(spawn(r, scenario, secret, extra));
  }
};

inline void expect_exit_ok(dtrain::testing::ChildProcess& child, const std::string& who,
                           std::chrono::seconds deadline) {
  const auto status = child.wait(Deadline::after(deadline));
  ASSERT_TRUE(status.has_value()) << who << " still running after " << deadline.count()
                                  << " s; output:\n"
                                  << child.output();
  EXPECT_TRUE(status->ok()) << who << " " << status->describe() << "; output:\n" << child.output();
  EXPECT_NE(child.output().find(kStarted), std::string::npos)
      << who << " did not run the child test; output:\n"
      << child.output();
}

// The last rank becomes unreachable (SIGKILL: its sockets close; SIGSTOP: it
// just goes silent) once it printed kReady; every other rank must exit 0,
// which their child test makes conditional on naming the victim.
inline void run_victim_test(ProcessJob& job, const std::string& scenario, int sig,
                            std::chrono::seconds deadline,
                            const std::map<std::string, std::string>& extra = {}) {
  job.spawn_all(scenario, extra);
  dtrain::testing::ChildProcess& victim = job.children.back();
  ASSERT_TRUE(victim.wait_for_line(kReady, Deadline::after(deadline)))
      << "victim never got ready; output:\n"
      << victim.output();
  victim.signal(sig);
  for (int r = 0; r + 1 < job.world; ++r) {
    expect_exit_ok(job.children[static_cast<size_t>(r)], fmt::format("survivor {}", r), deadline);
  }
  if (sig == SIGKILL) {
    const auto status = victim.wait(Deadline::after(deadline));
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->signal, SIGKILL) << status->describe();
  }
  // A stopped victim is killed and reaped by its ChildProcess.
}

}  // namespace dtrain::comm::test
