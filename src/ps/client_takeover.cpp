// Client::Impl's half of a takeover (client.h "Server failures";
// docs/parameter-server.md "A backup takes over"): when the connection to a
// server breaks, its backups are asked, nearest first, to serve its range,
// and the range is re-routed to the first one that does. Each ask has its
// own deadline (ClientOptions::takeover_timeout); a backup known dead (a
// broken connection to it, or a refused one at the ask) is never asked
// again, so a copy-holder that died with its primary costs nothing. The
// request then goes to that backup's acting primary, which answers kRejoin
// like a replacement, and the existing re-join (init with the last pulled
// values, the open pushes again) brings it to the worker's version.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <mutex>
#include <variant>

#include "core/deadline.h"
#include "core/error.h"
#include "ps/client_impl.h"
#include "ps/replication.h"
#include "ps/replication_messages.h"

namespace dtrain::ps {

namespace {

// What one backup said to a takeover request.
struct Answer {
  std::optional<TakeoverReply> reply;  // nullopt: none by the deadline
  bool refused = false;                // its endpoint refused the connection
};

// Whether `monitor` (ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED of the
// asking socket) reports a refused connect before any connection was made:
// nobody listens at the endpoint, its process is gone. `connected` records
// a connection seen (a later retry is a reconnect, not a refusal).
bool connect_refused(zmq::socket_t& monitor, bool& connected) {
  while (true) {
    std::array<zmq::message_t, 1> event;  // then the endpoint, discarded
    if (comm::wire::receive_parts(monitor, event) == 0) return false;
    const std::optional<uint16_t> id = comm::wire::monitor_event(event[0]);
    if (id == ZMQ_EVENT_CONNECTED) connected = true;
    if (id == ZMQ_EVENT_CONNECT_RETRIED && !connected) return true;
  }
}

// Asks `backup` (on a socket of its own, so that no reply of a pending call
// is taken; `monitor` watches its connects) to serve `server`'s range until
// it answers, refuses the connection, or `deadline` passes.
Answer ask_backup(comm::wire::FramedSocket& socket, zmq::socket_t& monitor, int backup,
                  const ReplicaTakeover& ask, Deadline deadline) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = server_rank(backup);
  socket.send({}, header, encode_replica(ask));
  bool connected = false;
  while (true) {
    if (connect_refused(monitor, connected)) return {std::nullopt, true};
    if (deadline.expired()) return {};
    std::array<zmq::pollitem_t, 2> items{socket.poll_item(),
                                         zmq::pollitem_t{monitor.handle(), 0, ZMQ_POLLIN, 0}};
    comm::wire::poll_until(items, deadline);
    while (std::optional<comm::wire::Frame> frame = socket.try_receive()) {
      try {
        ReplicaMessage m = decode_replica(frame->payload());
        if (auto* reply = std::get_if<TakeoverReply>(&m); reply && reply->primary == ask.primary) {
          return {std::move(*reply), false};
        }
        socket.drop("not an answer to this worker's takeover request");
      } catch (const DataError& e) {
        socket.drop(e.what());
      }
    }
  }
}

}  // namespace

bool Client::Impl::take_over(int server, const std::string& operation) {
  if (options_.replicas == 0 || !initialised_) return false;
  const auto start = std::chrono::steady_clock::now();
  ReplicaTakeover ask;
  ask.primary = static_cast<uint32_t>(server);
  ask.worker = static_cast<uint32_t>(options_.worker);
  ask.version = last_version_;
  ask.term = terms_[static_cast<size_t>(server)];
  // The process that served the range: its slot never serves again once a
  // backup took the range over (a replacement retires at once).
  const int lost = serving_[static_cast<size_t>(server)];
  // Deaths the kernel already reported on other ranges' connections: such a
  // backup is not asked (it would cost the ask's whole deadline).
  note_breaks(server);
  const std::chrono::milliseconds ask_timeout =
      std::min(options_.timeout, options_.takeover_timeout);
  for (int backup : backups_of(server, num_servers(), options_.replicas)) {
    if (dead_[static_cast<size_t>(backup)]) {
      logger_.warn("ps worker {}: backup server {} of server {}'s range died before: not asked",
                   options_.worker, backup, server);
      continue;
    }
    auto socket = connect(backup, options_.server_endpoints[static_cast<size_t>(backup)]);
    zmq::socket_t monitor = watch(*socket, backup, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED);
    const Answer answer = ask_backup(*socket, monitor, backup, ask, Deadline::after(ask_timeout));
    monitor = zmq::socket_t();  // closed before the socket it watches
    if (answer.refused) {
      dead_[static_cast<size_t>(backup)] = true;
      logger_.warn(
          "ps worker {}: backup server {} of server {}'s range refused the connection (its "
          "process is gone): not asked again ({})",
          options_.worker, backup, server, operation);
      continue;
    }
    if (!answer.reply) {
      logger_.warn(
          "ps worker {}: backup server {} did not answer within {} ms whether it takes server "
          "{}'s range over ({})",
          options_.worker, backup, ask_timeout.count(), server, operation);
      continue;
    }
    const TakeoverReply* reply = &*answer.reply;
    if (reply->status == TakeoverReply::Status::kServing) {
      terms_[static_cast<size_t>(server)] =
          std::max(terms_[static_cast<size_t>(server)], reply->term);
      reroute(server, reply->endpoint);
      serving_[static_cast<size_t>(server)] = backup;
      dead_[static_cast<size_t>(lost)] = true;
      logger_.warn(
          "ps worker {}: lost server {} during {}; backup server {} serves its range from "
          "version {} at term {} on {} ({:.3f} s after the break was seen)",
          options_.worker, server, operation, backup, reply->version, reply->term, reply->endpoint,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      return true;
    }
    logger_.warn("ps worker {}: backup server {} does not take server {}'s range over: {}",
                 options_.worker, backup, server, reply->error);
    if (reply->status == TakeoverReply::Status::kReplaced) return false;
  }
  logger_.warn("ps worker {}: no backup took server {}'s range over; waiting for its replacement",
               options_.worker, server);
  return false;
}

Deadline Client::Impl::check_silence(Call& call) {
  const std::chrono::milliseconds after = options_.silent_takeover;
  if (options_.replicas == 0 || after.count() <= 0 || !initialised_) return Deadline::never();
  const auto now = std::chrono::steady_clock::now();
  std::vector<int> silent;
  for (const auto& [server, index] : call.pending) {
    auto [it, fresh] = call.silence.try_emplace(server, Call::Silence{now, std::nullopt});
    Call::Silence& s = it->second;
    if (fresh) continue;
    if (!s.probed && now - s.heard >= after) {
      Message probe;
      probe.kind = Kind::kStats;
      send(server, probe);
      s.probed = now;
    } else if (s.probed && now - *s.probed >= after) {
      silent.push_back(server);
    }
  }
  for (int server : silent) {
    call.silence.erase(server);
    logger_.warn(
        "ps worker {}: server {} sent nothing for {} ms during {}, nor answered a liveness probe "
        "within {} ms more: asking its backups to take its range over (it is at term {})",
        options_.worker, server, after.count(), call.operation, after.count(),
        terms_[static_cast<size_t>(server)]);
    if (!recover(call, server, "went silent")) continue;
    if (take_over(server, call.operation))
      send(server, call.requests[call.pending.at(server)].second);
  }
  return Deadline::after(std::max(std::chrono::milliseconds(1), after / 4));
}

void Client::Impl::notify_fenced(int server, std::unique_ptr<comm::wire::FramedSocket> old) {
  Message beat;
  beat.kind = Kind::kHeartbeat;
  beat.worker = static_cast<uint32_t>(options_.worker);
  beat.term = terms_[static_cast<size_t>(server)];
  beat.request_id = next_request_++;
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = server_rank(server);
  header.sequence = beat.request_id;
  old->send({}, header, encode_message(beat));
  retired_.push_back(std::move(old));
}

void Client::Impl::reroute(int server, const std::string& endpoint) {
  const auto s = static_cast<size_t>(server);
  // The old socket stays open (notify_fenced): its monitor is stopped first.
  // A monitor whose reader is gone blocks the context's I/O thread on its
  // next event (a reconnect), and with it every socket of this worker.
  zmq_socket_monitor(sockets_[s]->socket().handle(), nullptr, 0);
  monitors_[s] = zmq::socket_t();
  notify_fenced(server, std::move(sockets_[s]));
  sockets_[s] = connect(server, endpoint);
  monitors_[s] = watch_disconnects(server);
  broken_[s] = false;
  std::lock_guard lock(heartbeat_mutex_);
  routes_[s] = endpoint;
}

}  // namespace dtrain::ps
