// Co-located parameter servers (distributed.ps.colocate, docs/parameter-server.md
// "Co-located servers"): server i of a ps job runs as a thread of worker
// process i instead of a process of its own, so a job of S servers and N >= S
// workers is N processes.
//
// HostedServer owns one ps::Server, the ZeroMQ context it shares with its
// worker's client, and the thread that serves (a std::jthread with its own
// stop token). The server binds two endpoints: the job's endpoint for server
// i (ipc in the launcher's private run folder, or DTRAIN_PS_ENDPOINTS),
// where the other workers connect as before, and "inproc://ps-server-I",
// where its own worker's client connects: no I/O thread, no kernel copy.
// Frames on the inproc link go through the same FramedSocket checks; it
// never leaves the process, so with private ipc it carries no MAC and no CRC
// either (docs/security.md).
//
// ColocatedPsStrategy is the worker's PsStrategy holding its hosted server:
// the server is started before the strategy's client initialises the
// servers, stopped and joined after the client is gone. A failure of the
// hosted server (an exception out of ps::Server::run) fails the worker with
// the server's error: every call that reaches the servers checks it before
// and, when it throws, after. The worker learns it at the latest when its
// call to that shard times out (the client's timeout; the server's other
// workers likewise), so nothing hangs. finish() tells the servers this
// worker is done, then waits (with a deadline) until its hosted server has
// served the other workers to their end.
//
// Ownership: HostedServer owns the server, the context and the thread; the
// Logger passed in must outlive it. Thread safety: the serving thread is
// internal; the other methods from one thread. Errors: the constructor
// throws what ps::Server's does (ConfigError, CommError when an endpoint
// cannot be bound); check() and wait() rethrow the server's own exception;
// wait() throws TimeoutError at its deadline. Blocking: the destructor
// requests stop and joins (within the server's poll_interval); wait() until
// the server is done or the deadline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/log.h"
#include "ps/client.h"
#include "ps/server.h"
#include "strategy/ps_strategy.h"

namespace dtrain::strategy {

// Server `server`'s in-process endpoint.
std::string hosted_server_endpoint(int server);

class HostedServer {
 public:
  // Binds options.bind_endpoint and hosted_server_endpoint(options.server)
  // (options.inproc_endpoint and options.context are set here) and starts
  // serving on a thread until the server finishes or is stopped. Its log
  // lines go to `logger`, each starting "hosted ".
  HostedServer(ps::ServerOptions options, const comm::JobAuth& auth, Logger& logger);
  // Requests stop and joins.
  ~HostedServer();
  HostedServer(const HostedServer&) = delete;
  HostedServer& operator=(const HostedServer&) = delete;

  // The context the worker's client must use (ps::ClientOptions::context).
  zmq::context_t& context() { return context_; }
  int server() const { return index_; }
  // Where the other workers connect (the bound bind_endpoint).
  const std::string& endpoint() const { return endpoint_; }

  // Rethrows the server's exception if run() ended with one.
  void check() const;
  // That exception; null while the server serves or when it ended normally.
  std::exception_ptr failure() const;
  // Waits until run() returned: the server's result, or its exception
  // rethrown; TimeoutError (naming the server) after `timeout`.
  ps::ServeResult wait(std::chrono::milliseconds timeout);

 private:
  void serve(const std::stop_token& stop);

  int index_ = 0;
  zmq::context_t context_{1};  // before the server: its sockets close first
  Logger logger_;              // "hosted " + line, to the worker's logger
  std::unique_ptr<ps::Server> server_;
  std::string endpoint_;
  mutable std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;         // run() returned or threw
  std::exception_ptr error_;  // what run() threw
  ps::ServeResult result_;
  std::jthread thread_;  // last: stopped and joined first
};

// The worker holds its hosted server first (a base, so it is built before
// and destroyed after the PsStrategy part). While the strategy is being
// built, `failure_on_unwind` (when not null) receives the server's
// exception if the build fails: the server is gone by the time the caller
// could ask it.
struct HostedServerHolder {
  HostedServerHolder(std::unique_ptr<HostedServer> hosted, std::exception_ptr* failure_on_unwind)
      : hosted_(std::move(hosted)), failure_on_unwind_(failure_on_unwind) {}
  ~HostedServerHolder();
  HostedServerHolder(const HostedServerHolder&) = delete;
  HostedServerHolder& operator=(const HostedServerHolder&) = delete;

  std::unique_ptr<HostedServer> hosted_;
  std::exception_ptr* failure_on_unwind_;  // the builder's, for the constructor's duration
};

class ColocatedPsStrategy final : private HostedServerHolder, public PsStrategy {
 public:
  // `client_options` must already use hosted->context() and name
  // hosted_server_endpoint() for hosted->server() (make_colocated_ps_strategy
  // does both).
  ColocatedPsStrategy(std::unique_ptr<HostedServer> hosted, std::unique_ptr<nn::Module> model,
                      ps::ClientOptions client_options, const comm::JobAuth& auth, Logger& logger,
                      PsOptions options, LossFn loss, std::chrono::milliseconds finish_timeout,
                      std::exception_ptr* failure_on_unwind = nullptr);

  StepStats train_step(const Tensor& inputs, std::span<const int64_t> targets) override;
  void fetch_model() override;
  StateDict optimizer_state() override;
  void sync_replicas() override;
  // PsStrategy::finish(), then waits up to finish_timeout for the hosted
  // server to end (every other worker finished or declared dead).
  void finish() override;

  HostedServer& hosted() { return *hosted_; }

 private:
  // The replies in flight (overlap), guarded like the calls above: model(),
  // version(), client() and the others that take them first report the
  // hosted server's failure, not the client's timeout waiting for its reply.
  void sync_params() override;

  std::chrono::milliseconds finish_timeout_;
};

// Points `client_options` at `hosted` (its context; its server's endpoint
// replaced by the in-process one) and builds the strategy. When that fails
// because the hosted server failed, the server's error is thrown.
std::unique_ptr<ColocatedPsStrategy> make_colocated_ps_strategy(
    std::unique_ptr<HostedServer> hosted, std::unique_ptr<nn::Module> model,
    ps::ClientOptions client_options, const comm::JobAuth& auth, Logger& logger, PsOptions options,
    LossFn loss, std::chrono::milliseconds finish_timeout);

}  // namespace dtrain::strategy
