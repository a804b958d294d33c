// A worker as a real process: SIGKILLed mid-training, the sync job goes on
// after the heartbeat timeout; a restarted process rejoins at the current
// version and the servers end once both workers said goodbye.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "ps_test_util.h"
#include "testing/process.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;

StateDict worker_model() {
  StateDict model;
  model.insert("w", Tensor::full({1000}, 1.0f));
  return model;
}

// Test harness only; library code never reads the environment.
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

void say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// The child: worker 1, in lockstep with the parent's worker 0.
TEST(PsMultiprocess, DISABLED_Worker) {
  const comm::JobAuth auth("ps-test-job", "s3cret");
  ClientOptions o;
  o.worker = 1;
  o.num_workers = 2;
  o.server_endpoints = {env_or("PS_ENDPOINT0", ""), env_or("PS_ENDPOINT1", "")};
  o.timeout = testing::kGenerous;
  o.heartbeat_interval = std::chrono::milliseconds(100);
  Client client(o, auth, Logger::null());
  const StateDict model = worker_model();
  std::vector<Tensor> params{Tensor::zeros({1000})};
  const std::vector<Tensor> grad{Tensor::full({1000}, 1.0f)};
  uint64_t version = client.init(model, {});
  if (env_or("PS_REJOIN", "0") == "1") {
    EXPECT_EQ(client.pull(params, version), version);
    say("rejoined " + std::to_string(version));
    client.push(grad, 1, 0.1f, version);
    client.pull(params, version + 1);
    client.finish();
    return;
  }
  for (;; ++version) {  // until killed
    client.pull(params, version);
    client.push(grad, 1, 0.1f, version);
    say("pushed " + std::to_string(version));
  }
}

TEST(PsMultiprocess, AKilledWorkerProcessDoesNotStopSyncAndItsRestartRejoins) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.heartbeat_timeout = std::chrono::milliseconds(1500);
  // Worker 1 is a process: its start (exec, sanitizer start-up, a loaded
  // machine) may take longer than the heartbeat timeout, which must only
  // catch its death after it joined.
  options.join_timeout = testing::kGenerous;
  PsJob job(2, 2, options);
  const std::map<std::string, std::string> env{{"PS_ENDPOINT0", job.endpoints()[0]},
                                               {"PS_ENDPOINT1", job.endpoints()[1]}};
  auto child = dtrain::testing::spawn_test_child("PsMultiprocess.DISABLED_Worker", env);
  auto c0 = job.client(0);
  c0->init(worker_model(), {});
  std::vector<Tensor> params{Tensor::zeros({1000})};
  const std::vector<Tensor> grad{Tensor::full({1000}, 1.0f)};
  for (uint64_t v = 0; v < 3; ++v) {
    c0->push(grad, 1, 0.1f, v);
    EXPECT_EQ(c0->pull(params, v + 1), v + 1);
  }
  ASSERT_TRUE(child.wait_for_line("pushed 2", Deadline::after(testing::kGenerous)));
  child.signal(SIGKILL);
  const auto status = child.wait(Deadline::after(testing::kGenerous));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->signal, SIGKILL);
  for (uint64_t v = 3; v < 5; ++v) {
    c0->push(grad, 1, 0.1f, v);
    EXPECT_EQ(c0->pull(params, v + 1), v + 1);
  }
  EXPECT_TRUE(job.log().contains("worker 1 declared dead"));

  auto env_rejoin = env;
  env_rejoin["PS_REJOIN"] = "1";
  auto restarted = dtrain::testing::spawn_test_child("PsMultiprocess.DISABLED_Worker", env_rejoin);
  ASSERT_TRUE(restarted.wait_for_line("rejoined 5", Deadline::after(testing::kGenerous)));
  c0->push(grad, 1, 0.1f, 5);
  EXPECT_EQ(c0->pull(params, 6), 6u);
  c0->finish();
  const auto rejoined_status = restarted.wait(Deadline::after(testing::kGenerous));
  ASSERT_TRUE(rejoined_status.has_value());
  EXPECT_TRUE(rejoined_status->ok()) << rejoined_status->describe();
  job.join();
  EXPECT_EQ(job.result(0).end, ServeEnd::kFinished);
  EXPECT_EQ(job.result(1).stats.version, 6u);
}

}  // namespace
}  // namespace dtrain::ps
