#include "comm/rendezvous/elastic_rendezvous.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <zmq.hpp>

#include "comm/rendezvous/coordinator_socket.h"
#include "comm/rendezvous/elastic_protocol.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using namespace elastic_protocol;

// The server's poll slice: how late it notices a settle deadline or a slot
// reported dead (registrations themselves are answered at once).
constexpr auto kServerSlice = 20ms;
constexpr const char* kSecretHint =
    "set DTRAIN_JOB_SECRET so that only the job's processes can join";

std::string slot_list(const std::vector<int>& slots) {
  return slots.empty() ? std::string("none") : fmt::format("{}", fmt::join(slots, ", "));
}

std::string generation_text(const std::optional<uint32_t>& generation) {
  return generation ? fmt::format("{}", *generation) : std::string("none");
}

}  // namespace

// ---------------------------------------------------------------- server

// The coordinator's state and its handlers. The launcher's view (alive,
// finished, stopped, generation) is shared under `mutex`; everything else
// belongs to the serving thread.
struct ElasticRendezvousServer::State {
  State(const ElasticRendezvousOptions& options, Logger& logger)
      : options(options),
        logger(logger),
        refusals(logger, "elastic coordinator: refused a request"),
        alive(static_cast<size_t>(options.slots), 0),
        started(static_cast<size_t>(options.slots), 0) {}

  // The launcher's view as of now.
  struct View {
    std::vector<uint64_t> alive;
    bool finished = false;
    std::string stopped;
  };
  View view() const;

  // Serving thread: the per-slice upkeep, one handler per request kind, the
  // replies.
  void upkeep(const View& v);
  void on_request(const wire::Frame& frame);
  void on_poll(const std::string& identity, int slot);
  void on_join(const std::string& identity, int slot, uint32_t member_of,
               const std::vector<int>& suspects, const View& v);
  void on_endpoint(const std::string& identity, int slot, uint32_t generation,
                   const PeerEndpoint& endpoint);
  void on_dropped(const wire::RejectedFrame& frame);
  void reply(std::string_view identity, wire::MessageType type, uint32_t slot,
             std::span<const std::byte> payload);
  void refuse(std::string_view identity, int slot, uint32_t kind, const std::string& reason);
  void answer_finished(const std::string& identity, int slot);
  // Whether the process that joined the current generation for `slot`
  // still runs (not a replacement of it).
  bool member_alive(int slot, const std::vector<uint64_t>& alive) const;
  // Whether the open round waits for `slot`: every alive slot for
  // generation 0, then the alive members of the current generation that no
  // joined member reported silent.
  bool awaited(int slot, const std::vector<uint64_t>& alive) const;
  // Closes the membership round when it may (see the header).
  void try_close_round(const std::vector<uint64_t>& alive);
  void form_generation(const std::vector<uint64_t>& alive, bool every_alive);
  // Fails the endpoint round of the newest generation if a member is gone.
  void check_endpoint_round(const std::vector<uint64_t>& alive);

  const ElasticRendezvousOptions options;
  Logger& logger;
  wire::RateLimitedLog refusals;
  zmq::context_t context{1};
  std::unique_ptr<wire::FramedSocket> socket;
  uint64_t sequence = 0;

  // Shared with the launcher's thread.
  mutable std::mutex mutex;
  // Per slot: 0 while no process runs for it, else that process's number
  // (1 for the first, 2 for its replacement, ...).
  std::vector<uint64_t> alive;
  std::vector<uint64_t> started;  // processes started per slot
  bool finished = false;
  std::string stopped;                 // non-empty once stop() ran
  std::optional<uint32_t> generation;  // the last generation formed
  // The last generation's members (slots by rank) and the process number
  // that joined for each: finish() counts only a member's exit.
  std::vector<int> current_members;
  std::vector<uint64_t> current_processes;

  // Serving thread only.
  std::vector<int> members;                  // slots of `generation`, by rank
  std::vector<uint64_t> member_process;      // by rank: the process that joined
  std::vector<std::string> member_identity;  // by rank: the connection it joined from
  struct Joining {
    std::string identity;
    bool member = false;  // of the current generation
  };
  std::map<int, Joining> joining;  // by slot: the open membership round
  // Slots that joined members of the open round reported silent (their
  // transport's heartbeat timeout named them): not waited for.
  std::set<int> suspected;
  std::optional<Clock::time_point> settle_from;
  // The endpoint round of the newest generation, by rank.
  std::vector<std::optional<PeerEndpoint>> endpoints;
  bool endpoints_done = false;
  std::string endpoints_failure;  // why the round failed, if it did
};

ElasticRendezvousServer::State::View ElasticRendezvousServer::State::view() const {
  std::lock_guard lock(mutex);
  return View{alive, finished, stopped};
}

void ElasticRendezvousServer::State::reply(std::string_view identity, wire::MessageType type,
                                           uint32_t slot, std::span<const std::byte> payload) {
  wire::FrameHeader h;
  h.type = type;
  h.receiver = slot;
  h.sequence = sequence++;
  socket->send(identity, h, payload);
}

void ElasticRendezvousServer::State::refuse(std::string_view identity, int slot, uint32_t kind,
                                            const std::string& reason) {
  refusals.add(fmt::format("slot {}: {}", slot, reason));
  reply(identity, wire::MessageType::kReject, static_cast<uint32_t>(slot),
        with_kind(kind, text_bytes(reason)));
}

void ElasticRendezvousServer::State::answer_finished(const std::string& identity, int slot) {
  reply(identity, wire::MessageType::kTable, static_cast<uint32_t>(slot), with_kind(kFinished, {}));
}

// A frame the socket dropped (another job, a bad MAC, a slot outside the
// job, not a request): answered without touching the state.
void ElasticRendezvousServer::State::on_dropped(const wire::RejectedFrame& frame) {
  reply(frame.identity, wire::MessageType::kReject, wire::kAnyReceiver,
        with_kind(kNone, text_bytes(frame.reason)));
}

bool ElasticRendezvousServer::State::member_alive(int slot,
                                                  const std::vector<uint64_t>& alive) const {
  const auto it = std::find(members.begin(), members.end(), slot);
  if (it == members.end()) return false;
  const uint64_t process = alive[static_cast<size_t>(slot)];
  return process != 0 && process == member_process[static_cast<size_t>(it - members.begin())];
}

bool ElasticRendezvousServer::State::awaited(int slot, const std::vector<uint64_t>& alive) const {
  if (alive[static_cast<size_t>(slot)] == 0) return false;
  if (!generation) return true;
  return member_alive(slot, alive) && suspected.count(slot) == 0;
}

void ElasticRendezvousServer::State::try_close_round(const std::vector<uint64_t>& alive) {
  if (joining.empty()) return;
  const bool has_member =
      std::any_of(joining.begin(), joining.end(), [](const auto& j) { return j.second.member; });
  if (generation && !has_member) return;
  if (static_cast<int>(joining.size()) < options.min_workers) return;
  // Awaited: every alive slot for generation 0, then the alive members of
  // the current generation (a new worker is only taken once it joined).
  bool every_alive = true;
  for (int slot = 0; slot < options.slots; ++slot) {
    if (awaited(slot, alive) && joining.count(slot) == 0) every_alive = false;
  }
  const bool settled = settle_from && Clock::now() - *settle_from >= options.settle;
  if (every_alive || settled) form_generation(alive, every_alive);
}

void ElasticRendezvousServer::State::form_generation(const std::vector<uint64_t>& alive,
                                                     bool every_alive) {
  std::vector<int> order;  // members in their order, then new workers by slot
  for (int slot : members) {
    auto it = joining.find(slot);
    if (it != joining.end() && it->second.member) order.push_back(slot);
  }
  for (const auto& [slot, j] : joining) {
    if (!j.member) order.push_back(slot);
  }
  const uint32_t next = generation ? *generation + 1 : 0;
  if (!every_alive) {
    std::vector<int> missing;
    for (int slot = 0; slot < options.slots; ++slot) {
      if (awaited(slot, alive) && joining.count(slot) == 0) missing.push_back(slot);
    }
    logger.warn(
        "elastic coordinator: generation {} forms without slot(s) {}, which did not join within "
        "{} ms",
        next, slot_list(missing), options.settle.count());
  }
  std::vector<int> silent;  // suspected members that did not join: left out
  for (int slot : suspected) {
    if (joining.count(slot) == 0 && member_alive(slot, alive)) silent.push_back(slot);
  }
  if (!silent.empty()) {
    logger.warn(
        "elastic coordinator: generation {} forms without slot(s) {}, silent past the "
        "heartbeat timeout as their peers report; a left-out worker that wakes up is told "
        "so and exits",
        next, slot_list(silent));
  }
  ByteWriter w;
  w.write_u32(kJoin);
  w.write_u32(next);
  w.write_u32(static_cast<uint32_t>(order.size()));
  for (int slot : order) w.write_u32(static_cast<uint32_t>(slot));
  member_process.clear();
  member_identity.clear();
  for (int slot : order) {
    member_process.push_back(alive[static_cast<size_t>(slot)]);
    member_identity.push_back(joining[slot].identity);
  }
  members = std::move(order);
  endpoints.assign(members.size(), std::nullopt);
  endpoints_done = false;
  endpoints_failure.clear();
  joining.clear();
  suspected.clear();
  settle_from.reset();
  {
    // Before the replies leave: a member holding its reply finds the
    // generation formed (generation(), finish()).
    std::lock_guard lock(mutex);
    generation = next;
    current_members = members;
    current_processes = member_process;
  }
  for (size_t rank = 0; rank < members.size(); ++rank) {
    reply(member_identity[rank], wire::MessageType::kTable, static_cast<uint32_t>(members[rank]),
          w.bytes());
  }
  logger.info("elastic coordinator: generation {} formed: {} worker(s), slots by rank {}", next,
              members.size(), slot_list(members));
  if (options.on_generation) options.on_generation(next, members);
}

void ElasticRendezvousServer::State::check_endpoint_round(const std::vector<uint64_t>& alive) {
  if (endpoints_done || !generation) return;
  for (size_t rank = 0; rank < members.size(); ++rank) {
    const int slot = members[rank];
    if (alive[static_cast<size_t>(slot)] == member_process[rank]) continue;
    const std::string reason =
        fmt::format("generation {} lost slot {} (rank {}) before it formed; join again",
                    *generation, slot, rank);
    for (size_t r = 0; r < members.size(); ++r) {
      if (endpoints[r]) refuse(member_identity[r], members[r], kEndpoint, reason);
    }
    endpoints_done = true;  // any later kEndpoint for it is refused too
    endpoints_failure = reason;
    return;
  }
}

void ElasticRendezvousServer::State::upkeep(const View& v) {
  // Registrations of slots that ended, and the answers owed to waiting
  // workers once the job finished or stopped.
  for (auto it = joining.begin(); it != joining.end();) {
    if (!v.stopped.empty()) {
      refuse(it->second.identity, it->first, kJoin, v.stopped);
      it = joining.erase(it);
    } else if (v.finished) {
      answer_finished(it->second.identity, it->first);
      it = joining.erase(it);
    } else if (!v.alive[static_cast<size_t>(it->first)]) {
      it = joining.erase(it);
    } else {
      ++it;
    }
  }
  check_endpoint_round(v.alive);
  try_close_round(v.alive);
}

void ElasticRendezvousServer::State::on_request(const wire::Frame& frame) {
  const int slot = static_cast<int>(frame.header.sender);
  // The launcher's view as of this message (it may have changed while polling).
  const View v = view();
  uint32_t kind = kNone;
  try {
    ByteReader r(frame.payload(), fmt::format("elastic request from slot {}", slot));
    kind = r.read_u32("request kind");
    if (!v.stopped.empty() && kind != kPoll) {
      refuse(frame.identity, slot, kind, v.stopped);
    } else if (kind == kPoll) {
      r.expect_end("poll");
      on_poll(frame.identity, slot);
    } else if (kind == kJoin) {
      const uint32_t member_of = r.read_u32("member of");
      const uint32_t count = r.read_u32("suspect count");
      if (count > static_cast<uint32_t>(options.slots)) {
        throw DataError(
            fmt::format("elastic join: {} suspects, the job has {} slots", count, options.slots));
      }
      std::vector<int> suspects;
      for (uint32_t i = 0; i < count; ++i) {
        const uint32_t suspect = r.read_u32("suspect slot");
        if (suspect >= static_cast<uint32_t>(options.slots)) {
          throw DataError(fmt::format("elastic join: suspect slot {} outside 0..{}", suspect,
                                      options.slots - 1));
        }
        suspects.push_back(static_cast<int>(suspect));
      }
      r.expect_end("join");
      on_join(frame.identity, slot, member_of, suspects, v);
    } else if (kind == kEndpoint) {
      const uint32_t generation = r.read_u32("generation");
      const std::vector<PeerEndpoint> record = decode_endpoints(r.rest(), 1);
      if (record.size() != 1) throw DataError("elastic rendezvous endpoint: no endpoint record");
      on_endpoint(frame.identity, slot, generation, record[0]);
    } else {
      refuse(frame.identity, slot, kind, fmt::format("unknown request kind {}", kind));
    }
  } catch (const DataError& e) {
    refuse(frame.identity, slot, kNone, e.what());
  }
}

void ElasticRendezvousServer::State::on_poll(const std::string& identity, int slot) {
  uint32_t waiting = 0;
  for (const auto& [other, j] : joining) waiting += j.member ? 0 : 1;
  ByteWriter w;
  w.write_u32(kPoll);
  w.write_u32(generation.value_or(kNone));
  w.write_u32(waiting);
  reply(identity, wire::MessageType::kStatus, static_cast<uint32_t>(slot), w.bytes());
}

void ElasticRendezvousServer::State::on_join(const std::string& identity, int slot,
                                             uint32_t member_of, const std::vector<int>& suspects,
                                             const View& v) {
  if (v.finished) {
    answer_finished(identity, slot);
    return;
  }
  if (!v.alive[static_cast<size_t>(slot)]) {
    refuse(identity, slot, kJoin,
           fmt::format("slot {} is not alive (the launcher reported its process ended)", slot));
    return;
  }
  const bool member = member_of != kNone;
  if (member && generation && member_of < *generation &&
      std::find(members.begin(), members.end(), slot) == members.end()) {
    // A member the group went on without (silent past the heartbeat
    // timeout, e.g. stopped) that woke up: not an error of the job.
    const std::string reason = fmt::format(
        "slot {} was left out: it was a member of generation {}, and the group went on without "
        "it (silent past the heartbeat timeout, or replaced) and is at generation {}",
        slot, member_of, *generation);
    logger.warn("elastic coordinator: {}; told it to exit", reason);
    reply(identity, wire::MessageType::kStatus, static_cast<uint32_t>(slot),
          with_kind(kLeftOut, text_bytes(reason)));
    return;
  }
  if (member && (!generation || member_of != *generation || !member_alive(slot, v.alive))) {
    refuse(identity, slot, kJoin,
           fmt::format("slot {} says it is a member of generation {}, but the group is at "
                       "generation {} without it (it was left out); restart the worker",
                       slot, member_of, generation_text(generation)));
    return;
  }
  if (!member && member_alive(slot, v.alive)) {
    // The launcher starts a process for a slot only once its member died.
    refuse(identity, slot, kJoin,
           fmt::format("slot {} is held by a live member of generation {}, yet another process "
                       "joins as a new worker for it: two workers were started for slot {}, or "
                       "an outsider joined as slot {} ({})",
                       slot, generation_text(generation), slot, slot, kSecretHint));
    return;
  }
  auto it = joining.find(slot);
  if (it != joining.end() && it->second.identity != identity) {
    // Two connections claim the slot; the coordinator cannot tell which is
    // rightful, so neither joins this round, and both are told at once.
    const std::string reason = fmt::format(
        "slot {} was claimed by two processes in the same round: two workers were started for "
        "slot {}, or an outsider joined as slot {} ({}); neither joins",
        slot, slot, slot, kSecretHint);
    refuse(it->second.identity, slot, kJoin, reason);
    refuse(identity, slot, kJoin, reason);
    joining.erase(it);
    return;
  }
  joining[slot] = Joining{identity, member};
  if (member) {
    for (int suspect : suspects) {
      if (suspect != slot && member_alive(suspect, v.alive) && joining.count(suspect) == 0 &&
          suspected.insert(suspect).second) {
        logger.warn(
            "elastic coordinator: slot {} reports slot {} silent; the round does not "
            "wait for it",
            slot, suspect);
      }
    }
  }
  if (!settle_from && (member || !generation)) settle_from = Clock::now();
  logger.debug("elastic coordinator: slot {} joins generation {} ({})", slot,
               generation ? *generation + 1 : 0, member ? "member" : "new worker");
  try_close_round(v.alive);
}

void ElasticRendezvousServer::State::on_endpoint(const std::string& identity, int slot,
                                                 uint32_t gen, const PeerEndpoint& endpoint) {
  const auto rank_of = std::find(members.begin(), members.end(), slot);
  if (generation && gen == *generation && !endpoints_failure.empty()) {
    refuse(identity, slot, kEndpoint, endpoints_failure);
    return;
  }
  if (!generation || gen != *generation || rank_of == members.end() || endpoints_done) {
    refuse(identity, slot, kEndpoint,
           fmt::format("slot {} sent its endpoint for generation {}, which is not the forming "
                       "generation (newest: {}); join again",
                       slot, gen, generation_text(generation)));
    return;
  }
  const auto rank = static_cast<size_t>(rank_of - members.begin());
  if (identity != member_identity[rank]) {
    // Only the connection that joined the generation speaks for its slot.
    refuse(identity, slot, kEndpoint,
           fmt::format("slot {} (rank {} of generation {}) joined from another process; an "
                       "endpoint is taken only from the process that joined: two workers were "
                       "started for slot {}, or an outsider ({})",
                       slot, rank, *generation, slot, kSecretHint));
    return;
  }
  if (endpoint.rank != static_cast<int>(rank)) {
    refuse(identity, slot, kEndpoint,
           fmt::format("slot {} registers an endpoint for rank {}, its rank is {}", slot,
                       endpoint.rank, rank));
    return;
  }
  endpoints[rank] = endpoint;
  if (!std::all_of(endpoints.begin(), endpoints.end(),
                   [](const auto& e) { return e.has_value(); })) {
    return;
  }
  std::vector<PeerEndpoint> table;
  for (const auto& e : endpoints) table.push_back(*e);
  ByteWriter w;
  w.write_u32(kEndpoint);
  w.write_u32(*generation);
  w.write_bytes(encode_endpoints(table));
  for (size_t r = 0; r < members.size(); ++r) {
    reply(member_identity[r], wire::MessageType::kTable, static_cast<uint32_t>(members[r]),
          w.bytes());
  }
  endpoints_done = true;
}

ElasticRendezvousServer::ElasticRendezvousServer(const std::string& bind_host, int port,
                                                 ElasticRendezvousOptions options, JobAuth auth,
                                                 Logger& logger)
    : bind_host_(bind_host), options_(options), auth_(std::move(auth)), logger_(logger) {
  if (options_.slots < 1 || options_.min_workers < 1 || options_.min_workers > options_.slots ||
      options_.settle.count() < 0) {
    throw UsageError(fmt::format(
        "elastic rendezvous: need 1 <= min_workers ({}) <= slots ({}) and settle >= 0 ({} ms)",
        options_.min_workers, options_.slots, options_.settle.count()));
  }
  state_ = std::make_unique<State>(options_, logger_);
  CoordinatorSocket bound = bind_coordinator_socket(
      state_->context, "elastic coordinator", bind_host, port,
      static_cast<uint32_t>(options_.slots), kMaxPayload,
      [state = state_.get()](const wire::RejectedFrame& f) { state->on_dropped(f); }, auth_,
      logger_);
  state_->socket = std::move(bound.socket);
  port_ = bound.port;
  thread_ = std::jthread([this](std::stop_token stop) { serve(std::move(stop)); });
}

ElasticRendezvousServer::~ElasticRendezvousServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

std::string ElasticRendezvousServer::address() const {
  return coordinator_address(bind_host_, port_);
}

void ElasticRendezvousServer::set_alive(int slot, bool alive) {
  if (slot < 0 || slot >= options_.slots) {
    throw UsageError(
        fmt::format("elastic rendezvous: slot {} is outside 0..{}", slot, options_.slots - 1));
  }
  std::lock_guard lock(state_->mutex);
  const auto i = static_cast<size_t>(slot);
  state_->alive[i] = alive ? ++state_->started[i] : 0;
}

bool ElasticRendezvousServer::finish(int slot) {
  std::lock_guard lock(state_->mutex);
  const auto& members = state_->current_members;
  const auto it = std::find(members.begin(), members.end(), slot);
  if (it == members.end() || slot < 0 || slot >= options_.slots) return false;
  const uint64_t process = state_->current_processes[static_cast<size_t>(it - members.begin())];
  if (state_->alive[static_cast<size_t>(slot)] != process) return false;
  state_->finished = true;
  return true;
}

bool ElasticRendezvousServer::finished() const {
  std::lock_guard lock(state_->mutex);
  return state_->finished;
}

bool ElasticRendezvousServer::members_done() const {
  std::lock_guard lock(state_->mutex);
  if (!state_->finished) return false;
  for (size_t rank = 0; rank < state_->current_members.size(); ++rank) {
    const auto slot = static_cast<size_t>(state_->current_members[rank]);
    if (state_->alive[slot] == state_->current_processes[rank]) return false;
  }
  return true;
}

void ElasticRendezvousServer::stop(const std::string& reason) {
  std::lock_guard lock(state_->mutex);
  state_->stopped = reason.empty() ? std::string("the job is stopping") : reason;
}

std::optional<uint32_t> ElasticRendezvousServer::generation() const {
  std::lock_guard lock(state_->mutex);
  return state_->generation;
}

uint64_t ElasticRendezvousServer::dropped_frames() const { return state_->socket->dropped(); }

void ElasticRendezvousServer::serve(std::stop_token stop) {
  while (!stop.stop_requested()) {
    state_->upkeep(state_->view());
    if (auto frame = state_->socket->receive(Deadline::after(kServerSlice))) {
      state_->on_request(*frame);
    }
  }
}

}  // namespace dtrain::comm
