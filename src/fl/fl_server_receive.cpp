// FlServer: the frames that arrive (fl/fl_server_impl.h): joins, plain and
// compressed updates, and the dispatch of SecAgg answers.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "core/error.h"
#include "fl/fl_server_impl.h"

namespace dtrain::fl {

namespace {

// How often a waiting server looks at its stop token.
constexpr std::chrono::milliseconds kStopPoll{100};

}  // namespace

double FlServer::Impl::OpenRound::mean_loss() const {
  if (!secagg) return aggregator.mean_loss();
  double weighted = 0;
  double total = 0;
  for (int64_t id : secagg->included) {
    const auto found = secagg->meta.find(id);
    if (found == secagg->meta.end()) continue;
    weighted += static_cast<double>(found->second.samples) * found->second.loss;
    total += static_cast<double>(found->second.samples);
  }
  return total > 0 ? weighted / total : std::nan("");
}

std::vector<int64_t> FlServer::Impl::connected(Clock::time_point now) const {
  std::vector<int64_t> ids;
  for (const auto& [id, known] : clients_) {
    if (!known.missed && now - known.last_heard <= options_.client_timeout) ids.push_back(id);
  }
  return ids;  // ascending: a std::map's order
}

void FlServer::Impl::send(const std::string& identity, int64_t client,
                          std::vector<std::byte> payload) {
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.receiver = client_rank(client);
  socket_->send(identity, header, std::move(payload));
}

void FlServer::Impl::reject(const std::string& reason, OpenRound* open) {
  ++rejected_;
  if (open != nullptr) ++open->rejected;
  logger_.warn("fl server: rejected {}", reason);
}

void FlServer::Impl::serve_once(Deadline until, OpenRound* open) {
  const Deadline slice(std::min(until.at(), Clock::now() + kStopPoll));
  std::optional<comm::wire::Frame> frame = socket_->receive(slice);
  if (frame) handle(*frame, open);
  connected_count_ = static_cast<int64_t>(connected(Clock::now()).size());
}

void FlServer::Impl::handle(const comm::wire::Frame& frame, OpenRound* open) {
  FlMessage m;
  try {
    m = decode_fl_message(frame.payload());
  } catch (const DataError& e) {
    socket_->drop(fmt::format("from rank {}: {}", frame.header.sender, e.what()));
    return;
  }
  const int64_t clients = options_.config.clients;
  if (m.kind == FlKind::kJoin) {
    if (m.client >= clients) {
      reject(fmt::format("a join from client {}: the id is outside [0, {})", m.client, clients),
             open);
      return;
    }
    if (frame.header.sender != client_rank(m.client)) {
      reject(fmt::format("a join from client {} sent by wire rank {} (expected {})", m.client,
                         frame.header.sender, client_rank(m.client)),
             open);
      return;
    }
    auto [it, added] = clients_.try_emplace(m.client);
    if (added || it->second.identity != frame.identity) {
      logger_.info("fl server: client {} {}", m.client, added ? "joined" : "joined again");
    }
    it->second.identity = frame.identity;
    it->second.last_heard = Clock::now();
    it->second.missed = false;
    send(frame.identity, m.client, done_ ? encode_done(done_rounds_) : encode_wait(rounds_done_));
    return;
  }
  if (options_.config.secure_aggregation &&
      (m.kind == FlKind::kUpdate || m.kind == FlKind::kUpdateCompressed)) {
    reject(fmt::format("client {}, round {}: a plain update, but this job uses secure aggregation",
                       m.update.client, m.update.round),
           open);
    return;
  }
  if (m.kind == FlKind::kUpdate) {
    handle_update(frame, std::move(m.update), open);
    return;
  }
  if (m.kind == FlKind::kSecAggAnswer) {
    handle_secagg(frame, m.secagg, open);
    return;
  }
  if (m.kind == FlKind::kUpdateCompressed) {
    // The delta is the upload message's decoding; a message the codec
    // refuses leaves the delta empty, which the aggregator rejects with the
    // size, after the reason was logged here.
    const std::string context =
        fmt::format("update of client {}, round {}", m.update.client, m.update.round);
    if (!codec_) {
      logger_.warn("fl server: {}: compressed, but this job's uploads are dense", context);
    } else {
      try {
        m.update.delta = codec_->decode(m.upload, model_size_, context);
      } catch (const DataError& e) {
        logger_.warn("fl server: {}", e.what());
      }
    }
    handle_update(frame, std::move(m.update), open);
    return;
  }
  socket_->drop(fmt::format("from rank {}: a {} message, which only the server sends",
                            frame.header.sender, to_string(m.kind)));
}

bool FlServer::Impl::from_client(const comm::wire::Frame& frame, int64_t client,
                                 std::string_view what, OpenRound* open) {
  if (frame.header.sender != client_rank(client)) {
    reject(fmt::format("{} of client {} sent by wire rank {} (expected {})", what, client,
                       frame.header.sender, client_rank(client)),
           open);
    return false;
  }
  auto known = clients_.find(client);
  if (known != clients_.end() && known->second.identity == frame.identity) {
    known->second.last_heard = Clock::now();
    known->second.missed = false;
  }
  return true;
}

void FlServer::Impl::handle_update(const comm::wire::Frame& frame, ClientUpdate update,
                                   OpenRound* open) {
  const int64_t client = update.client;
  if (!from_client(frame, client, "an update", open)) return;
  if (open == nullptr) {
    reject(
        fmt::format("client {}, round {}: an update while no round is open", client, update.round),
        open);
    return;
  }
  const bool this_round = update.round == open->aggregator.round();
  const bool partial = update.partial;
  if (partial && !options_.config.accepts_partial_work() && this_round) {
    open->outstanding.erase(client);
    reject(fmt::format("client {}, round {}: partial work, which {} does not use", client,
                       update.round, options_.config.algorithm),
           open);
    return;
  }
  std::optional<std::string> why = open->aggregator.add(std::move(update));
  if (this_round) {
    open->outstanding.erase(client);
    open->bytes_up += comm::wire::kHeaderBytes + frame.body.size();
  }
  if (why) {
    reject(*why, open);
    return;
  }
  if (partial) open->partial.insert(client);
}

}  // namespace dtrain::fl
