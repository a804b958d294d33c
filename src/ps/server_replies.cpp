// Server::Impl's outgoing messages: send() and reply(), and the sync push
// replies deferred to leave with the same worker's pull (server_impl.h).
#include <algorithm>
#include <iterator>
#include <utility>

#include "comm/wire/framed_socket.h"
#include "ps/server_impl.h"

namespace dtrain::ps {

void Server::Impl::send(const std::string& identity, uint32_t receiver, const Message& m) {
  if (!deferred_.empty()) {
    flush_push_replies([&](const DeferredReply& d) { return d.identity == identity; });
  }
  send_now(identity, receiver, m);
}

void Server::Impl::send_now(const std::string& identity, uint32_t receiver, const Message& m) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = receiver;
  header.sequence = m.request_id;
  // Into a reused buffer (frame_pool.h): no fresh pages for each reply.
  socket_->send(identity, header, encode_pooled(*frames_, m));
}

void Server::Impl::reply(const std::string& identity, uint32_t worker, Message m) {
  m.kind = Kind::kReply;
  m.worker = static_cast<uint32_t>(options_.server);
  m.term = term_;
  send(identity, worker_rank(options_.num_servers, static_cast<int>(worker)), m);
}

void Server::Impl::defer_reply(const std::string& identity, uint32_t worker, Message m) {
  m.kind = Kind::kReply;
  m.worker = static_cast<uint32_t>(options_.server);
  m.term = term_;
  deferred_.push_back(DeferredReply{
      identity, worker_rank(options_.num_servers, static_cast<int>(worker)), std::move(m)});
}

void Server::Impl::flush_push_replies(const std::function<bool(const DeferredReply&)>& due) {
  // In the order they were deferred; the others stay.
  auto keep = std::stable_partition(deferred_.begin(), deferred_.end(),
                                    [&](const DeferredReply& d) { return !due(d); });
  std::vector<DeferredReply> leaving(std::make_move_iterator(keep),
                                     std::make_move_iterator(deferred_.end()));
  deferred_.erase(keep, deferred_.end());
  for (const DeferredReply& d : leaving) send_now(d.identity, d.receiver, d.message);
}

bool Server::Impl::pull_parked(const std::string& identity) const {
  return std::any_of(parked_.begin(), parked_.end(),
                     [&](const Parked& p) { return p.identity == identity; });
}

}  // namespace dtrain::ps
