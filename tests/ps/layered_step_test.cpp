// ps::LayeredStep (client_layers.h): push_step()'s requests sent one server
// at a time, the last server first as a backward pass would. Two sync
// workers, two servers on threads that are each other's backup (R = 1):
//  - without a failure the final parameters equal push_step()'s bit for bit;
//  - server 1 dies while closing a version (the layered requests of both
//    workers wait there for their replies): its backup takes the range over,
//    the requests are sent again to it, and the end is bit-identical again,
//    with momentum and with Adam;
//    also when each reply is taken alone (wait(s), the next forward's
//    per-layer wait) instead of by finish();
//  - misuse (a server twice, finish() before every server, a wait before
//    the send, a compressed push) is a UsageError naming it.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ps/client.h"
#include "ps/client_layers.h"
#include "ps/server.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/optimizer_configs.h"

namespace dtrain::ps {
namespace {

using dtrain::testing::adam;
using dtrain::testing::momentum;
using testing::CapturingLog;
using testing::kGenerous;

constexpr int kServers = 2;
constexpr int kWorkers = 2;
constexpr uint64_t kSteps = 8;

StateDict model_spec() {
  StateDict d;
  d.insert("w", Tensor::zeros({5, 7}));  // 35 + 3 floats: 19 / 19 over two servers
  d.insert("b", Tensor::zeros({3}));
  return d;
}

// Worker w's gradient at step t: fixed, different per worker and step.
std::vector<Tensor> gradient(int w, uint64_t t) {
  std::vector<Tensor> g;
  for (const auto& [name, tensor] : model_spec()) {
    Tensor x = Tensor::zeros(tensor.shape());
    for (int64_t i = 0; i < x.numel(); ++i) {
      x.data()[i] = std::sin(0.3f * static_cast<float>(i) + 1.7f * static_cast<float>(w) +
                             0.11f * static_cast<float>(t));
    }
    g.push_back(x);
  }
  return g;
}

// kReplyByReply: as kLayered, then each server's reply taken alone (server 0
// first, as the next forward's per-layer waits do) before finish().
enum class Steps { kPushStep, kLayered, kReplyByReply };

// Two servers (each the other's backup) on threads; server 1 throws while
// closing version `kill_at` (0: never) and its thread destroys it, which
// breaks every connection to it as a process death does.
class TakeoverJob {
 public:
  TakeoverJob(optim::OptimizerConfig optimizer, uint64_t kill_at) : auth_("layered-test", "k") {
    for (int s = 0; s < kServers; ++s) {
      endpoints_.push_back("ipc://" + dir_.file("server-" + std::to_string(s)));
    }
    for (int s = 0; s < kServers; ++s) {
      ServerOptions o =
          testing::replicated_server_options(s, kServers, kWorkers, endpoints_, optimizer, 1);
      if (s == 1 && kill_at > 0) {
        o.on_version = [kill_at](uint64_t version) {
          if (version == kill_at) throw testing::ServerKilled();
        };
      }
      servers_.push_back(std::make_unique<Server>(o, auth_, log_.logger()));
      servers_.back()->set_server_endpoints(endpoints_);
    }
    for (int s = 0; s < kServers; ++s) {
      threads_.emplace_back([this, s](std::stop_token stop) {
        try {
          servers_[static_cast<size_t>(s)]->run(stop);
        } catch (const testing::ServerKilled&) {
          servers_[static_cast<size_t>(s)].reset();
        }
      });
    }
  }
  ~TakeoverJob() {
    for (auto& t : threads_) t.request_stop();
  }

  // Both workers through kSteps sync steps; worker 0's final parameters.
  std::vector<float> train(Steps steps) {
    return testing::run_sync_workers(
        kWorkers, endpoints_, 1, auth_, log_.logger(),
        [&](Client& client, int w, std::vector<Tensor>& params) {
          client.init(model_spec(), {});
          params = {Tensor::zeros({5, 7}), Tensor::zeros({3})};
          uint64_t version = client.pull(params, 0);
          for (uint64_t t = 0; t < kSteps; ++t) {
            const DensePush push{w + 1, 0.05f, version, 0.0, 0, 0.0, {}};
            const std::vector<Tensor> grads = gradient(w, t);
            if (steps == Steps::kPushStep) {
              version = client.push_step({}, grads, push, params, version + 1);
              continue;
            }
            LayeredStep step(client, push, version + 1);
            step.send(1, grads);
            step.send(0, grads);
            if (steps == Steps::kReplyByReply) {
              step.wait(0, params);
              EXPECT_TRUE(step.taken(0));
              EXPECT_FALSE(step.taken(1));
              step.wait(1, params);
              step.wait(1, params);  // a no-op once taken
            }
            version = step.finish(params);
          }
        });
  }

  CapturingLog& log() { return log_; }

 private:
  dtrain::testing::TempDir dir_;
  CapturingLog log_;
  comm::JobAuth auth_;
  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::jthread> threads_;  // last: joined before the servers go
};

void expect_bit_identical(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_FALSE(want.empty());
  testing::expect_bit_identical(got, want);
}

TEST(PsLayeredStep, LastServerFirstEndsBitIdenticalToPushStep) {
  const std::vector<float> reference = TakeoverJob(momentum(), 0).train(Steps::kPushStep);
  const std::vector<float> layered = TakeoverJob(momentum(), 0).train(Steps::kLayered);
  expect_bit_identical(layered, reference);
}

TEST(PsLayeredStep, RepliesTakenOneByOneEndBitIdenticalToPushStep) {
  const std::vector<float> reference = TakeoverJob(momentum(), 0).train(Steps::kPushStep);
  const std::vector<float> layered = TakeoverJob(momentum(), 0).train(Steps::kReplyByReply);
  expect_bit_identical(layered, reference);
}

void expect_takeover_bit_identical(const optim::OptimizerConfig& optimizer,
                                   Steps steps = Steps::kLayered) {
  const std::vector<float> reference = TakeoverJob(optimizer, 0).train(Steps::kPushStep);
  TakeoverJob faulty(optimizer, 5);
  const std::vector<float> layered = faulty.train(steps);
  EXPECT_TRUE(faulty.log().contains("ps server 0: took over server 1's range at version"))
      << faulty.log().text();
  expect_bit_identical(layered, reference);
}

TEST(PsLayeredStep, AServerDyingMidVersionIsTakenOverBitIdenticalWithMomentum) {
  expect_takeover_bit_identical(momentum());
}

TEST(PsLayeredStep, AServerDyingMidVersionIsTakenOverBitIdenticalWithAdam) {
  expect_takeover_bit_identical(adam());
}

// Server 1's reply waited for alone (wait(1)) when server 1 dies: the same
// recovery as finish()'s.
TEST(PsLayeredStep, AServerDyingWhileItsReplyIsTakenAloneIsTakenOverBitIdenticalWithAdam) {
  expect_takeover_bit_identical(adam(), Steps::kReplyByReply);
}

TEST(PsLayeredStep, MisuseIsAUsageErrorNamingIt) {
  testing::PsJob job(kServers, 1, ServerOptions{});
  std::unique_ptr<Client> client = job.client(0);
  client->init(model_spec(), {});
  std::vector<Tensor> params{Tensor::zeros({5, 7}), Tensor::zeros({3})};
  const DensePush push{1, 0.1f, 0, 0.0, 0, 0.0, {}};
  {
    LayeredStep step(*client, push, 1);
    dtrain::testing::expect_error_naming<UsageError>(
        [&] { step.finish(params); }, "finish() before server 0's request of version 0 was sent");
    dtrain::testing::expect_error_naming<UsageError>(
        [&] { step.wait(0, params); },
        "waiting for server 0's reply of version >= 1 before its request was sent");
    step.send(0, gradient(0, 0));
    dtrain::testing::expect_error_naming<UsageError>(
        [&] { step.send(0, gradient(0, 0)); }, "server 0's request of version 0 was already sent");
    dtrain::testing::expect_error_naming<UsageError>([&] { step.send(2, gradient(0, 0)); },
                                                     "server 2 out of range [0, 2)");
    step.send(1, gradient(0, 0));
    EXPECT_EQ(step.finish(params), 1u);
  }
  DensePush compressed = push;
  compressed.compression.compressed = true;
  dtrain::testing::expect_error_naming<UsageError>(
      [&] { LayeredStep step(*client, compressed, 1); },
      "a compressed push is not sent one server at a time");
  client->finish();
}

}  // namespace
}  // namespace dtrain::ps
