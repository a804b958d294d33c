// Junk for receivers of dtrain frames (issue #18's flood): messages that an
// outsider on the network can send to a coordinator or a ps server, and a
// Logger that keeps every line so that a test can count them.
//
// junk_message(i, ...) cycles through four kinds: random bytes in a header
// and a payload part, a well-formed frame of another job, a frame signed
// with another secret (a bad MAC), a one-part message. Header-only; needs
// comm (ZeroMQ, the wire format).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/wire.h"
#include "core/deadline.h"
#include "core/log.h"
#include "core/rng.h"

namespace dtrain::testing {

// The parts of junk message `i` for a receiver of job `job` (type `type`,
// sender `sender`, receiver `receiver` where a header is well-formed).
inline std::vector<std::vector<std::byte>> junk_message(uint64_t i, const std::string& job,
                                                        comm::wire::MessageType type,
                                                        uint32_t sender, uint32_t receiver) {
  Rng rng(i + 1);
  auto random_bytes = [&](size_t n) {
    std::vector<std::byte> out(n);
    for (auto& b : out) b = static_cast<std::byte>(rng.below(256));
    return out;
  };
  const std::vector<std::byte> payload = random_bytes(24);
  comm::wire::FrameHeader h;
  h.type = type;
  h.sender = sender;
  h.receiver = receiver;
  h.sequence = i;
  switch (i % 4) {
    case 0:
      return {random_bytes(comm::wire::kHeaderBytes), payload};
    case 1: {
      const comm::JobAuth other(job + "-another-job", "");
      h.job_id = other.job_id();
      const auto head = comm::wire::encode_header(h, payload, other, true);
      return {{head.begin(), head.end()}, payload};
    }
    case 2: {
      const comm::JobAuth forger(job, "a guessed secret");
      h.job_id = forger.job_id();
      const auto head = comm::wire::encode_header(h, payload, forger, true);
      return {{head.begin(), head.end()}, payload};
    }
    default:
      return {random_bytes(40)};
  }
}

// Sends `count` junk messages through `socket` (a DEALER or PUSH connected
// to the receiver).
inline void send_junk(zmq::socket_t& socket, uint64_t count, const std::string& job,
                      comm::wire::MessageType type, uint32_t sender, uint32_t receiver) {
  for (uint64_t i = 0; i < count; ++i) {
    const auto parts = junk_message(i, job, type, sender, receiver);
    for (size_t p = 0; p < parts.size(); ++p) {
      socket.send(zmq::const_buffer(parts[p].data(), parts[p].size()),
                  p + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
}

// A Logger whose lines are kept; wait_for_line() waits (on a condition
// variable, with a deadline) until a line containing a text was logged.
class LineLog {
 public:
  LineLog()
      : logger_(LogLevel::kInfo, [this](LogLevel, std::string_view line) {
          {
            std::lock_guard lock(mutex_);
            lines_.emplace_back(line);
          }
          cv_.notify_all();
        }) {}
  Logger& logger() { return logger_; }
  bool wait_for_line(const std::string& text, Deadline deadline) {
    std::unique_lock lock(mutex_);
    return cv_.wait_until(lock, deadline.at(), [&] { return count_locked(text) > 0; });
  }
  // Lines containing `text`.
  size_t count(const std::string& text) {
    std::lock_guard lock(mutex_);
    return count_locked(text);
  }
  size_t size() {
    std::lock_guard lock(mutex_);
    return lines_.size();
  }
  std::string all() {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& line : lines_) out += line + "\n";
    return out;
  }

 private:
  size_t count_locked(const std::string& text) const {
    size_t n = 0;
    for (const auto& line : lines_) n += line.find(text) != std::string::npos ? 1 : 0;
    return n;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
  Logger logger_;
};

}  // namespace dtrain::testing
