// A parameter-server job inside one test process: S servers, each running
// Server::run on its own std::jthread over tcp loopback, and Clients made on
// demand. The destructor stops and joins the servers. Also the harness of
// the takeover tests (failover_test, layered_step_test): a server killed on
// its thread (ServerKilled), a replicated server's options, sync workers on
// threads (run_sync_workers) and a bit-for-bit comparison.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "core/deadline.h"
#include "core/log.h"
#include "optim/optimizer_config.h"
#include "ps/client.h"
#include "ps/messages.h"
#include "ps/server.h"

namespace dtrain::ps::testing {

// Collects log lines so that tests can assert on what was logged.
class CapturingLog {
 public:
  CapturingLog()
      : logger_(LogLevel::kInfo, [this](LogLevel, std::string_view line) {
          std::lock_guard lock(mutex_);
          lines_.emplace_back(line);
        }) {}
  Logger& logger() { return logger_; }
  bool contains(const std::string& text) {
    std::lock_guard lock(mutex_);
    for (const auto& line : lines_) {
      if (line.find(text) != std::string::npos) return true;
    }
    return false;
  }
  // Every line so far, one per line: for a failing assertion's message.
  std::string text() {
    std::lock_guard lock(mutex_);
    std::string all;
    for (const auto& line : lines_) all.append(line).append("\n");
    return all;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
  Logger logger_;
};

inline constexpr std::chrono::milliseconds kGenerous{60000};

// The death of a server on a test thread: thrown from its
// ServerOptions::on_version; the thread that runs the server then destroys
// it, which closes every connection to it as a process death does.
struct ServerKilled : std::runtime_error {
  ServerKilled() : std::runtime_error("killed by the test") {}
};

// Server `s` of a sync job of `num_servers` servers over `endpoints`, each
// range copied to `replicas` backups. A backup whose connection broke is
// skipped at once; one silent for 2 s counts as lagging (a survivor's own
// range loses its backup with the victim).
inline ServerOptions replicated_server_options(int s, int num_servers, int num_workers,
                                               const std::vector<std::string>& endpoints,
                                               const optim::OptimizerConfig& optimizer,
                                               int replicas) {
  ServerOptions o;
  o.server = s;
  o.num_servers = num_servers;
  o.num_workers = num_workers;
  o.bind_endpoint = endpoints[static_cast<size_t>(s)];
  o.consistency = Consistency::kSync;
  o.optimizer = optimizer;
  o.replicas = replicas;
  o.replica_timeout = std::chrono::milliseconds(2000);
  return o;
}

// Runs workers 0 .. num_workers-1 of a sync job against `endpoints` with
// `replicas` (worker 0 on the calling thread, the others on threads of
// their own): each makes its Client, `body(client, w, params)` trains (init,
// pulls, pushes) and leaves its final parameters in `params`, then the
// client finishes. Returns worker 0's final parameters, flattened. A body
// that failed fatally (ASSERT_*) returns early: no finish().
inline std::vector<float> run_sync_workers(
    int num_workers, const std::vector<std::string>& endpoints, int replicas,
    const comm::JobAuth& auth, Logger& logger,
    const std::function<void(Client&, int, std::vector<Tensor>&)>& body) {
  std::vector<float> out;
  auto worker = [&](int w) {
    ClientOptions o;
    o.worker = w;
    o.num_workers = num_workers;
    o.server_endpoints = endpoints;
    o.timeout = kGenerous;
    o.heartbeat_interval = std::chrono::milliseconds(100);
    o.replicas = replicas;
    Client client(o, auth, logger);
    std::vector<Tensor> params;
    body(client, w, params);
    if (::testing::Test::HasFatalFailure()) return;
    if (w == 0) {
      for (const Tensor& p : params) {
        const auto v = p.to_vector();
        out.insert(out.end(), v.begin(), v.end());
      }
    }
    client.finish();
  };
  std::vector<std::jthread> others;
  for (int w = 1; w < num_workers; ++w) others.emplace_back(worker, w);
  worker(0);
  others.clear();  // joined
  return out;
}

// The job of the takeover tests (failover, fencing, a dead backup): init
// "emb" [4, 6] and "bias" [5] (29 floats: 15 / 14 on two servers), pull,
// then `steps` sync steps, each a push of worker w's gradient
// cos(0.7 i - 0.9 w + 0.23 t) with 2w + 1 samples at lr 0.05, then a pull;
// `before_step(version)` runs before each push (a fatal failure in it ends
// the training).
inline void train_two_tensors(Client& client, int w, std::vector<Tensor>& params, uint64_t steps,
                              const std::function<void(uint64_t)>& before_step = {}) {
  StateDict spec;
  spec.insert("emb", Tensor::zeros({4, 6}));
  spec.insert("bias", Tensor::zeros({5}));
  client.init(spec, {});
  params = {Tensor::zeros({4, 6}), Tensor::zeros({5})};
  uint64_t version = client.pull(params, 0);
  for (uint64_t t = 0; t < steps; ++t) {
    if (before_step) before_step(version);
    if (::testing::Test::HasFatalFailure()) return;
    std::vector<Tensor> grads;
    for (const Tensor& p : params) {
      Tensor g = Tensor::zeros(p.shape());
      for (int64_t i = 0; i < g.numel(); ++i) {
        g.data()[i] = std::cos(0.7f * static_cast<float>(i) - 0.9f * static_cast<float>(w) +
                               0.23f * static_cast<float>(t));
      }
      grads.push_back(g);
    }
    client.push(grads, 2 * w + 1, 0.05f, version);
    version = client.pull(params, version + 1);
  }
}

// Fails at the first float of `got` that differs from `want` in any bit.
inline void expect_bit_identical(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
}

// One step of a lone async worker: init w = {1, 2, 3}, push ones with one
// sample at the server's lr 1, pull: w is {0, 1, 2}.
inline void expect_one_async_step(Client& client) {
  StateDict model;
  model.insert("w", Tensor::from_vector({1, 2, 3}, {3}));
  EXPECT_EQ(client.init(model, {}), 0u);
  client.push({Tensor::from_vector({1, 1, 1}, {3})}, 1, 1.0f, 0);
  std::vector<Tensor> params{Tensor::zeros({3})};
  EXPECT_EQ(client.pull(params, 1), 1u);
  EXPECT_EQ(params[0].to_vector(), (std::vector<float>{0, 1, 2}));
}

class PsJob {
 public:
  PsJob(int num_servers, int num_workers, ServerOptions base, const std::string& secret = "s3cret")
      : auth_("ps-test-job", secret),
        num_workers_(num_workers),
        results_(static_cast<size_t>(num_servers)) {
    for (int s = 0; s < num_servers; ++s) {
      ServerOptions o = base;
      o.server = s;
      o.num_servers = num_servers;
      o.num_workers = num_workers;
      servers_.push_back(std::make_unique<Server>(o, auth_, log_.logger()));
      endpoints_.push_back(servers_.back()->endpoint());
    }
    if (base.replicas > 0) {
      for (auto& server : servers_) server->set_server_endpoints(endpoints_);
    }
    for (int s = 0; s < num_servers; ++s) {
      threads_.emplace_back([this, s](std::stop_token stop) {
        results_[static_cast<size_t>(s)] = servers_[static_cast<size_t>(s)]->run(stop);
      });
    }
  }
  ~PsJob() { stop(); }

  // Stops and joins every server thread; afterwards result() and server() may be read.
  void stop() {
    for (auto& t : threads_) t.request_stop();
    join();
  }
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  std::unique_ptr<Client> client(int worker, std::chrono::milliseconds timeout = kGenerous,
                                 const comm::JobAuth* auth = nullptr) {
    ClientOptions o;
    o.worker = worker;
    o.num_workers = num_workers_;
    o.server_endpoints = endpoints_;
    o.timeout = timeout;
    o.heartbeat_interval = std::chrono::milliseconds(100);
    return std::make_unique<Client>(o, auth ? *auth : auth_, log_.logger());
  }

  // One client per worker, each init()ed with `dense` and `tables` in worker
  // order (every test that starts all the job's workers the same way).
  std::vector<std::unique_ptr<Client>> initialised_clients(
      const StateDict& dense, const std::vector<SparseTableSpec>& tables) {
    std::vector<std::unique_ptr<Client>> clients;
    for (int w = 0; w < num_workers_; ++w) {
      clients.push_back(client(w));
      clients.back()->init(dense, tables);
    }
    return clients;
  }

  const comm::JobAuth& auth() const { return auth_; }
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  Server& server(int s) { return *servers_[static_cast<size_t>(s)]; }
  const ServeResult& result(int s) const { return results_[static_cast<size_t>(s)]; }
  CapturingLog& log() { return log_; }

 private:
  CapturingLog log_;
  comm::JobAuth auth_;
  int num_workers_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::string> endpoints_;
  std::vector<ServeResult> results_;
  std::vector<std::jthread> threads_;  // last: joined before the servers go
};

}  // namespace dtrain::ps::testing

namespace dtrain::ps::testing {

// A hand-driven DEALER socket for sending crafted or hostile frames to one server.
class RawPeer {
 public:
  RawPeer(const std::string& endpoint, const comm::JobAuth& auth)
      : auth_(auth), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void send_parts(const std::vector<std::vector<std::byte>>& parts) {
    for (size_t i = 0; i < parts.size(); ++i) {
      socket_.send(zmq::const_buffer(parts[i].data(), parts[i].size()),
                   i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  // Sends `m` as a frame from wire rank `sender_rank` (any rank: an impostor
  // test claims someone else's).
  void send(const Message& m, uint32_t sender_rank, uint32_t receiver_rank = 0) {
    send_payload(encode_message(m), sender_rank, receiver_rank, m.request_id);
  }
  // Any payload (a replication message) as a frame from `sender_rank`.
  void send_payload(const std::vector<std::byte>& payload, uint32_t sender_rank,
                    uint32_t receiver_rank = 0, uint64_t sequence = 0) {
    comm::wire::FrameHeader h;
    h.type = comm::wire::MessageType::kData;
    h.sender = sender_rank;
    h.receiver = receiver_rank;
    h.job_id = auth_.job_id();
    h.sequence = sequence;
    const comm::wire::HeaderBytes head = comm::wire::encode_header(h, payload, auth_, true);
    send_parts({{head.begin(), head.end()}, payload});
  }
  // The next reply; fails the test when none arrives within kGenerous.
  Message receive() {
    const std::vector<std::byte> payload = receive_payload();
    return payload.empty() ? Message{} : decode_message(payload);
  }
  // The next frame's checked payload; empty (and the test failed) when none
  // arrives within kGenerous.
  std::vector<std::byte> receive_payload() {
    const Deadline deadline = Deadline::after(kGenerous);
    comm::wire::FrameLimits limits;
    limits.job_id = auth_.job_id();
    limits.world_size = comm::wire::kAnyReceiver;
    limits.receiver = comm::wire::kAnyReceiver;
    while (!deadline.expired()) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      comm::wire::poll_until(std::span(&item, 1), deadline);
      std::array<zmq::message_t, 2> parts;
      if (comm::wire::receive_parts(socket_, parts) != 2) continue;
      const std::span<const std::byte> head(static_cast<const std::byte*>(parts[0].data()),
                                            parts[0].size());
      const std::span<const std::byte> body(static_cast<const std::byte*>(parts[1].data()),
                                            parts[1].size());
      const comm::wire::FrameHeader h =
          comm::wire::check_header(head, limits, auth_, {comm::wire::MessageType::kData});
      comm::wire::check_payload(h, head.first<comm::wire::kHeaderBytes>(), body, auth_);
      return {body.begin(), body.end()};
    }
    ADD_FAILURE() << "no reply within " << kGenerous.count() << " ms";
    return {};
  }
  // Sends `m` as worker `worker` of a job with `num_servers` servers and returns the reply.
  Message request(Message m, int num_servers, uint64_t request_id) {
    m.request_id = request_id;
    send(m, worker_rank(num_servers, static_cast<int>(m.worker)));
    return receive();
  }

 private:
  comm::JobAuth auth_;
  zmq::context_t context_{1};
  zmq::socket_t socket_;
};

}  // namespace dtrain::ps::testing
