// Client::Impl's half of a takeover (client.h "Server failures";
// docs/parameter-server.md "A backup takes over"): when the connection to a
// server breaks, its backups are asked, nearest first, to serve its range,
// and the range is re-routed to the first one that does. The request then
// goes to that backup's acting primary, which answers kRejoin like a
// replacement, and the existing re-join (init with the last pulled values,
// the open pushes again) brings it to the worker's version.
#include <fmt/format.h>

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

// Asks `backup` (on a socket of its own, so that no reply of a pending call
// is taken) to serve `server`'s range; nullopt when it sends no answer by
// `deadline`.
std::optional<TakeoverReply> ask_backup(comm::wire::FramedSocket& socket, int backup,
                                        const ReplicaTakeover& ask, Deadline deadline) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = server_rank(backup);
  socket.send({}, header, encode_replica(ask));
  while (std::optional<comm::wire::Frame> frame = socket.receive(deadline)) {
    try {
      ReplicaMessage m = decode_replica(frame->payload());
      if (auto* reply = std::get_if<TakeoverReply>(&m); reply && reply->primary == ask.primary) {
        return std::move(*reply);
      }
      socket.drop("not an answer to this worker's takeover request");
    } catch (const DataError& e) {
      socket.drop(e.what());
    }
  }
  return std::nullopt;
}

}  // namespace

bool Client::Impl::take_over(int server, const std::string& operation) {
  if (options_.replicas == 0 || !initialised_) return false;
  const auto start = std::chrono::steady_clock::now();
  ReplicaTakeover ask;
  ask.primary = static_cast<uint32_t>(server);
  ask.worker = static_cast<uint32_t>(options_.worker);
  ask.version = last_version_;
  // The process that served the range: its slot never serves again once a
  // backup took the range over (a replacement retires at once).
  const int lost = serving_[static_cast<size_t>(server)];
  for (int backup : backups_of(server, num_servers(), options_.replicas)) {
    if (dead_[static_cast<size_t>(backup)]) {
      logger_.warn("ps worker {}: backup server {} of server {}'s range died before: not asked",
                   options_.worker, backup, server);
      continue;
    }
    auto socket = connect(backup, options_.server_endpoints[static_cast<size_t>(backup)]);
    const std::optional<TakeoverReply> reply =
        ask_backup(*socket, backup, ask, Deadline::after(options_.timeout));
    if (!reply) {
      logger_.warn(
          "ps worker {}: backup server {} did not answer within {} ms whether it takes server "
          "{}'s range over ({})",
          options_.worker, backup, options_.timeout.count(), server, operation);
      continue;
    }
    if (reply->status == TakeoverReply::Status::kServing) {
      reroute(server, reply->endpoint);
      serving_[static_cast<size_t>(server)] = backup;
      dead_[static_cast<size_t>(lost)] = true;
      logger_.warn(
          "ps worker {}: lost server {} during {}; backup server {} serves its range from "
          "version {} on {} ({:.3f} s after the break was seen)",
          options_.worker, server, operation, backup, reply->version, reply->endpoint,
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

void Client::Impl::reroute(int server, const std::string& endpoint) {
  const auto s = static_cast<size_t>(server);
  monitors_[s] = zmq::socket_t();  // closed before the socket it watches
  sockets_[s] = connect(server, endpoint);
  monitors_[s] = watch_disconnects(server);
  std::lock_guard lock(heartbeat_mutex_);
  routes_[s] = endpoint;
}

}  // namespace dtrain::ps
