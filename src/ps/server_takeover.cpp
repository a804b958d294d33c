// Server::Impl's takeover (docs/parameter-server.md, "A backup takes over"):
// a worker whose connection to a primary broke asks the primary's first live
// backup to serve the range. The backup promotes its copy, which holds the
// last version every backup acknowledged, so no worker pulled a newer one:
// it starts an acting primary, a second Server::Impl of this process with
// the dead server's index, on its own thread and its own endpoint, as a
// replacement that imports the copy at its first init (values, optimizer
// buffers, rows, version). The workers re-join it as they re-join a
// replacement (init with their last pulled values, their open pushes again),
// so the open version's pushes are taken once and the versions already in
// the copy are answered as dropped. The range stays with the acting primary
// for the rest of the run, unreplicated; the launcher's replacement of the
// dead server learns so from its fetch and retires.
#include <fmt/format.h>

#include <algorithm>
#include <future>
#include <memory>
#include <thread>
#include <utility>

#include "core/error.h"
#include "ps/server_impl.h"

namespace dtrain::ps {

struct Server::Impl::ActingPrimaries {
  struct Acting {
    uint32_t primary = 0;
    uint64_t version = 0;  // the copy's version when it was promoted
    uint64_t term = 0;     // the term it serves the range at
    std::string endpoint;
    std::unique_ptr<Impl> server;
    std::promise<void> ended;
    std::future<void> ended_future = ended.get_future();
    std::jthread thread;  // last: stopped and joined first
  };
  std::vector<std::unique_ptr<Acting>> all;

  const Acting* find(uint32_t primary) const {
    for (const auto& a : all) {
      if (a->primary == primary) return a.get();
    }
    return nullptr;
  }
};

void Server::Impl::ActingDeleter::operator()(ActingPrimaries* acting) const {
  std::default_delete<ActingPrimaries>{}(acting);
}

namespace {

// A new endpoint beside `own` for the range of `primary`: the same ipc
// folder, or the same tcp host with a port the system picks.
std::string acting_bind_endpoint(const std::string& own, uint32_t primary) {
  if (own.rfind("ipc://", 0) == 0) return fmt::format("{}.takeover-{}", own, primary);
  if (own.rfind("tcp://", 0) == 0) {
    const size_t colon = own.rfind(':');
    if (colon != std::string::npos && colon > 6) return own.substr(0, colon) + ":0";
  }
  throw UsageError(fmt::format("cannot derive a takeover endpoint from '{}'", own));
}

}  // namespace

std::optional<std::string> Server::Impl::acting_endpoint(uint32_t primary) const {
  if (!acting_) return std::nullopt;
  const ActingPrimaries::Acting* a = acting_->find(primary);
  if (a == nullptr) return std::nullopt;
  return a->endpoint;
}

void Server::Impl::on_takeover(const comm::wire::Frame& frame, const ReplicaTakeover& ask) {
  const uint32_t sender = frame.header.sender;
  if (ask.worker >= static_cast<uint32_t>(options_.num_workers) ||
      sender != worker_rank(options_.num_servers, static_cast<int>(ask.worker))) {
    socket_->drop(fmt::format("a takeover request from rank {} claiming to be worker {}", sender,
                              ask.worker));
    return;
  }
  const TakeoverReply reply = takeover(ask);
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = sender;
  socket_->send(frame.identity, header, encode_replica(reply));
}

TakeoverReply Server::Impl::takeover(const ReplicaTakeover& ask) {
  TakeoverReply r;
  r.backup = static_cast<uint32_t>(options_.server);
  r.primary = ask.primary;
  auto refuse = [&](std::string why) {
    r.status = TakeoverReply::Status::kRefused;
    r.error = std::move(why);
    logger_.warn("ps server {}: does not serve server {}'s range for worker {}: {}",
                 options_.server, ask.primary, ask.worker, r.error);
    return r;
  };
  if (ask.primary >= static_cast<uint32_t>(options_.num_servers) ||
      !backs_up(options_.server, static_cast<int>(ask.primary), options_.num_servers,
                options_.replicas)) {
    return refuse(
        fmt::format("server {} does not back up server {}", options_.server, ask.primary));
  }
  if (acting_) {
    if (const ActingPrimaries::Acting* a = acting_->find(ask.primary)) {
      r.version = a->version;
      r.term = a->term;
      if (ask.version > a->version) {
        return refuse(fmt::format(
            "it took the range over at version {}, and worker {} pulled version {}: the copy "
            "was behind",
            a->version, ask.worker, ask.version));
      }
      r.status = TakeoverReply::Status::kServing;
      r.endpoint = a->endpoint;
      return r;
    }
  }
  if (copy_given_.count(ask.primary) != 0) {
    refuse(
        fmt::format("server {}'s replacement took this server's copy and serves it", ask.primary));
    r.status = TakeoverReply::Status::kReplaced;
    return r;
  }
  std::optional<ReplicaState> copy = replica_store_.state(ask.primary);
  if (!copy) return refuse(fmt::format("it holds no copy of server {}'s range", ask.primary));
  r.version = copy->version;
  const uint64_t newest = replica_store_.newest_seen(ask.primary);
  if (copy->version < ask.version || copy->version < newest) {
    return refuse(fmt::format(
        "its copy is at version {}, behind its primary (worker {} pulled version {}, server {} "
        "shipped version {}): a lagging copy is not promoted",
        copy->version, ask.worker, ask.version, ask.primary, newest));
  }
  // Each takeover raises the range's term: the copy's primary (and any
  // older holder the asking worker knew) is fenced by it.
  copy->term = std::max(copy->term, ask.term) + 1;
  r.term = copy->term;
  try {
    r.endpoint = start_acting(std::move(*copy));
  } catch (const Error& e) {
    return refuse(fmt::format("cannot start serving the range: {}", e.what()));
  }
  r.status = TakeoverReply::Status::kServing;
  return r;
}

std::string Server::Impl::start_acting(ReplicaState copy) {
  const auto start = Clock::now();
  const uint32_t primary = copy.primary;
  ServerOptions o = options_;
  o.server = static_cast<int>(primary);
  o.bind_endpoint = acting_bind_endpoint(endpoint_, primary);
  o.replacement = true;
  o.replicas = 0;
  o.restore.reset();
  o.on_version = {};
  auto acting = std::make_unique<ActingPrimaries::Acting>();
  acting->primary = primary;
  acting->version = copy.version;
  acting->term = copy.term;
  replica_store_.raise_term(primary, copy.term);  // the old primary's updates are refused now
  acting->server = std::make_unique<Impl>(std::move(o), auth_, logger_);
  acting->server->term_ = copy.term;  // raised by takeover() before the copy came here
  acting->server->inherited_ = std::move(copy);
  acting->server->acting_host_ = options_.server;
  acting->endpoint = acting->server->endpoint_;
  if (!acting_) acting_.reset(std::make_unique<ActingPrimaries>().release());
  logger_.warn(
      "ps server {}: took over server {}'s range at version {}, term {} (its copy: values, "
      "optimizer buffers and sparse rows) and serves it on {}, {:.3f} s after the request; the "
      "range is not replicated for the rest of the run",
      options_.server, primary, acting->version, acting->term, acting->endpoint,
      std::chrono::duration<double>(Clock::now() - start).count());
  ActingPrimaries::Acting& a = *acting;
  a.thread = std::jthread([&a, this, deadline = serve_deadline_](std::stop_token stop) {
    // `a` and the logger outlive the thread: end_serving() or the deleter
    // joins it before `a` is destroyed.
    try {
      a.server->run(stop, deadline);
    } catch (const std::exception& e) {
      logger_.error("ps server {}: serving server {}'s range ended: {}", options_.server, a.primary,
                    e.what());
    }
    a.ended.set_value();
  });
  acting_->all.push_back(std::move(acting));
  return a.endpoint;
}

void Server::Impl::fence(uint64_t term, const std::string& seen) {
  if (fenced_term_ && *fenced_term_ >= term) return;
  const bool first = !fenced_term_;
  fenced_term_ = term;
  fenced_why_ = fmt::format(
      "server {} stopped serving range {} (it held it at term {}): {} carries term {}, another "
      "server took the range over",
      options_.server, options_.server, term_, seen, term);
  if (first) logger_.error("ps server {}: {}", options_.server, fenced_why_);
  // The parked pulls are answered so too: their workers re-route at once.
  for (const Parked& p : parked_) {
    Message m;
    m.kind = p.reply_to;
    m.request_id = p.request_id;
    send(p.identity, worker_rank(options_.num_servers, static_cast<int>(p.worker)),
         fenced_reply(m));
  }
  parked_.clear();
}

Message Server::Impl::fenced_reply(const Message& request) const {
  Message r = status_reply(request, ReplyStatus::kFenced, fenced_why_);
  r.worker = static_cast<uint32_t>(options_.server);
  r.term = *fenced_term_;
  return r;
}

bool Server::Impl::fenced(const std::string& identity, uint32_t receiver, const Message& m) {
  if (m.term > term_) {
    fence(m.term, fmt::format("worker {}'s {} request", m.worker, to_string(m.kind)));
  }
  if (!fenced_term_) return false;
  ++counters_.requests_rejected;
  if (m.kind == Kind::kHeartbeat) return true;
  send(identity, receiver, fenced_reply(m));
  return true;
}

bool Server::Impl::retire_fenced() const {
  if (!fenced_term_ || acting_ || consistency_.live_workers() > 0) return false;
  logger_.warn(
      "ps server {}: retires: range {} is served at term {} by another server and no worker "
      "is left here (its copies of other ranges go with it)",
      options_.server, options_.server, *fenced_term_);
  return true;
}

bool Server::Impl::begin_serving(Deadline deadline) {
  serve_deadline_ = deadline;
  inherit_from_backup();
  if (!backups_ || !backups_->taken_over_by()) return true;
  logger_.warn(
      "ps server {}: replacement retires: backup server {} took this range over and serves it "
      "for the rest of the run",
      options_.server, *backups_->taken_over_by());
  return false;
}

void Server::Impl::end_serving(ServeEnd end) {
  if (!acting_) return;
  // The workers say goodbye to every range in one call: the acting
  // primaries finish with this server, or are declared finished once their
  // workers are silent past the heartbeat timeout.
  const auto bound = Clock::now() + 2 * options_.rejoin_window();
  const auto until = std::min(bound, serve_deadline_.at());
  for (auto& a : acting_->all) {
    if (end == ServeEnd::kFinished &&
        a->ended_future.wait_until(until) != std::future_status::ready) {
      logger_.warn("ps server {}: stops serving server {}'s range, whose workers did not finish",
                   options_.server, a->primary);
    }
    a->thread.request_stop();
    a->thread.join();
  }
}

}  // namespace dtrain::ps
