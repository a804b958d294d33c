#include "ps/client.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/deadline.h"
#include "core/error.h"
#include "ps/client_impl.h"
#include "ps/compressed_push.h"
#include "ps/shard_store.h"

namespace dtrain::ps {

using std::chrono::milliseconds;

namespace {

void validate(const ClientOptions& o) {
  auto bad = [](const std::string& key, const std::string& problem) {
    throw ConfigError(fmt::format("ps client option '{}': {}", key, problem));
  };
  if (o.server_endpoints.empty()) bad("server_endpoints", "no server endpoint given");
  if (o.num_workers < 1) bad("workers", fmt::format("{} workers; need at least 1", o.num_workers));
  if (o.worker < 0 || o.worker >= o.num_workers) {
    bad("worker", fmt::format("worker index {} out of range [0, {})", o.worker, o.num_workers));
  }
  if (o.timeout.count() <= 0)
    bad("timeout_ms", fmt::format("{} ms; must be positive", o.timeout.count()));
  const int servers = static_cast<int>(o.server_endpoints.size());
  if (o.replicas < 0 || (o.replicas > 0 && o.replicas >= servers)) {
    bad("replicas", fmt::format("{} replicas with {} servers: must be in [0, {})", o.replicas,
                                servers, servers));
  }
  if (o.heartbeat_interval.count() <= 0) {
    bad("heartbeat_interval_ms",
        fmt::format("{} ms; must be positive", o.heartbeat_interval.count()));
  }
  if (o.compression.method != compress::Method::kNone) {
    try {
      compress::validate(o.compression);
    } catch (const UsageError& e) {
      bad("compression", e.what());
    }
  }
}

// A DEALER socket of worker `worker` to server `server` at `endpoint` (its
// own, or the backup's that took its range over): frames from that server
// only, addressed to this worker's wire rank.
std::unique_ptr<comm::wire::FramedSocket> connect_server(zmq::context_t& context,
                                                         const ClientOptions& o, int server,
                                                         const std::string& endpoint,
                                                         const comm::JobAuth& auth,
                                                         Logger& logger) {
  const int servers = static_cast<int>(o.server_endpoints.size());
  comm::wire::FramedSocketOptions so;
  so.name = fmt::format("ps worker {} (server {})", o.worker, server);
  so.peer = server;
  so.rank = worker_rank(servers, o.worker);
  so.limits.job_id = auth.job_id();
  so.limits.world_size = static_cast<uint32_t>(servers);  // only servers send to a client
  so.limits.receiver = worker_rank(servers, o.worker);
  so.limits.max_payload_bytes = o.max_payload_bytes;
  so.accepted = {comm::wire::MessageType::kData};
  so.unbounded_queues = true;
  so.link = o.link;
  so.private_ipc = o.private_ipc;
  return std::make_unique<comm::wire::FramedSocket>(
      context, comm::wire::FramedSocket::Role::kDealer, endpoint, std::move(so), auth, logger);
}

comm::wire::FrameHeader header_to(int server, uint64_t request_id) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = server_rank(server);
  header.sequence = request_id;
  return header;
}

// Returns the frame's bytes (header and payload). With `frames`, the payload
// is encoded into one of its reused buffers.
uint64_t send_message(comm::wire::FramedSocket& socket, int server, const Message& m,
                      FramePool* frames = nullptr) {
  if (frames != nullptr) {
    auto payload = encode_pooled(*frames, m);
    const uint64_t bytes = comm::wire::kHeaderBytes + payload->size();
    socket.send({}, header_to(server, m.request_id), std::move(payload));
    return bytes;
  }
  std::vector<std::byte> payload = encode_message(m);
  const uint64_t bytes = comm::wire::kHeaderBytes + payload.size();
  socket.send({}, header_to(server, m.request_id), std::move(payload));
  return bytes;
}

}  // namespace

Client::Impl::Impl(ClientOptions options, const comm::JobAuth& auth, Logger& logger)
    : options_(std::move(options)),
      auth_(auth),
      logger_(logger),
      context_(options_.context != nullptr ? *options_.context : own_context_.emplace(1)) {
  validate(options_);
  const int servers = num_servers();
  routes_ = options_.server_endpoints;
  for (int s = 0; s < servers; ++s) {
    sockets_.push_back(connect(s, routes_[static_cast<size_t>(s)]));
    monitors_.push_back(watch_disconnects(s));
  }
  dead_.assign(static_cast<size_t>(servers), false);
  broken_.assign(static_cast<size_t>(servers), false);
  terms_.assign(static_cast<size_t>(servers), 0);
  for (int s = 0; s < servers; ++s) serving_.push_back(s);
  values_.resize(static_cast<size_t>(servers));
  open_pushes_.resize(static_cast<size_t>(servers));
  heartbeat_ = std::jthread([this](std::stop_token stop) { send_heartbeats(stop); });
}

std::unique_ptr<comm::wire::FramedSocket> Client::Impl::connect(int server,
                                                                const std::string& endpoint) {
  return connect_server(context_, options_, server, endpoint, auth_, logger_);
}

void Client::Impl::send_heartbeats(const std::stop_token& stop) {
  std::vector<std::unique_ptr<comm::wire::FramedSocket>> sockets;
  std::vector<std::string> endpoints = options_.server_endpoints;
  for (int s = 0; s < num_servers(); ++s) {
    sockets.push_back(connect(s, endpoints[static_cast<size_t>(s)]));
  }
  Message beat;
  beat.kind = Kind::kHeartbeat;
  beat.worker = static_cast<uint32_t>(options_.worker);
  while (!stop.stop_requested()) {
    {
      // A range taken over by a backup: its heartbeats go there too.
      std::lock_guard lock(heartbeat_mutex_);
      for (size_t s = 0; s < endpoints.size(); ++s) {
        if (routes_[s] == endpoints[s]) continue;
        endpoints[s] = routes_[s];
        sockets[s] = connect(static_cast<int>(s), endpoints[s]);
      }
    }
    for (int s = 0; s < num_servers(); ++s) {
      send_message(*sockets[static_cast<size_t>(s)], s, beat);
    }
    std::unique_lock lock(heartbeat_mutex_);
    heartbeat_cv_.wait_for(lock, stop, options_.heartbeat_interval, [] { return false; });
  }
}

namespace {
constexpr int kMaxRecoveries = 8;
}  // namespace

zmq::socket_t Client::Impl::watch_disconnects(int server) {
  return watch(*sockets_[static_cast<size_t>(server)], server, ZMQ_EVENT_DISCONNECTED);
}

zmq::socket_t Client::Impl::watch(comm::wire::FramedSocket& socket, int server, int events) {
  const std::string address = fmt::format(
      "inproc://ps-client-{}-{}-{}", static_cast<const void*>(this), server, monitor_generation_++);
  if (zmq_socket_monitor(socket.socket().handle(), address.c_str(), events) != 0) {
    throw CommError(server, "ps connect",
                    fmt::format("cannot watch the connection to server {}: {}", server,
                                zmq_strerror(zmq_errno())));
  }
  zmq::socket_t monitor(context_, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  monitor.connect(address);
  return monitor;
}

bool Client::Impl::disconnected(int server) {
  const auto s = static_cast<size_t>(server);
  bool broke = broken_[s];
  broken_[s] = false;
  zmq::socket_t& monitor = monitors_[s];
  while (true) {
    std::array<zmq::message_t, 1> event;  // then the endpoint, discarded
    if (comm::wire::receive_parts(monitor, event) == 0) break;
    broke = broke || comm::wire::monitor_event(event[0]) == ZMQ_EVENT_DISCONNECTED;
  }
  // The process serving the range is gone (on one host a broken connection
  // is a dead process): it is never asked to take a range over.
  if (broke) dead_[static_cast<size_t>(serving_[s])] = true;
  return broke;
}

void Client::Impl::note_breaks(int except) {
  for (int s = 0; s < num_servers(); ++s) {
    if (s != except && disconnected(s)) broken_[static_cast<size_t>(s)] = true;
  }
}

std::optional<std::pair<comm::wire::FrameHeader, Message>> Client::Impl::next_message(int server) {
  comm::wire::FramedSocket& socket = *sockets_[static_cast<size_t>(server)];
  while (std::optional<comm::wire::Frame> frame = socket.try_receive()) {
    try {
      // Float arrays stay in the received message (no copy); the decoded
      // message keeps it alive.
      auto body = std::make_shared<zmq::message_t>(std::move(frame->body));
      const std::span<const std::byte> payload(static_cast<const std::byte*>(body->data()),
                                               body->size());
      Message m = decode_message(payload, FloatDecoding::kView);
      check_sequence(frame->header.sequence, m);
      m.payload_owner = std::move(body);
      resolve_shm_reply(server, m);
      return std::make_pair(frame->header, std::move(m));
    } catch (const DataError& e) {
      socket.drop(e.what());
    }
  }
  return std::nullopt;
}

void Client::Impl::send(int server, Message& m) {
  m.worker = static_cast<uint32_t>(options_.worker);
  m.term = terms_[static_cast<size_t>(server)];
  if (m.request_id == 0) m.request_id = next_request_++;
  comm::wire::FramedSocket& socket = *sockets_[static_cast<size_t>(server)];
  if (m.kind != Kind::kPush && m.kind != Kind::kPushCompressed && m.kind != Kind::kPushRows) {
    bytes_sent_ += send_message(socket, server, m, frames_.get());
    return;
  }
  auto& open = open_pushes_[static_cast<size_t>(server)];
  // Pushes for versions before this one are settled (sync closed them).
  std::erase_if(open, [&](const OpenPush& p) { return p.version < m.version; });
  auto it = std::find_if(open.begin(), open.end(),
                         [&](const OpenPush& p) { return p.request_id == m.request_id; });
  if (it == open.end()) {
    if (open.empty()) push_through_shm(server, m);
    open.push_back(OpenPush{m.request_id, m.version, encode_pooled(*frames_, m)});
    it = std::prev(open.end());
  }
  send_again(server, *it);
}

void Client::Impl::send_again(int server, const OpenPush& push) {
  bytes_sent_ += comm::wire::kHeaderBytes + push.payload->size();
  sockets_[static_cast<size_t>(server)]->send({}, header_to(server, push.request_id), push.payload);
}

Message Client::Impl::init_message(int server, uint64_t version) const {
  Message m;
  m.kind = Kind::kInit;
  m.version = version;
  m.dense = plan_.tensors();
  m.tables = tables_;
  m.float_parts = {values_[static_cast<size_t>(server)].bytes};
  return m;
}

void Client::Impl::rejoin(int server, uint64_t except, const std::string& operation) {
  const auto start = std::chrono::steady_clock::now();
  Message init = init_message(server, last_version_);
  send(server, init);
  std::set<uint64_t> waiting{init.request_id};
  for (const OpenPush& p : open_pushes_[static_cast<size_t>(server)]) {
    if (p.request_id == except) continue;
    send_again(server, p);
    waiting.insert(p.request_id);
  }
  const size_t resent = waiting.size() - 1;
  const Deadline deadline = Deadline::after(options_.timeout);
  while (!waiting.empty()) {
    if (deadline.expired()) {
      throw TimeoutError(server, "ps " + operation, options_.timeout,
                         fmt::format("server {} (replaced) to take this worker's init and {} "
                                     "open push(es) again",
                                     server, resent));
    }
    zmq::pollitem_t item = sockets_[static_cast<size_t>(server)]->poll_item();
    comm::wire::poll_until(std::span(&item, 1), deadline);
    while (auto got = next_message(server)) {
      const Message& reply = got->second;
      if (reply.kind != Kind::kReply || waiting.count(reply.request_id) == 0) continue;
      if (reply.status == ReplyStatus::kError || reply.status == ReplyStatus::kTimeout ||
          reply.status == ReplyStatus::kRejoin) {
        throw CommError(server, "ps " + operation,
                        fmt::format("re-joining replaced server {}: it refused the {}: {}", server,
                                    to_string(reply.reply_to), reply.error));
      }
      waiting.erase(reply.request_id);
    }
  }
  logger_.warn(
      "ps worker {}: re-joined replaced server {} in {:.3f} s (version {}, {} open "
      "push(es) sent again)",
      options_.worker, server,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
      last_version_, resent);
}

bool Client::Impl::stale_term(int server, const Message& reply) {
  uint64_t& known = terms_[static_cast<size_t>(server)];
  if (reply.term >= known) {
    if (reply.status != ReplyStatus::kFenced) known = reply.term;
    return false;
  }
  logger_.warn(
      "ps worker {}: refused a reply: server {} answered for range {} at term {}, the range is "
      "at term {} (taken over by server {})",
      options_.worker, reply.worker, server, reply.term, known,
      serving_[static_cast<size_t>(server)]);
  return true;
}

bool Client::Impl::recover(Call& call, int server, const char* why) {
  if (++call.recoveries > kMaxRecoveries) {
    call.fail(server, std::make_exception_ptr(CommError(
                          server, "ps " + call.operation,
                          fmt::format("server {} {} again after {} recoveries in one call", server,
                                      why, kMaxRecoveries))));
    return false;
  }
  call.deadline = Deadline::after(options_.timeout);
  call.resent.insert(server);
  return true;
}

void Client::Impl::take_reply(Call& call, int server, Message& reply) {
  const size_t index = call.pending.at(server);
  Message& request = call.requests[index].second;
  const std::string op = "ps " + call.operation;
  if (reply.reply_to != request.kind) {
    call.fail(server,
              std::make_exception_ptr(CommError(server, op,
                                                fmt::format("server {} answered a {} request",
                                                            server, to_string(reply.reply_to)))));
  } else if (reply.status == ReplyStatus::kRejoin) {
    if (request.kind == Kind::kInit) {
      call.fail(
          server,
          std::make_exception_ptr(CommError(
              server, op,
              fmt::format("server {} asked for the init it was sent: {}", server, reply.error))));
    } else if (recover(call, server, "asked for a re-join")) {
      rejoin(server, request.request_id, call.operation);
      send(server, request);
    }
  } else if (reply.status == ReplyStatus::kLeftOut) {
    call.fail(server, std::make_exception_ptr(WorkerLeftOut(server, op, reply.error)));
  } else if (reply.status == ReplyStatus::kFenced) {
    // The server learned that another took its range over: ask the backups
    // who holds it now, and send the request there.
    logger_.warn("ps worker {}: {} ({})", options_.worker, reply.error, call.operation);
    terms_[static_cast<size_t>(server)] = std::max(terms_[static_cast<size_t>(server)], reply.term);
    if (recover(call, server, "stopped serving its range")) {
      if (take_over(server, call.operation)) {
        send(server, request);
      } else {
        call.fail(server,
                  std::make_exception_ptr(CommError(
                      server, op,
                      fmt::format("server {} stopped serving range {} and no backup serves it: {}",
                                  server, server, reply.error))));
      }
    }
  } else if (reply.status == ReplyStatus::kTimeout) {
    call.fail(server, std::make_exception_ptr(TimeoutError(
                          server, op, options_.timeout,
                          fmt::format("{} on server {} ({})", call.awaited, server, reply.error))));
  } else if (reply.status == ReplyStatus::kError) {
    call.fail(server, std::make_exception_ptr(CommError(
                          server, op, fmt::format("server {} refused: {}", server, reply.error))));
  } else {
    call.replies[index] = std::move(reply);
    call.pending.erase(server);
  }
}

void Client::Impl::wait_for_replies(Call& call) {
  std::vector<zmq::pollitem_t> items;
  std::vector<int> item_server;
  while (!call.pending.empty()) {
    // First: a takeover re-routes a range (new socket and monitor) before
    // the poll items are taken.
    const Deadline wake = check_silence(call);
    if (call.pending.empty()) break;
    items.clear();
    item_server.clear();
    for (const auto& [server, index] : call.pending) {
      items.push_back(sockets_[static_cast<size_t>(server)]->poll_item());
      items.push_back({monitors_[static_cast<size_t>(server)].handle(), 0, ZMQ_POLLIN, 0});
      item_server.insert(item_server.end(), {server, server});
    }
    if (call.deadline.expired()) {
      if (!call.failures.empty()) std::rethrow_exception(call.failures.begin()->second);
      const int server = call.pending.begin()->first;
      throw TimeoutError(server, "ps " + call.operation, options_.timeout,
                         fmt::format("a reply from server {} ({})", server, call.awaited));
    }
    comm::wire::poll_until(items, wake.at() < call.deadline.at() ? wake : call.deadline);
    for (size_t k = 0; k < items.size(); ++k) {
      const int server = item_server[k];
      if ((items[k].revents & ZMQ_POLLIN) == 0 || call.pending.count(server) == 0) continue;
      if (k % 2 == 1) {
        // The connection broke while the request waited: whatever the server
        // had of it is gone with it. Send it again for the replacement.
        if (disconnected(server) && recover(call, server, "lost its connection")) {
          if (!take_over(server, call.operation)) {
            logger_.warn(
                "ps worker {}: lost the connection to server {} during {}; sending the "
                "request again for its replacement",
                options_.worker, server, call.operation);
          }
          send(server, call.requests[call.pending.at(server)].second);
        }
        continue;
      }
      while (auto got = next_message(server)) {
        call.silence.erase(server);  // any frame proves it alive
        Message& reply = got->second;
        const Message& request = call.requests[call.pending.at(server)].second;
        if (reply.kind != Kind::kReply || reply.request_id != request.request_id ||
            got->first.sender != server_rank(server)) {
          continue;  // a late reply to an earlier request that timed out
        }
        if (stale_term(server, reply)) continue;
        take_reply(call, server, reply);
        break;
      }
    }
  }
}

std::vector<Message> Client::Impl::exchange(std::vector<std::pair<int, Message>> requests,
                                            const std::string& operation,
                                            const std::string& awaited) {
  Call call = start(std::move(requests), operation, awaited);
  return finish(call);
}

Client::Impl::Call Client::Impl::start(std::vector<std::pair<int, Message>> requests,
                                       std::string operation, std::string awaited,
                                       bool drain_monitors) {
  Call call{std::move(requests),
            std::move(operation),
            std::move(awaited),
            Deadline::after(options_.timeout),
            {},
            {},
            {},
            {},
            0,
            {}};
  // Broken connections seen while no request waited: the requests below reach
  // the replacement, which asks for a re-join.
  if (drain_monitors) {
    for (int s = 0; s < num_servers(); ++s) {
      if (disconnected(s)) (void)take_over(s, call.operation);
    }
  }
  for (size_t i = 0; i < call.requests.size(); ++i) {
    auto& [server, m] = call.requests[i];
    m.request_id = 0;
    // A parked pull is answered by the server shortly before this deadline, so
    // that the error can say what the server was still waiting for.
    if (m.kind == Kind::kPull) m.wait_ms = static_cast<uint32_t>(options_.timeout.count() * 9 / 10);
    DTRAIN_CHECK(call.pending.emplace(server, i).second, "two requests for server {}", server);
    send(server, m);
  }
  call.replies.resize(call.requests.size());
  return call;
}

std::vector<Message> Client::Impl::finish(Call& call) {
  wait_for_replies(call);
  if (!call.failures.empty()) std::rethrow_exception(call.failures.begin()->second);
  return std::move(call.replies);
}

void Client::Impl::check_dense(const std::vector<Tensor>& tensors, const char* operation) const {
  const auto& specs = plan_.tensors();
  if (tensors.size() != specs.size()) {
    throw UsageError(fmt::format("ps {}: {} tensors given, the job has {} dense tensors", operation,
                                 tensors.size(), specs.size()));
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!tensors[i].defined() || tensors[i].shape() != specs[i].shape) {
      throw UsageError(fmt::format(
          "ps {}: tensor {} '{}' has shape {}, expected {}", operation, i, specs[i].name,
          tensors[i].defined() ? shape_str(tensors[i].shape()) : "undefined",
          shape_str(specs[i].shape)));
    }
  }
}

Client::Client(ClientOptions options, const comm::JobAuth& auth, Logger& logger)
    : impl_(std::make_unique<Impl>(std::move(options), auth, logger)) {}
Client::~Client() = default;

int Client::worker() const { return impl_->options_.worker; }
int Client::num_servers() const { return impl_->num_servers(); }
const ShardPlan& Client::plan() const {
  impl_->require_init("plan()");
  return impl_->plan_;
}
const std::vector<SparseTableSpec>& Client::tables() const { return impl_->tables_; }
uint64_t Client::last_min_clock() const { return impl_->last_min_clock_; }
uint64_t Client::joined_step() const { return impl_->joined_step_; }
StepTotals Client::last_totals() const { return impl_->last_totals_; }

uint64_t Client::init(const StateDict& dense, const std::vector<SparseTableSpec>& tables) {
  Impl& d = *impl_;
  std::vector<DenseSpec> specs;
  for (const auto& [name, tensor] : dense) specs.push_back(DenseSpec{name, tensor.shape()});
  ShardPlan plan(std::move(specs), d.num_servers());
  for (const SparseTableSpec& t : tables) {
    if (t.dim < 1) throw UsageError(fmt::format("ps init: table '{}' has dim {}", t.name, t.dim));
  }
  std::vector<std::pair<int, Message>> requests;
  std::vector<Impl::Range> values;  // kept for a replaced server's re-join
  for (int s = 0; s < d.num_servers(); ++s) {
    auto range = std::make_shared<std::vector<float>>(static_cast<size_t>(plan.range_numel(s)));
    for (const ShardSlice& slice : plan.slices(s)) {
      const Tensor& t = dense.entries()[slice.tensor].second;
      std::memcpy(range->data() + slice.shard_offset, t.data() + slice.offset,
                  static_cast<size_t>(slice.count) * sizeof(float));
    }
    values.push_back(Impl::Range{range, std::as_bytes(std::span<const float>(*range))});
    Message m;
    m.kind = Kind::kInit;
    m.dense = plan.tensors();
    m.tables = tables;
    m.float_parts = {values.back().bytes};
    requests.emplace_back(s, std::move(m));
  }
  const auto replies = d.exchange(std::move(requests), "init", "the init acknowledgement");
  d.plan_ = std::move(plan);
  d.tables_ = tables;
  d.initialised_ = true;
  if (d.options_.compression.method != compress::Method::kNone) {
    d.compressor_ = std::make_unique<PushCompressor>(d.options_.compression, d.plan_);
  }
  d.values_ = std::move(values);
  for (auto& open : d.open_pushes_) open.clear();
  d.create_segments();
  uint64_t version = replies[0].version;
  uint64_t step = 0;
  for (const Message& r : replies) {
    version = std::min(version, r.version);
    step = std::max(step, r.clock);
  }
  d.last_version_ = version;
  d.joined_step_ = step;
  return version;
}

compress::State Client::compression_state() const {
  return impl_->compressor("compression_state").compressor().save();
}
void Client::load_compression_state(const compress::State& state) {
  impl_->compressor("load_compression_state").compressor().load(state);
}
void Client::reset_compression() { impl_->compressor("reset_compression").compressor().reset(); }
uint64_t Client::bytes_sent() const { return impl_->bytes_sent_; }

void Client::finish() {
  Impl& d = *impl_;
  if (d.finished_) return;
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < d.num_servers(); ++s) {
    Message m;
    m.kind = Kind::kGoodbye;
    requests.emplace_back(s, std::move(m));
  }
  d.exchange(std::move(requests), "goodbye", "the goodbye acknowledgement");
  d.finished_ = true;
}

}  // namespace dtrain::ps
