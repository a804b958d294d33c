#include "comm/transport/inproc_transport.h"

#include <chrono>
#include <cstring>

#include "core/error.h"

namespace dtrain::comm {

namespace {

std::string tag_text(uint64_t tag) { return fmt::format("{:#x}", tag); }

}  // namespace

InProcHub::InProcHub(int world_size) {
  if (world_size < 1) throw UsageError(fmt::format("InProcHub: world size {} < 1", world_size));
  mailboxes_.reserve(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) mailboxes_.push_back(std::make_unique<Mailbox>());
}

InProcHub::~InProcHub() = default;

std::unique_ptr<InProcTransport> InProcHub::transport(int rank) {
  if (rank < 0 || rank >= size()) {
    throw UsageError(fmt::format("InProcHub: rank {} outside world of size {}", rank, size()));
  }
  Mailbox& box = *mailboxes_[static_cast<size_t>(rank)];
  std::lock_guard lock(box.mutex);
  if (box.taken) throw UsageError(fmt::format("InProcHub: transport of rank {} taken twice", rank));
  box.taken = true;
  return std::unique_ptr<InProcTransport>(new InProcTransport(*this, rank));
}

void InProcHub::kill(int rank) {
  mailboxes_.at(static_cast<size_t>(rank))->dead.store(true);
  // Waiters block on their own mailbox and test the flag under its mutex:
  // notifying under that mutex cannot slip between their test and their wait.
  for (auto& box : mailboxes_) {
    std::lock_guard lock(box->mutex);
    box->arrived.notify_all();
  }
}

bool InProcHub::is_dead(int rank) const {
  return mailboxes_.at(static_cast<size_t>(rank))->dead.load();
}

void InProcHub::deliver(int from, int to, uint64_t tag, std::vector<std::byte> message) {
  Mailbox& box = *mailboxes_[static_cast<size_t>(to)];
  std::lock_guard lock(box.mutex);
  box.queues[{from, tag}].push_back(std::move(message));
  box.arrived.notify_all();
}

std::vector<std::byte> InProcHub::take(int from, int to, uint64_t tag, const std::string& what,
                                       Deadline deadline) {
  const auto started = Deadline::Clock::now();
  Mailbox& box = *mailboxes_[static_cast<size_t>(to)];
  std::unique_lock lock(box.mutex);
  for (;;) {
    auto it = box.queues.find({from, tag});
    if (it != box.queues.end() && !it->second.empty()) {
      std::vector<std::byte> message = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) box.queues.erase(it);
      return message;
    }
    if (box.dead.load()) throw CommError(to, what, fmt::format("rank {} was killed", to));
    if (!box.abort_reason.empty()) throw CommError(box.abort_culprit, what, box.abort_reason);
    if (is_dead(from)) {
      throw CommError(from, what, fmt::format("rank {} died (tag {})", from, tag_text(tag)));
    }
    if (deadline.expired()) {
      throw TimeoutError(
          from, what,
          std::chrono::duration_cast<std::chrono::milliseconds>(Deadline::Clock::now() - started),
          fmt::format("a message with tag {} from rank {}", tag_text(tag), from));
    }
    if (deadline.is_never()) {
      box.arrived.wait(lock);
    } else {
      box.arrived.wait_until(lock, deadline.at());
    }
  }
}

bool InProcHub::abort_from(int sender, int culprit, const std::string& reason) {
  {
    Mailbox& own = *mailboxes_[static_cast<size_t>(sender)];
    std::lock_guard lock(own.mutex);
    if (!own.abort_reason.empty()) return false;
  }
  const std::string notice = fmt::format("rank {} gave up on the group: {}", sender, reason);
  for (int r = 0; r < size(); ++r) {
    Mailbox& box = *mailboxes_[static_cast<size_t>(r)];
    if (r == sender || box.dead.load()) continue;
    std::lock_guard lock(box.mutex);
    if (!box.abort_reason.empty()) continue;
    box.abort_culprit = culprit;
    box.abort_reason = notice;
    box.arrived.notify_all();
  }
  return true;
}

void InProcTransport::abort(int culprit, const std::string& reason) noexcept {
  try {
    {
      std::lock_guard lock(failure_mutex_);
      if (failure_.empty()) failure_ = reason;
    }
    hub_.abort_from(rank_, culprit, reason);
  } catch (const std::exception&) {
    // Only allocation can fail here; the peers then learn by their deadlines.
  }
}

void InProcTransport::check_usable(int peer, const std::string& what) {
  {
    std::lock_guard lock(failure_mutex_);
    if (!failure_.empty()) {
      throw CommError(peer, what,
                      fmt::format("transport of rank {} failed earlier: {}", rank_, failure_));
    }
  }
  if (peer < 0 || peer >= size() || peer == rank_) {
    throw UsageError(fmt::format("{}: rank {} cannot address peer {} in a world of size {}", what,
                                 rank_, peer, size()));
  }
  if (hub_.is_dead(rank_)) {
    throw CommError(rank_, what, fmt::format("rank {} was killed", rank_));
  }
}

void InProcTransport::fail_and_rethrow() {
  try {
    throw;
  } catch (const CommError& e) {
    std::lock_guard lock(failure_mutex_);
    if (failure_.empty()) failure_ = e.what();
    throw;
  }
}

void InProcTransport::send(int peer, uint64_t tag, std::span<const std::byte> payload,
                           const std::string& what, Deadline /*deadline: never blocks*/) {
  check_usable(peer, what);
  try {
    if (hub_.is_dead(peer)) {
      throw CommError(peer, what, fmt::format("rank {} died (tag {})", peer, tag_text(tag)));
    }
  } catch (const CommError&) {
    fail_and_rethrow();
  }
  hub_.deliver(rank_, peer, tag, std::vector<std::byte>(payload.begin(), payload.end()));
}

std::vector<std::byte> InProcTransport::recv(int peer, uint64_t tag, const std::string& what,
                                             Deadline deadline) {
  check_usable(peer, what);
  try {
    return hub_.take(peer, rank_, tag, what, deadline);
  } catch (const CommError&) {
    fail_and_rethrow();
  }
}

void InProcTransport::recv_into(int peer, uint64_t tag, std::span<std::byte> out,
                                const std::string& what, Deadline deadline) {
  std::vector<std::byte> message = recv(peer, tag, what, deadline);
  if (message.size() != out.size()) {
    try {
      throw CommError(peer, what,
                      fmt::format("message of {} bytes (tag {}) does not fit the expected {} bytes",
                                  message.size(), tag_text(tag), out.size()));
    } catch (const CommError&) {
      fail_and_rethrow();
    }
  }
  if (!out.empty()) std::memcpy(out.data(), message.data(), out.size());
}

}  // namespace dtrain::comm
