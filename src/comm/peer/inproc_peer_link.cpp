#include "comm/peer/inproc_peer_link.h"

#include <algorithm>
#include <exception>

#include "core/error.h"

namespace dtrain::comm {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds since(Clock::time_point started) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
}

const char* status_text(bool left) { return left ? "left (said goodbye)" : "lost"; }

}  // namespace

// One incarnation of one rank. Every method forwards to the hub under its
// lock; the hub outlives the link (see the header).
class InProcPeerLink final : public PeerLink {
 public:
  InProcPeerLink(InProcPeerHub& hub, int rank, uint64_t incarnation)
      : hub_(hub), rank_(rank), incarnation_(incarnation) {}
  InProcPeerLink(const InProcPeerLink&) = delete;
  InProcPeerLink& operator=(const InProcPeerLink&) = delete;
  ~InProcPeerLink() override { leave(); }

  int rank() const override { return rank_; }
  int size() const override { return hub_.size(); }

  void post(int peer, uint32_t channel, uint64_t step, std::span<const std::byte> payload,
            const std::string& what, Deadline deadline) override;
  std::vector<std::byte> receive(int peer, uint32_t channel, uint64_t step, const std::string& what,
                                 Deadline deadline) override;
  std::optional<std::vector<std::byte>> try_receive(int peer, uint32_t channel,
                                                    uint64_t step) override;
  std::vector<std::byte> call(int peer, uint32_t service, std::span<const std::byte> request,
                              const std::string& what, Deadline deadline) override;
  void set_handler(Handler handler) override;
  void set_listener(Listener listener) override;
  bool alive(int peer) const override;
  uint64_t bytes_sent() const override;
  void leave() noexcept override;

 private:
  using Slot = InProcPeerHub::Slot;
  using Status = InProcPeerHub::Status;

  // Throws unless this incarnation may still act (not killed, replaced or
  // left) and `peer` is another rank of the world. Requires the hub's lock.
  void check_usable_locked(int peer, const std::string& what) const;
  // Throws PeerLostError when `peer` is lost or left. Requires the hub's lock.
  void check_peer_alive_locked(int peer, const std::string& what) const;
  // The queued post from `peer` on (channel, step), discarding earlier
  // steps; nullopt when none. Requires the hub's lock.
  std::optional<std::vector<std::byte>> take_locked(int peer, uint32_t channel, uint64_t step);
  // Throws PeerLostError when `peer` is gone and nothing from it is queued
  // or in flight to this rank. Requires the hub's lock.
  void check_drained_locked(int peer, uint32_t channel, uint64_t step,
                            const std::string& what) const;

  InProcPeerHub& hub_;
  const int rank_;
  const uint64_t incarnation_;
};

void InProcPeerLink::check_usable_locked(int peer, const std::string& what) const {
  const Slot& self = *hub_.slots_[static_cast<size_t>(rank_)];
  if (self.incarnation != incarnation_) {
    throw CommError(rank_, what, fmt::format("rank {} was replaced (hub.rejoin)", rank_));
  }
  if (self.status == Status::kLost) {
    throw CommError(rank_, what, fmt::format("rank {} was killed (hub.kill)", rank_));
  }
  if (self.status == Status::kLeft) {
    throw CommError(rank_, what, fmt::format("rank {} left the job (leave())", rank_));
  }
  if (peer < 0 || peer >= size() || peer == rank_) {
    throw UsageError(fmt::format("{}: peer {} is not another rank of a world of {} (rank {})", what,
                                 peer, size(), rank_));
  }
}

void InProcPeerLink::check_peer_alive_locked(int peer, const std::string& what) const {
  const Slot& other = *hub_.slots_[static_cast<size_t>(peer)];
  if (other.status != Status::kAlive) {
    throw PeerLostError(
        peer, what, fmt::format("rank {} is {}", peer, status_text(other.status == Status::kLeft)));
  }
}

std::optional<std::vector<std::byte>> InProcPeerLink::take_locked(int peer, uint32_t channel,
                                                                  uint64_t step) {
  Slot& self = *hub_.slots_[static_cast<size_t>(rank_)];
  auto queue = self.inbox.find({peer, channel});
  if (queue == self.inbox.end()) return std::nullopt;
  auto& by_step = queue->second;
  by_step.erase(by_step.begin(), by_step.lower_bound(step));
  std::optional<std::vector<std::byte>> message;
  if (!by_step.empty() && by_step.begin()->first == step) {
    message = std::move(by_step.begin()->second);
    by_step.erase(by_step.begin());
  }
  if (by_step.empty()) self.inbox.erase(queue);
  return message;
}

void InProcPeerLink::check_drained_locked(int peer, uint32_t channel, uint64_t step,
                                          const std::string& what) const {
  const Slot& other = *hub_.slots_[static_cast<size_t>(peer)];
  if (other.status == Status::kAlive) return;
  if (hub_.in_flight_[static_cast<size_t>(peer)][static_cast<size_t>(rank_)] > 0) return;
  throw PeerLostError(peer, what,
                      fmt::format("rank {} is {} and sent nothing more on channel {} step {}", peer,
                                  status_text(other.status == Status::kLeft), channel, step));
}

void InProcPeerLink::post(int peer, uint32_t channel, uint64_t step,
                          std::span<const std::byte> payload, const std::string& what,
                          Deadline /*deadline: posting never blocks here*/) {
  const auto delay = hub_.delay_for(rank_, peer);
  std::lock_guard lock(hub_.mutex_);
  check_usable_locked(peer, what);
  check_peer_alive_locked(peer, what);
  InProcPeerHub::Message message;
  message.kind = InProcPeerHub::Kind::kPost;
  message.from = rank_;
  message.to = peer;
  message.from_incarnation = incarnation_;
  message.to_incarnation = hub_.slot(peer).incarnation;
  message.channel = channel;
  message.number = step;
  message.payload.assign(payload.begin(), payload.end());
  hub_.slot(rank_).bytes_sent += payload.size() + InProcPeerHub::kNominalHeaderBytes;
  hub_.send_locked(std::move(message), delay);
}

std::vector<std::byte> InProcPeerLink::receive(int peer, uint32_t channel, uint64_t step,
                                               const std::string& what, Deadline deadline) {
  const auto started = Clock::now();
  std::unique_lock lock(hub_.mutex_);
  for (;;) {
    check_usable_locked(peer, what);
    if (auto message = take_locked(peer, channel, step)) return std::move(*message);
    check_drained_locked(peer, channel, step, what);
    if (deadline.expired()) {
      throw TimeoutError(
          peer, what, since(started),
          fmt::format("the message on channel {} step {} from rank {}", channel, step, peer));
    }
    hub_.changed_.wait_until(
        lock, deadline.is_never() ? Clock::now() + std::chrono::hours(1) : deadline.at());
  }
}

std::optional<std::vector<std::byte>> InProcPeerLink::try_receive(int peer, uint32_t channel,
                                                                  uint64_t step) {
  const std::string what = fmt::format("try_receive channel {} step {}", channel, step);
  std::lock_guard lock(hub_.mutex_);
  check_usable_locked(peer, what);
  if (auto message = take_locked(peer, channel, step)) return message;
  check_drained_locked(peer, channel, step, what);
  return std::nullopt;
}

std::vector<std::byte> InProcPeerLink::call(int peer, uint32_t service,
                                            std::span<const std::byte> request,
                                            const std::string& what, Deadline deadline) {
  const auto started = Clock::now();
  const auto delay = hub_.delay_for(rank_, peer);
  std::unique_lock lock(hub_.mutex_);
  check_usable_locked(peer, what);
  check_peer_alive_locked(peer, what);
  const uint64_t id = hub_.next_call_id_++;
  const uint64_t peer_incarnation = hub_.slot(peer).incarnation;
  Slot& self = hub_.slot(rank_);
  self.calls.emplace(id, InProcPeerHub::PendingCall{});
  InProcPeerHub::Message message;
  message.kind = InProcPeerHub::Kind::kRequest;
  message.from = rank_;
  message.to = peer;
  message.from_incarnation = incarnation_;
  message.to_incarnation = peer_incarnation;
  message.channel = service;
  message.number = id;
  message.payload.assign(request.begin(), request.end());
  self.bytes_sent += request.size() + InProcPeerHub::kNominalHeaderBytes;
  hub_.send_locked(std::move(message), delay);
  for (;;) {
    // A replaced or killed caller has lost its pending calls with its slot.
    check_usable_locked(peer, what);
    auto pending = self.calls.find(id);
    DTRAIN_CHECK(pending != self.calls.end(), "call {} of rank {} vanished", id, rank_);
    if (pending->second.done) {
      InProcPeerHub::PendingCall done = std::move(pending->second);
      self.calls.erase(pending);
      if (!done.error.empty()) {
        throw CommError(
            peer, what,
            fmt::format("rank {}'s handler for service {} failed: {}", peer, service, done.error));
      }
      return std::move(done.reply);
    }
    const Slot& other = hub_.slot(peer);
    if (other.incarnation != peer_incarnation || other.status != Status::kAlive) {
      self.calls.erase(pending);
      throw PeerLostError(peer, what,
                          fmt::format("rank {} is {} before it answered service {}", peer,
                                      other.incarnation != peer_incarnation
                                          ? "replaced"
                                          : status_text(other.status == Status::kLeft),
                                      service));
    }
    if (deadline.expired()) {
      self.calls.erase(pending);
      throw TimeoutError(peer, what, since(started),
                         fmt::format("rank {}'s reply to service {}", peer, service));
    }
    hub_.changed_.wait_until(
        lock, deadline.is_never() ? Clock::now() + std::chrono::hours(1) : deadline.at());
  }
}

void InProcPeerLink::set_handler(Handler handler) {
  std::lock_guard lock(hub_.mutex_);
  if (hub_.slot(rank_).incarnation == incarnation_) hub_.slot(rank_).handler = std::move(handler);
}

void InProcPeerLink::set_listener(Listener listener) {
  std::lock_guard lock(hub_.mutex_);
  if (hub_.slot(rank_).incarnation == incarnation_) hub_.slot(rank_).listener = std::move(listener);
}

bool InProcPeerLink::alive(int peer) const {
  if (peer < 0 || peer >= size()) return false;
  std::lock_guard lock(hub_.mutex_);
  return hub_.slots_[static_cast<size_t>(peer)]->status == Status::kAlive;
}

uint64_t InProcPeerLink::bytes_sent() const {
  std::lock_guard lock(hub_.mutex_);
  const Slot& self = *hub_.slots_[static_cast<size_t>(rank_)];
  return self.incarnation == incarnation_ ? self.bytes_sent : 0;
}

void InProcPeerLink::leave() noexcept {
  std::lock_guard lock(hub_.mutex_);
  Slot& self = hub_.slot(rank_);
  if (self.incarnation != incarnation_ || self.status != Status::kAlive) return;
  self.status = Status::kLeft;
  hub_.announce_locked(rank_, PeerEvent::kLeft, fmt::format("rank {} said goodbye", rank_));
  hub_.changed_.notify_all();
}

InProcPeerHub::InProcPeerHub(int world_size) {
  if (world_size < 1) {
    throw UsageError(fmt::format("InProcPeerHub: world size {} < 1", world_size));
  }
  const auto n = static_cast<size_t>(world_size);
  in_flight_.assign(n, std::vector<int>(n, 0));
  last_release_.assign(n, std::vector<Clock::time_point>(n));
  slots_.reserve(n);
  for (size_t r = 0; r < n; ++r) slots_.push_back(std::make_unique<Slot>());
  for (int r = 0; r < world_size; ++r) {
    slot(r).service = std::jthread([this, r](std::stop_token stop) { run_service(stop, r); });
  }
  delivery_ = std::jthread([this](std::stop_token stop) { run_delivery(stop); });
}

InProcPeerHub::~InProcPeerHub() {
  // A service thread may touch any slot (a reply): stop and join all of them
  // before any slot is destroyed.
  delivery_.request_stop();
  for (auto& s : slots_) s->service.request_stop();
  if (delivery_.joinable()) delivery_.join();
  for (auto& s : slots_) {
    if (s->service.joinable()) s->service.join();
  }
}

std::unique_ptr<PeerLink> InProcPeerHub::make_link(int rank, uint64_t incarnation) {
  return std::make_unique<InProcPeerLink>(*this, rank, incarnation);
}

std::unique_ptr<PeerLink> InProcPeerHub::link(int rank) {
  if (rank < 0 || rank >= size()) {
    throw UsageError(fmt::format("InProcPeerHub: rank {} outside world of size {}", rank, size()));
  }
  std::lock_guard lock(mutex_);
  Slot& s = slot(rank);
  if (s.taken) {
    throw UsageError(
        fmt::format("InProcPeerHub: link of rank {} taken twice (use rejoin())", rank));
  }
  s.taken = true;
  return make_link(rank, s.incarnation);
}

void InProcPeerHub::kill(int rank) {
  if (rank < 0 || rank >= size()) {
    throw UsageError(fmt::format("InProcPeerHub: rank {} outside world of size {}", rank, size()));
  }
  std::lock_guard lock(mutex_);
  Slot& s = slot(rank);
  if (s.status == Status::kLost) return;
  const bool was_alive = s.status == Status::kAlive;
  s.status = Status::kLost;
  if (was_alive) {
    announce_locked(rank, PeerEvent::kLost, fmt::format("rank {} was killed (hub.kill)", rank));
  }
  changed_.notify_all();
}

std::unique_ptr<PeerLink> InProcPeerHub::rejoin(int rank) {
  if (rank < 0 || rank >= size()) {
    throw UsageError(fmt::format("InProcPeerHub: rank {} outside world of size {}", rank, size()));
  }
  std::lock_guard lock(mutex_);
  Slot& s = slot(rank);
  ++s.incarnation;
  s.status = Status::kAlive;
  s.taken = true;
  s.inbox.clear();
  s.calls.clear();
  s.handler = nullptr;
  s.listener = nullptr;
  s.bytes_sent = 0;
  s.tasks.clear();
  for (auto& other : slots_) {
    std::erase_if(other->inbox, [rank](const auto& queue) { return queue.first.first == rank; });
  }
  announce_locked(rank, PeerEvent::kJoined,
                  fmt::format("rank {} rejoined (incarnation {})", rank, s.incarnation));
  changed_.notify_all();
  return make_link(rank, s.incarnation);
}

void InProcPeerHub::set_delay(Delay delay) {
  std::lock_guard lock(delay_mutex_);
  delay_ = std::move(delay);
}

std::chrono::microseconds InProcPeerHub::delay_for(int from, int to) {
  Delay delay;
  {
    std::lock_guard lock(delay_mutex_);
    delay = delay_;
  }
  if (!delay || to < 0 || to >= size()) return std::chrono::microseconds(0);
  return std::max(delay(from, to), std::chrono::microseconds(0));
}

void InProcPeerHub::send_locked(Message message, std::chrono::microseconds delay) {
  const auto from = static_cast<size_t>(message.from);
  const auto to = static_cast<size_t>(message.to);
  // Without a delay a message still goes through the schedule when an
  // earlier one between the same pair is in flight (order per pair).
  if (delay.count() == 0 && in_flight_[from][to] == 0) {
    arrive_locked(std::move(message));
    return;
  }
  const auto at = std::max(Clock::now() + delay, last_release_[from][to]);
  last_release_[from][to] = at;
  ++in_flight_[from][to];
  scheduled_.push(Scheduled{at, next_order_++, std::move(message)});
  schedule_changed_.notify_all();
}

void InProcPeerHub::arrive_locked(Message message) {
  Slot& receiver = slot(message.to);
  // Dropped: to or from an incarnation that has been replaced, or to a rank
  // that is gone (a dead process reads nothing).
  if (receiver.incarnation != message.to_incarnation || receiver.status != Status::kAlive) return;
  if (slot(message.from).incarnation != message.from_incarnation) return;
  switch (message.kind) {
    case Kind::kPost:
      receiver.inbox[{message.from, message.channel}].emplace(message.number,
                                                              std::move(message.payload));
      changed_.notify_all();
      break;
    case Kind::kRequest:
      receiver.tasks.push_back(
          [this, request = std::move(message)]() mutable { serve(std::move(request)); });
      receiver.task_ready.notify_all();
      break;
    case Kind::kReply: {
      auto pending = receiver.calls.find(message.number);
      if (pending == receiver.calls.end()) return;  // the caller gave up
      pending->second.done = true;
      pending->second.reply = std::move(message.payload);
      pending->second.error = std::move(message.error);
      changed_.notify_all();
      break;
    }
  }
}

void InProcPeerHub::serve(Message request) {
  PeerLink::Handler handler;
  {
    std::lock_guard lock(mutex_);
    const Slot& self = slot(request.to);
    if (self.incarnation != request.to_incarnation || self.status != Status::kAlive) return;
    handler = self.handler;
  }
  Message reply;
  reply.kind = Kind::kReply;
  reply.from = request.to;
  reply.to = request.from;
  reply.from_incarnation = request.to_incarnation;
  reply.to_incarnation = request.from_incarnation;
  reply.number = request.number;
  if (!handler) {
    reply.error = fmt::format("rank {} has no handler set", request.to);
  } else {
    try {
      reply.payload = handler(request.from, request.channel, request.payload);
    } catch (const std::exception& e) {
      reply.error = e.what();
      if (reply.error.empty()) reply.error = "unknown error";
    } catch (...) {
      reply.error = "unknown exception";
    }
  }
  const auto delay = delay_for(reply.from, reply.to);
  std::lock_guard lock(mutex_);
  Slot& self = slot(reply.from);
  // A handler that outlived its rank (killed or replaced meanwhile) sends nothing.
  if (self.incarnation != reply.from_incarnation || self.status != Status::kAlive) return;
  self.bytes_sent += reply.payload.size() + kNominalHeaderBytes;
  send_locked(std::move(reply), delay);
}

void InProcPeerHub::announce_locked(int peer, PeerEvent event, const std::string& reason) {
  for (int r = 0; r < size(); ++r) {
    if (r == peer) continue;
    Slot& s = slot(r);
    if (s.status != Status::kAlive) continue;
    s.tasks.push_back([this, r, incarnation = s.incarnation, peer, event, reason] {
      PeerLink::Listener listener;
      {
        std::lock_guard lock(mutex_);
        const Slot& self = slot(r);
        if (self.incarnation != incarnation || self.status != Status::kAlive) return;
        listener = self.listener;
      }
      if (listener) listener(peer, event, reason);
    });
    s.task_ready.notify_all();
  }
}

void InProcPeerHub::run_service(std::stop_token stop, int rank) {
  std::unique_lock lock(mutex_);
  Slot& s = slot(rank);
  for (;;) {
    if (!s.task_ready.wait(lock, stop, [&s] { return !s.tasks.empty(); })) return;
    std::function<void()> task = std::move(s.tasks.front());
    s.tasks.pop_front();
    lock.unlock();
    task();
    lock.lock();
  }
}

void InProcPeerHub::run_delivery(std::stop_token stop) {
  std::unique_lock lock(mutex_);
  while (!stop.stop_requested()) {
    if (scheduled_.empty()) {
      schedule_changed_.wait(lock, stop, [this] { return !scheduled_.empty(); });
      continue;
    }
    const auto at = scheduled_.top().at;
    if (Clock::now() < at) {
      schedule_changed_.wait_until(
          lock, stop, at, [this, at] { return !scheduled_.empty() && scheduled_.top().at < at; });
      continue;
    }
    // priority_queue::top() is const: copy out the message, then pop.
    Message message = scheduled_.top().message;
    scheduled_.pop();
    --in_flight_[static_cast<size_t>(message.from)][static_cast<size_t>(message.to)];
    arrive_locked(std::move(message));
    // Waiters check in_flight_ (a lost peer's last message).
    changed_.notify_all();
  }
}

}  // namespace dtrain::comm
