#include "strategy/ps_colocated.h"

#include <fmt/format.h>

#include <utility>

#include "core/error.h"

namespace dtrain::strategy {

namespace {

// Runs `call`; when it throws a dtrain::Error and the hosted server has
// failed, the server's error is thrown instead (it is the cause: the
// client's error only says that server stopped answering).
template <typename Call>
auto guarded(const HostedServer& hosted, Call&& call) {
  hosted.check();
  try {
    return call();
  } catch (const dtrain::Error&) {
    hosted.check();
    throw;
  }
}

}  // namespace

std::string hosted_server_endpoint(int server) {
  return fmt::format("inproc://ps-server-{}", server);
}

HostedServer::HostedServer(ps::ServerOptions options, const comm::JobAuth& auth, Logger& logger)
    : index_(options.server),
      logger_(LogLevel::kDebug, [&logger](LogLevel level, std::string_view message) {
        logger.log(level, "hosted " + std::string(message));
      }) {
  options.inproc_endpoint = hosted_server_endpoint(index_);
  options.context = &context_;
  server_ = std::make_unique<ps::Server>(std::move(options), auth, logger_);
  endpoint_ = server_->endpoint();
  thread_ = std::jthread([this](std::stop_token stop) { serve(stop); });
}

HostedServer::~HostedServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void HostedServer::serve(const std::stop_token& stop) {
  ps::ServeResult result;
  std::exception_ptr error;
  try {
    result = server_->run(stop);
    logger_.info("ps server {}: done after {} versions, {} pushes applied, {} dropped, {} rejected",
                 index_, result.stats.version, result.stats.pushes_applied,
                 result.stats.pushes_dropped, result.stats.requests_rejected);
  } catch (const std::exception& e) {
    error = std::current_exception();
    logger_.error("ps server {} failed: {}", index_, e.what());
  }
  const std::lock_guard lock(mutex_);
  result_ = result;
  error_ = error;
  done_ = true;
  done_cv_.notify_all();
}

std::exception_ptr HostedServer::failure() const {
  const std::lock_guard lock(mutex_);
  return error_;
}

void HostedServer::check() const {
  if (const std::exception_ptr error = failure()) std::rethrow_exception(error);
}

ps::ServeResult HostedServer::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!done_cv_.wait_for(lock, timeout, [this] { return done_; })) {
    throw TimeoutError(index_, fmt::format("hosted ps server {}", index_), timeout,
                       "the other workers to finish (this worker is done; its process hosts "
                       "the server until every worker finished or was declared dead)");
  }
  if (error_) std::rethrow_exception(error_);
  return result_;
}

HostedServerHolder::~HostedServerHolder() {
  if (failure_on_unwind_ != nullptr && hosted_) *failure_on_unwind_ = hosted_->failure();
}

ColocatedPsStrategy::ColocatedPsStrategy(
    std::unique_ptr<HostedServer> hosted, std::unique_ptr<nn::Module> model,
    ps::ClientOptions client_options, const comm::JobAuth& auth, Logger& logger, PsOptions options,
    LossFn loss, std::chrono::milliseconds finish_timeout, std::exception_ptr* failure_on_unwind)
    : HostedServerHolder(std::move(hosted), failure_on_unwind),
      PsStrategy(std::move(model), std::move(client_options), auth, logger, std::move(options),
                 std::move(loss)),
      finish_timeout_(finish_timeout) {
  failure_on_unwind_ = nullptr;  // built: the failure is the strategy's calls' to report
}

StepStats ColocatedPsStrategy::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  return guarded(*hosted_, [&] { return PsStrategy::train_step(inputs, targets); });
}

void ColocatedPsStrategy::fetch_model() {
  guarded(*hosted_, [&] { PsStrategy::fetch_model(); });
}

StateDict ColocatedPsStrategy::optimizer_state() {
  return guarded(*hosted_, [&] { return PsStrategy::optimizer_state(); });
}

void ColocatedPsStrategy::sync_replicas() {
  guarded(*hosted_, [&] { PsStrategy::sync_replicas(); });
}

void ColocatedPsStrategy::sync_params() {
  guarded(*hosted_, [&] { PsStrategy::sync_params(); });
}

void ColocatedPsStrategy::finish() {
  guarded(*hosted_, [&] { PsStrategy::finish(); });
  hosted_->wait(finish_timeout_);
}

std::unique_ptr<ColocatedPsStrategy> make_colocated_ps_strategy(
    std::unique_ptr<HostedServer> hosted, std::unique_ptr<nn::Module> model,
    ps::ClientOptions client_options, const comm::JobAuth& auth, Logger& logger, PsOptions options,
    LossFn loss, std::chrono::milliseconds finish_timeout) {
  const auto server = static_cast<size_t>(hosted->server());
  DTRAIN_CHECK(server < client_options.server_endpoints.size(),
               "hosted server {} of a job with {} servers", server,
               client_options.server_endpoints.size());
  client_options.server_endpoints[server] = hosted_server_endpoint(hosted->server());
  client_options.context = &hosted->context();
  std::exception_ptr failure;
  try {
    return std::make_unique<ColocatedPsStrategy>(
        std::move(hosted), std::move(model), std::move(client_options), auth, logger,
        std::move(options), std::move(loss), finish_timeout, &failure);
  } catch (const dtrain::Error&) {
    if (failure) std::rethrow_exception(failure);
    throw;
  }
}

}  // namespace dtrain::strategy
