// A parameter-server job inside one test process: S servers, each running
// Server::run on its own std::jthread over tcp loopback, and Clients made on
// demand. The destructor stops and joins the servers.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/log.h"
#include "ps/client.h"
#include "ps/frame_io.h"
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

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
  Logger logger_;
};

inline constexpr std::chrono::milliseconds kGenerous{60000};

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
  void send(const Message& m, uint32_t sender_rank, uint32_t receiver_rank = 0) {
    send_frame(socket_, "", sender_rank, receiver_rank, m, auth_);
  }
  // The next reply; fails the test when none arrives within kGenerous.
  Message receive() {
    const Deadline deadline = Deadline::after(kGenerous);
    comm::wire::FrameLimits limits;
    limits.job_id = auth_.job_id();
    limits.world_size = comm::wire::kAnyReceiver;
    limits.receiver = comm::wire::kAnyReceiver;
    while (!deadline.expired()) {
      zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, 1, deadline.remaining());
      if (auto frame = receive_frame(socket_, false, limits, auth_)) return frame->message;
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
