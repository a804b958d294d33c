// Co-located ps servers (strategy/ps_colocated.h) in one test process: a
// worker's PsStrategy with its server on a thread of its own, reached over
// inproc. What the job-level tests (PsColocatedCli in tests/cli/ps_cli_test.cpp)
// cannot show cheaply: the hosted server's failure fails its worker with the
// server's own error, a server that is not done makes finish() time out
// naming it, and a hosted server stops and joins when destroyed mid-serve.
#include "strategy/ps_colocated.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "testing/expect_error.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;

comm::JobAuth test_auth() { return comm::JobAuth("ps-colocated-test", ""); }

ps::ServerOptions hosted_options(int workers) {
  ps::ServerOptions o;
  o.num_workers = workers;
  o.optimizer.type = "sgd";
  o.optimizer.lr = 0.1;
  o.join_timeout = 60s;
  return o;
}

ps::ClientOptions worker_options(std::vector<std::string> endpoints, int workers) {
  ps::ClientOptions c;
  c.num_workers = workers;
  c.server_endpoints = std::move(endpoints);
  c.timeout = 2s;  // how long the worker waits for a server that failed
  c.heartbeat_interval = 200ms;
  return c;
}

std::unique_ptr<nn::Module> small_model() {
  Rng rng(3);
  auto model = std::make_unique<nn::Sequential>();
  model->add("fc", std::make_unique<nn::Linear>(4, 3, rng));
  return model;
}

struct Batch {
  Tensor x = Tensor::full({6, 4}, 0.5f);
  std::vector<int64_t> y = {0, 1, 2, 0, 1, 2};
};

TEST(PsColocated, TheHostedServersFailureFailsTheWorkerWithTheServersError) {
  // The server throws when version 2 closes (after the worker's second
  // push): the third step's pull gets no reply, and the worker's error is
  // the server's, not the client's timeout.
  ps::ServerOptions o = hosted_options(1);
  o.on_version = [](uint64_t version) {
    if (version == 2) throw InternalError("planted server failure at version 2");
  };
  auto hosted = std::make_unique<HostedServer>(o, test_auth(), Logger::null());
  auto worker = make_colocated_ps_strategy(std::move(hosted), small_model(),
                                           worker_options({"unused"}, 1), test_auth(),
                                           Logger::null(), PsOptions{}, cross_entropy_loss(), 5s);
  const Batch b;
  worker->train_step(b.x, b.y);  // version 0 -> 1
  dtrain::testing::expect_error_naming<InternalError>(
      [&] {
        for (int step = 0; step < 3; ++step) worker->train_step(b.x, b.y);
      },
      "planted server failure at version 2");
  // Every later call reports it at once.
  dtrain::testing::expect_error_naming<InternalError>([&] { worker->train_step(b.x, b.y); },
                                                      "planted server failure at version 2");
}

TEST(PsColocated, AReplyInFlightThatNeverComesReportsTheHostedServersError) {
  // Overlap: a step returns once server 0's reply is in. Server 1 (hosted)
  // answers step 1 (version 2), then holds in its version hook until the
  // test has finished step 2, and throws: step 2's reply from it never
  // comes. model(), which takes the replies in flight first, reports the
  // hosted server's error, not the client's timeout waiting for server 1.
  ps::ServerOptions first = hosted_options(1);
  first.server = 0;
  first.num_servers = 2;
  ps::Server server0(first, test_auth(), Logger::null());
  std::jthread serving(
      [&server0](std::stop_token stop) { server0.run(stop, Deadline::after(120s)); });
  std::promise<void> release;
  struct ReleaseOnExit {  // a failing test never leaves the hook waiting
    std::promise<void>& p;
    bool done = false;
    void operator()() {
      if (!std::exchange(done, true)) p.set_value();
    }
    ~ReleaseOnExit() { (*this)(); }
  } released{release};
  ps::ServerOptions second = hosted_options(1);
  second.server = 1;
  second.num_servers = 2;
  second.on_version = [go = release.get_future().share()](uint64_t version) {
    if (version != 2) return;
    go.wait_for(60s);
    throw InternalError("planted server failure after version 2");
  };
  auto hosted = std::make_unique<HostedServer>(second, test_auth(), Logger::null());
  PsOptions o;
  o.overlap = true;
  auto worker = make_colocated_ps_strategy(
      std::move(hosted), small_model(), worker_options({server0.endpoint(), "unused"}, 1),
      test_auth(), Logger::null(), o, cross_entropy_loss(), 5s);
  ASSERT_NE(worker->overlap(), nullptr);
  const Batch b;
  for (int step = 0; step < 3; ++step) worker->train_step(b.x, b.y);
  EXPECT_TRUE(worker->overlap()->replies_pending());
  released();
  dtrain::testing::expect_error_naming<InternalError>([&] { worker->model(); },
                                                      "planted server failure after version 2");
}

TEST(PsColocated, FinishWaitsForTheOtherWorkersAndTimesOutNamingTheServer) {
  // Two workers, only worker 0 exists: its hosted server is not done when
  // worker 0 finishes, so finish() gives up after its timeout, naming it.
  auto hosted = std::make_unique<HostedServer>(hosted_options(2), test_auth(), Logger::null());
  ps::ClientOptions c = worker_options({"unused"}, 2);
  auto worker = make_colocated_ps_strategy(std::move(hosted), small_model(), c, test_auth(),
                                           Logger::null(), PsOptions{}, cross_entropy_loss(), 50ms);
  dtrain::testing::expect_error_naming<TimeoutError>(
      [&] { worker->finish(); },
      "hosted ps server 0 with rank 0: timed out after 50 ms waiting for the other workers");
}

TEST(PsColocated, AOneWorkerJobFinishesWithItsServer) {
  auto hosted = std::make_unique<HostedServer>(hosted_options(1), test_auth(), Logger::null());
  HostedServer* server = hosted.get();  // owned by the strategy, which outlives its use here
  auto worker = make_colocated_ps_strategy(std::move(hosted), small_model(),
                                           worker_options({"unused"}, 1), test_auth(),
                                           Logger::null(), PsOptions{}, cross_entropy_loss(), 30s);
  const Batch b;
  for (int step = 0; step < 3; ++step) worker->train_step(b.x, b.y);
  worker->finish();
  const ps::ServeResult result = server->wait(0ms);
  EXPECT_EQ(result.end, ps::ServeEnd::kFinished);
  EXPECT_EQ(result.stats.version, 3u);
  EXPECT_EQ(result.stats.pushes_applied, 3u);
}

TEST(PsColocated, AHostedServerStopsAndJoinsWhenDestroyedWhileServing) {
  // Nobody connects: the server would serve until its join timeout (60 s);
  // destroying it stops it within its poll interval instead.
  auto hosted = std::make_unique<HostedServer>(hosted_options(2), test_auth(), Logger::null());
  EXPECT_EQ(hosted->server(), 0);
  EXPECT_THROW(hosted->wait(0ms), TimeoutError);
  hosted.reset();
}

TEST(PsColocated, ASecondEndpointMustBeInproc) {
  ps::ServerOptions o = hosted_options(1);
  o.inproc_endpoint = "tcp://127.0.0.1:0";
  dtrain::testing::expect_error_naming<ConfigError>(
      [&] { ps::Server server(o, test_auth(), Logger::null()); },
      "a second endpoint is for a ROUTER and must be inproc://, not 'tcp://127.0.0.1:0'");
}

}  // namespace
}  // namespace dtrain::strategy
