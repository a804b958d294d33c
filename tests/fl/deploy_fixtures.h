// A deployed federated job for the tests: an FlServer and real FlClients
// (ClientTrainer) on threads over loopback, the job's settings in one place
// with the simulation options of the same job, so a test can compare a
// deployed run with run_simulation().
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/wire/auth.h"
#include "fl/fl_client.h"
#include "fl/fl_server.h"
#include "fl/flat_model.h"
#include "fl/simulation.h"
#include "fl/upload_codec.h"
#include "sim_fixtures.h"
#include "testing/junk_frames.h"

namespace dtrain::fl::fixtures {

struct DeployJob {
  std::string job;
  std::string secret;
  int64_t clients;
  FlConfig config;
  data::TensorDataset train;
  std::vector<std::vector<int64_t>> parts;
  ModelFactory make_model = mlp_model(6, 8, 3);
  optim::OptimizerConfig optimizer;
  uint64_t seed = 5;
  compress::Options upload;  // method none: dense updates
  double mean_samples = 0;   // client_weight()'s n_bar (secure aggregation)
  int max_round_attempts = 3;
  // Per-test changes to a client's options (silence, tampering, pace).
  std::function<void(int64_t client, FlClientOptions&)> customize_client;

  // Client k holds sizes[k] consecutive samples of Gaussian blobs; every
  // client is sampled each round (fraction 1) and all must answer.
  DeployJob(std::string job_name, std::string job_secret, const std::vector<int64_t>& sizes,
            int64_t rounds, double round_timeout_s)
      : job(std::move(job_name)),
        secret(std::move(job_secret)),
        clients(static_cast<int64_t>(sizes.size())),
        train(blobs(std::accumulate(sizes.begin(), sizes.end(), int64_t{0}), 6, 3)),
        parts(consecutive_parts(sizes)) {
    config.clients = clients;
    config.fraction = 1.0;
    config.rounds = rounds;
    config.local_epochs = 2;
    config.local_batch = 10;
    config.min_fit_clients = clients;
    config.round_timeout_s = round_timeout_s;
    config.server = "tcp://127.0.0.1:0";
    optimizer.lr = 0.1f;
  }

  comm::JobAuth auth() const { return comm::JobAuth(job, secret); }

  // Secure aggregation with a clip above every delta value (nothing is
  // clipped), n_bar the mean part size, and a round that closes with one
  // included client.
  void use_secure_aggregation() {
    config.min_fit_clients = 1;
    config.secure_aggregation = true;
    config.secagg_clip = 10.0;
    mean_samples = static_cast<double>(train.size()) / static_cast<double>(clients);
  }

  // The same job simulated (one thread: bit-identical for a seed).
  SimulationOptions simulation_options() const {
    SimulationOptions o;
    o.config = config;
    o.config.threads = 1;
    o.seed = seed;
    o.client_optimizer = optimizer;
    o.train = &train;
    o.parts = parts;
    o.make_model = make_model;
    o.upload = upload;
    return o;
  }
  std::vector<float> simulated() const {
    return run_simulation(simulation_options()).state.weights;
  }

  FlServerOptions server_options() const {
    FlServerOptions o;
    o.config = config;
    o.seed = seed;
    o.job_name = job;
    o.initial_weights = flatten(*make_model());
    o.done_linger = std::chrono::milliseconds(300);
    o.upload = upload;
    if (upload.method != compress::Method::kNone) o.layouts = layouts_of(*make_model());
    o.mean_samples = mean_samples;
    o.max_round_attempts = max_round_attempts;
    return o;
  }

  FlClientOptions client_options(int64_t id, const std::string& server) const {
    FlClientOptions o;
    o.client = id;
    o.server = server;
    o.seed = seed;
    o.make_model = make_model;
    o.train = &train;
    o.indices = parts[static_cast<size_t>(id)];
    o.optimizer = optimizer;
    o.upload = upload;
    o.heartbeat_interval = std::chrono::milliseconds(100);
    o.server_timeout = std::chrono::milliseconds(30000);
    o.fl = config;
    if (customize_client) customize_client(id, o);
    return o;
  }
};

// Runs `serve` (the server's side) with one FlClient per client of the job
// on threads connected to `server`. With stop_clients the clients are asked
// to stop once `serve` returned (a failed server sends no kDone); without,
// they end on the server's kDone. Returns each client's result.
inline std::vector<FlClientResult> run_with_clients(const DeployJob& s, const std::string& server,
                                                    testing::LineLog& log,
                                                    const std::function<void()>& serve,
                                                    bool stop_clients = true) {
  std::vector<FlClientResult> results(static_cast<size_t>(s.clients));
  std::stop_source stop;
  {
    std::vector<std::jthread> threads;
    for (int64_t k = 0; k < s.clients; ++k) {
      threads.emplace_back([&, k] {
        FlClient client(s.client_options(k, server), s.auth(), log.logger());
        results[static_cast<size_t>(k)] = client.run(stop.get_token());
      });
    }
    serve();
    if (stop_clients) stop.request_stop();
  }  // the clients join here
  return results;
}

// One server's whole run with the job's clients (run_with_clients): its
// result, its rounds' reports, its statistics after the run and the
// clients' results.
struct DeployedRun {
  FlServerResult result;
  std::vector<RoundReport> reports;
  FlServerStats stats;
  std::vector<FlClientResult> clients;
};

inline DeployedRun run_server(const DeployJob& s, testing::LineLog& log, FlServerOptions o,
                              bool stop_clients = true) {
  DeployedRun run;
  o.on_round = [&run](const RoundReport& r) { run.reports.push_back(r); };
  FlServer server(o, s.auth(), log.logger());
  run.clients = run_with_clients(
      s, server.endpoint(), log, [&] { run.result = server.run(); }, stop_clients);
  run.stats = server.stats();
  return run;
}

// A server replaced mid-job: the first server stops once round `stop_after`
// is checkpointed (as if killed then), and a second one, resumed from that
// state on the same address (the clients' sockets reconnect to it), runs the
// rest; the clients run throughout and end on its kDone.
struct Restarted {
  std::optional<ServerState> saved;  // the first server's checkpoint
  FlServerResult result;             // the second server's
  std::vector<RoundReport> reports;  // the second server's rounds
  std::vector<FlClientResult> clients;
};

inline Restarted run_with_restart(const DeployJob& s, testing::LineLog& log, int64_t stop_after) {
  Restarted out;
  std::stop_source stop;
  FlServerOptions o1 = s.server_options();
  o1.on_checkpoint = [&](const ServerState& state) {
    if (state.round != stop_after) return;
    out.saved = state;
    stop.request_stop();
  };
  auto first = std::make_unique<FlServer>(o1, s.auth(), log.logger());
  const std::string endpoint = first->endpoint();
  auto serve = [&] {
    EXPECT_TRUE(first->run(stop.get_token()).stopped);
    first.reset();
    ASSERT_TRUE(out.saved.has_value());
    FlServerOptions o2 = s.server_options();
    o2.config.server = endpoint;
    o2.resume = out.saved;
    o2.on_round = [&out](const RoundReport& r) { out.reports.push_back(r); };
    FlServer second(o2, s.auth(), log.logger());
    out.result = second.run();
  };
  out.clients = run_with_clients(s, endpoint, log, serve, /*stop_clients=*/false);
  return out;
}

}  // namespace dtrain::fl::fixtures
