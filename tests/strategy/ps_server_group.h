// Shared by the ps strategy tests: S ps::Servers serving on threads of the
// test process until every worker is done (or 120 s), with the servers'
// optimizer given (plain SGD, lr 0.1, by default). The workers are the
// tests' own (PsStrategy on threads, or child processes). `tweak` may edit
// each server's options; a server whose on_version throws ServerGroup::Killed
// is destroyed on its thread, which breaks its connections as a death does.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/deadline.h"
#include "core/log.h"
#include "optim/optimizer_config.h"
#include "ps/server.h"

namespace dtrain::strategy::test {

class ServerGroup {
 public:
  struct Killed : std::runtime_error {
    Killed() : std::runtime_error("killed by the test") {}
  };
  ServerGroup(int servers, int workers, ps::Consistency consistency,
              std::chrono::milliseconds heartbeat_timeout = std::chrono::seconds(10),
              const optim::OptimizerConfig& optimizer = {},
              const std::function<void(ps::ServerOptions&)>& tweak = {}) {
    using namespace std::chrono_literals;
    for (int s = 0; s < servers; ++s) {
      ps::ServerOptions o;
      o.server = s;
      o.num_servers = servers;
      o.num_workers = workers;
      o.consistency = consistency;
      o.optimizer = optimizer;
      o.seed = 11;
      o.heartbeat_timeout = heartbeat_timeout;
      // A worker process's start (exec, sanitizer start-up, a loaded
      // machine) may take longer than a short heartbeat timeout, which must
      // only catch deaths after the join.
      o.join_timeout = 120s;
      if (tweak) tweak(o);
      servers_.push_back(std::make_unique<ps::Server>(o, auth(), Logger::null()));
      endpoints_.push_back(servers_.back()->endpoint());
    }
    for (auto& server : servers_) {
      threads_.emplace_back([&server, this](std::stop_token stop) {
        try {
          const ps::ServeResult r = server->run(stop, Deadline::after(120s));
          const std::lock_guard lock(results_mutex_);
          results_.push_back(r);
        } catch (const Killed&) {
          server.reset();
        }
      });
    }
  }
  ~ServerGroup() {
    for (std::jthread& t : threads_) t.request_stop();
  }
  ServerGroup(const ServerGroup&) = delete;
  ServerGroup& operator=(const ServerGroup&) = delete;

  static comm::JobAuth auth() { return comm::JobAuth("ps-strategy-test", ""); }
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  // Waits for every server's run() to return; their results, in return order.
  std::vector<ps::ServeResult> join() {
    for (std::jthread& t : threads_) t.join();
    return results_;
  }

 private:
  std::vector<std::unique_ptr<ps::Server>> servers_;
  std::vector<std::string> endpoints_;
  std::mutex results_mutex_;
  std::vector<ps::ServeResult> results_;
  std::vector<std::jthread> threads_;  // last: stopped before the servers go
};

}  // namespace dtrain::strategy::test
