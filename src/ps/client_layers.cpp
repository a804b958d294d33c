// LayeredStep (client_layers.h): push_step()'s requests, one server at a
// time, over Client::Impl's calls.
#include "ps/client_layers.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/trace.h"
#include "ps/client_impl.h"

namespace dtrain::ps {

struct LayeredStep::Calls {
  std::vector<std::optional<Client::Impl::Call>> by_server;
  std::vector<bool> taken;  // by server: its reply copied into the parameters
  bool any_sent = false;
  bool any_taken = false;
  uint64_t version = 0;  // the minimum over the replies taken
  uint64_t min_clock = 0;
};

LayeredStep::LayeredStep(Client& client, const DensePush& push, uint64_t min_version)
    : client_(client), push_(push), min_version_(min_version), calls_(std::make_unique<Calls>()) {
  Client::Impl& d = *client_.impl_;
  d.require_init("push");
  if (push.compression.compressed) {
    throw UsageError(fmt::format(
        "ps push (worker {}): a compressed push is not sent one server at a time; use push_step",
        d.options_.worker));
  }
  calls_->by_server.resize(static_cast<size_t>(d.num_servers()));
  calls_->taken.assign(static_cast<size_t>(d.num_servers()), false);
}

LayeredStep::~LayeredStep() = default;

bool LayeredStep::sent(int server) const {
  return server >= 0 && server < static_cast<int>(calls_->by_server.size()) &&
         calls_->by_server[static_cast<size_t>(server)].has_value();
}

void LayeredStep::send(int server, const std::vector<Tensor>& grads) {
  Client::Impl& d = *client_.impl_;
  if (server < 0 || server >= d.num_servers()) {
    throw UsageError(fmt::format("ps push (worker {}): server {} out of range [0, {})",
                                 d.options_.worker, server, d.num_servers()));
  }
  if (sent(server)) {
    throw UsageError(
        fmt::format("ps push (worker {}): server {}'s request of version {} was "
                    "already sent",
                    d.options_.worker, server, push_.version));
  }
  TraceSpan span(d.options_.trace, "push", "ps");
  // Checks the arguments and builds every server's message from spans over
  // `grads` (no copy); only `server`'s is encoded and sent.
  std::vector<std::pair<int, Message>> requests = d.push_requests(grads, push_);
  Message& m = requests[static_cast<size_t>(server)].second;
  m.with_pull = true;
  m.min_version = min_version_;
  // Answered shortly before the client's deadline, as push_step()'s pull.
  m.wait_ms = static_cast<uint32_t>(d.options_.timeout.count() * 9 / 10);
  std::vector<std::pair<int, Message>> one;
  one.emplace_back(server, std::move(m));
  // Only the first call drains the connection monitors: a break seen there
  // belongs to an earlier server's call still waiting, which recovers it.
  calls_->by_server[static_cast<size_t>(server)] =
      d.start(std::move(one), "push",
              fmt::format("the push of version {} to be taken and version >= {}", push_.version,
                          min_version_),
              /*drain_monitors=*/!calls_->any_sent);
  calls_->any_sent = true;
}

bool LayeredStep::taken(int server) const {
  return sent(server) && calls_->taken[static_cast<size_t>(server)];
}

void LayeredStep::wait(int server, const std::vector<Tensor>& out) {
  Client::Impl& d = *client_.impl_;
  if (!sent(server)) {
    throw UsageError(fmt::format(
        "ps pull (worker {}): waiting for server {}'s reply of version >= {} before its request "
        "was sent",
        d.options_.worker, server, min_version_));
  }
  if (taken(server)) return;
  d.check_dense(out, "pull");
  TraceSpan waiting(d.options_.trace, "pull_wait", "ps");
  waiting.arg("server", server);
  Message reply = std::move(d.finish(*calls_->by_server[static_cast<size_t>(server)]).front());
  waiting.end();
  TraceSpan copy(d.options_.trace, "pull_copy", "ps");
  d.take_range(server, reply, out);
  Calls& c = *calls_;
  c.version = c.any_taken ? std::min(c.version, reply.version) : reply.version;
  c.min_clock = c.any_taken ? std::min(c.min_clock, reply.min_clock) : reply.min_clock;
  c.any_taken = true;
  c.taken[static_cast<size_t>(server)] = true;
  // Server 0's totals, as take_pull() keeps them.
  if (server == 0) d.last_totals_ = reply.totals;
}

uint64_t LayeredStep::finish(const std::vector<Tensor>& out) {
  Client::Impl& d = *client_.impl_;
  d.check_dense(out, "pull");
  for (int s = 0; s < d.num_servers(); ++s) {
    if (!sent(s)) {
      throw UsageError(
          fmt::format("ps push (worker {}): finish() before server {}'s request "
                      "of version {} was sent",
                      d.options_.worker, s, push_.version));
    }
  }
  TraceSpan waiting(d.options_.trace, "pull", "ps");
  // First layers first: server 0 holds the start of the flattened model.
  for (int s = 0; s < d.num_servers(); ++s) wait(s, out);
  d.last_version_ = calls_->version;
  d.last_min_clock_ = calls_->min_clock;
  return calls_->version;
}

}  // namespace dtrain::ps
