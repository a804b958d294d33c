// Client's sparse-row requests (pull_rows, push_rows: keys routed to their
// servers by sparse_server_of; push_step: the rows riding with the dense
// push and pull) and its whole-state requests (stats, pull_state,
// load_state). client.h holds the contract, client_impl.h the
// private state; exchange() and its recovery live in client.cpp.
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/trace.h"
#include "ps/client.h"
#include "ps/client_impl.h"

namespace dtrain::ps {

SparseTableSpec Client::Impl::check_rows(size_t table, std::span<const uint64_t> keys,
                                         const Tensor& t, const char* operation) const {
  if (table >= tables_.size()) {
    throw UsageError(fmt::format("ps {}: table {} out of range; the job has {} tables", operation,
                                 table, tables_.size()));
  }
  const SparseTableSpec& spec = tables_[table];
  const Shape expected{static_cast<int64_t>(keys.size()), spec.dim};
  if (!t.defined() || t.shape() != expected) {
    throw UsageError(fmt::format("ps {}: table '{}' rows have shape {}, expected {}", operation,
                                 spec.name, t.defined() ? shape_str(t.shape()) : "undefined",
                                 shape_str(expected)));
  }
  return spec;
}

void Client::Impl::scatter_rows(int server, const std::vector<size_t>& members,
                                std::span<const std::byte> rows, const SparseTableSpec& spec,
                                const Tensor& out, const char* operation) {
  const auto dim = static_cast<size_t>(spec.dim);
  if (rows.size() != members.size() * dim * sizeof(float)) {
    throw CommError(
        server, fmt::format("ps {}", operation),
        fmt::format("server {} replied with {} floats for {} rows of table '{}' "
                    "(dim {})",
                    server, rows.size() / sizeof(float), members.size(), spec.name, dim));
  }
  for (size_t j = 0; j < members.size(); ++j) {
    std::memcpy(out.data() + members[j] * dim, rows.data() + j * dim * sizeof(float),
                dim * sizeof(float));
  }
}

std::vector<std::vector<size_t>> Client::Impl::route(size_t table,
                                                     std::span<const uint64_t> keys) const {
  std::vector<int> owner(keys.size());
  sparse_servers_of(static_cast<uint32_t>(table), keys, num_servers(), owner);
  std::vector<size_t> counts(static_cast<size_t>(num_servers()), 0);
  for (int s : owner) ++counts[static_cast<size_t>(s)];
  std::vector<std::vector<size_t>> by_server(counts.size());
  for (size_t s = 0; s < counts.size(); ++s) by_server[s].reserve(counts[s]);
  for (size_t i = 0; i < keys.size(); ++i) by_server[static_cast<size_t>(owner[i])].push_back(i);
  return by_server;
}

void Client::pull_rows(size_t table, std::span<const uint64_t> keys, const Tensor& out) {
  Impl& d = *impl_;
  d.require_init("pull_rows");
  const SparseTableSpec spec = d.check_rows(table, keys, out, "pull_rows");
  const auto by_server = d.route(table, keys);
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < d.num_servers(); ++s) {
    const auto& members = by_server[static_cast<size_t>(s)];
    if (members.empty()) continue;
    Message m;
    m.kind = Kind::kPullRows;
    m.table = static_cast<uint32_t>(table);
    m.keys.reserve(members.size());
    for (size_t i : members) m.keys.push_back(keys[i]);
    requests.emplace_back(s, std::move(m));
  }
  std::vector<int> servers;
  for (const auto& r : requests) servers.push_back(r.first);
  const auto replies =
      d.exchange(std::move(requests), "pull_rows", fmt::format("rows of table '{}'", spec.name));
  for (size_t k = 0; k < replies.size(); ++k) {
    Impl::scatter_rows(servers[k], by_server[static_cast<size_t>(servers[k])],
                       replies[k].float_bytes, spec, out, "pull_rows");
  }
}

namespace {

// Per server (by index), the row push of `keys` that it owns (kind
// kPushRows), or none (kind kHeartbeat) when it owns none of them. The
// gradient rows are float_parts viewing `grads`.
std::vector<Message> row_pushes(const SparseTableSpec& spec, size_t table,
                                std::span<const uint64_t> keys, const Tensor& grads, float lr,
                                uint64_t version,
                                const std::vector<std::vector<size_t>>& by_server) {
  const auto dim = static_cast<size_t>(spec.dim);
  std::vector<Message> pushes(by_server.size());
  for (size_t s = 0; s < by_server.size(); ++s) {
    const auto& members = by_server[s];
    if (members.empty()) continue;
    Message& m = pushes[s];
    m.kind = Kind::kPushRows;
    m.version = version;
    m.table = static_cast<uint32_t>(table);
    m.lr = lr;
    m.keys.reserve(members.size());
    m.float_parts.reserve(members.size());
    for (size_t j = 0; j < members.size(); ++j) {
      m.keys.push_back(keys[members[j]]);
      m.float_parts.push_back(float_bytes(grads.data() + members[j] * dim, spec.dim));
    }
  }
  return pushes;
}

// The outcome of pushes over the servers that replied (`version` when none
// was asked).
PushResult tally(const std::vector<Message>& replies, uint64_t version) {
  PushResult result;
  result.version = std::numeric_limits<uint64_t>::max();
  for (const Message& r : replies) {
    (r.status == ReplyStatus::kDropped ? result.servers_dropped : result.servers_applied) += 1;
    result.version = std::min(result.version, r.version);
  }
  if (replies.empty()) result.version = version;
  return result;
}

}  // namespace

PushResult Client::push_rows(size_t table, std::span<const uint64_t> keys, const Tensor& grads,
                             float lr, uint64_t version) {
  Impl& d = *impl_;
  d.require_init("push_rows");
  const SparseTableSpec spec = d.check_rows(table, keys, grads, "push_rows");
  std::vector<Message> pushes =
      row_pushes(spec, table, keys, grads, lr, version, d.route(table, keys));
  std::vector<std::pair<int, Message>> requests;
  for (size_t s = 0; s < pushes.size(); ++s) {
    if (pushes[s].kind == Kind::kPushRows) {
      requests.emplace_back(static_cast<int>(s), std::move(pushes[s]));
    }
  }
  return tally(d.exchange(std::move(requests), "push_rows",
                          fmt::format("the rows of table '{}' to be taken", spec.name)),
               version);
}

uint64_t Client::push_step(std::span<const RowPush> rows, const std::vector<Tensor>& grads,
                           const DensePush& push, const std::vector<Tensor>& out,
                           uint64_t min_version, PushResult* result,
                           std::span<const RowPull> prefetch) {
  Impl& d = *impl_;
  if (push.compression.compressed && !prefetch.empty()) {
    throw UsageError("ps push: a compressed push prefetches no rows (pull them with pull_rows)");
  }
  if (push.compression.compressed) {
    for (const RowPush& r : rows) push_rows(r.table, r.keys, r.grads, push.lr, push.version);
    return push_and_pull(grads, push, out, min_version, result);
  }
  TraceSpan sending(d.options_.trace, "push", "ps");
  std::vector<std::pair<int, Message>> requests = d.push_requests(grads, push);
  d.check_dense(out, "pull");
  for (const RowPush& r : rows) {
    const SparseTableSpec spec = d.check_rows(r.table, r.keys, r.grads, "push_rows");
    std::vector<Message> pushes =
        row_pushes(spec, r.table, r.keys, r.grads, push.lr, push.version, d.route(r.table, r.keys));
    for (size_t s = 0; s < pushes.size(); ++s) {
      if (pushes[s].kind == Kind::kPushRows)
        requests[s].second.rows.push_back(std::move(pushes[s]));
    }
  }
  // By prefetch entry, by server: the indices of its keys that server owns.
  std::vector<std::vector<std::vector<size_t>>> prefetch_routes;
  for (const RowPull& p : prefetch) {
    d.check_rows(p.table, p.keys, p.out, "prefetch rows");
    prefetch_routes.push_back(d.route(p.table, p.keys));
    for (size_t s = 0; s < requests.size(); ++s) {
      const std::vector<size_t>& members = prefetch_routes.back()[s];
      if (members.empty()) continue;
      Message q;
      q.kind = Kind::kPullRows;
      q.table = static_cast<uint32_t>(p.table);
      q.keys.reserve(members.size());
      for (size_t i : members) q.keys.push_back(p.keys[i]);
      requests[s].second.prefetch.push_back(std::move(q));
    }
  }
  for (auto& [server, m] : requests) {
    m.with_pull = true;
    m.min_version = min_version;
    // Answered by the server shortly before the client's deadline, so that
    // the error can say what the pull still waited for.
    m.wait_ms = static_cast<uint32_t>(d.options_.timeout.count() * 9 / 10);
  }
  Impl::Call call = d.start(std::move(requests), "push",
                            fmt::format("the push of version {} to be taken and version >= {}",
                                        push.version, min_version));
  sending.end();
  TraceSpan waiting(d.options_.trace, "pull", "ps");
  std::vector<Message> replies = d.finish(call);
  if (result != nullptr) *result = tally(replies, push.version);
  TraceSpan copy(d.options_.trace, "pull_copy", "ps");
  d.take_prefetch(replies, prefetch, prefetch_routes);
  return d.take_pull(replies, out);
}

void Client::Impl::take_prefetch(const std::vector<Message>& replies,
                                 std::span<const RowPull> prefetch,
                                 const std::vector<std::vector<std::vector<size_t>>>& routes) {
  for (size_t s = 0; s < replies.size(); ++s) {
    const std::vector<Message>& rows = replies[s].prefetch;
    size_t next = 0;
    for (size_t k = 0; k < prefetch.size(); ++k) {
      const std::vector<size_t>& members = routes[k][s];
      if (members.empty()) continue;
      if (next == rows.size()) {
        throw CommError(static_cast<int>(s), "ps push",
                        fmt::format("server {} replied without the prefetched rows of table {} "
                                    "({} of {} row pulls answered)",
                                    s, prefetch[k].table, rows.size(), next + 1));
      }
      scatter_rows(static_cast<int>(s), members, rows[next++].float_bytes,
                   tables_[prefetch[k].table], prefetch[k].out, "push (prefetched rows)");
    }
  }
}

ServerStats Client::stats(int server) {
  Impl& d = *impl_;
  if (server < 0 || server >= d.num_servers()) {
    throw UsageError(
        fmt::format("ps stats: server {} out of range [0, {})", server, d.num_servers()));
  }
  Message m;
  m.kind = Kind::kStats;
  return d.exchange({{server, std::move(m)}}, "stats", "the server's statistics")[0].stats;
}

PsState Client::pull_state() {
  Impl& d = *impl_;
  d.require_init("pull_state");
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < d.num_servers(); ++s) {
    Message m;
    m.kind = Kind::kGetState;
    requests.emplace_back(s, std::move(m));
  }
  auto replies = d.exchange(std::move(requests), "get_state", "the server's state");
  std::vector<StateDict> states;
  std::vector<uint64_t> versions;
  for (Message& r : replies) {
    states.push_back(std::move(r.state));
    versions.push_back(r.version);
  }
  return assemble_state(d.plan_, d.tables_, states, versions);
}

void Client::load_state(const PsState& state) {
  Impl& d = *impl_;
  d.require_init("load_state");
  std::vector<StateDict> parts = split_state(d.plan_, d.tables_, state);
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < d.num_servers(); ++s) {
    Message m;
    m.kind = Kind::kSetState;
    m.state = std::move(parts[static_cast<size_t>(s)]);
    requests.emplace_back(s, std::move(m));
  }
  d.exchange(std::move(requests), "set_state", "the state to be loaded");
}

}  // namespace dtrain::ps
