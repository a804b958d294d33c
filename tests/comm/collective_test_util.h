// Helpers of the collective tests: ranks as threads over an InProcHub,
// integer-valued inputs whose sums are exact in float32 in any order, and a
// transport that counts what a rank sends and receives.
#pragma once

#include <algorithm>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/transport/inproc_transport.h"

namespace dtrain::comm::testing {

// Runs body(rank, transport) on `n` threads; rethrows the first rank's error.
inline void run_ranks(int n, const std::function<void(int, Transport&)>& body) {
  InProcHub hub(n);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        try {
          std::unique_ptr<InProcTransport> transport = hub.transport(r);
          body(r, *transport);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// Small integers in [-8, 8]: sums of up to 2^20 of them are exact.
inline float input_value(int rank, size_t i) {
  return static_cast<float>(static_cast<int>((static_cast<size_t>(rank) * 7 + i * 3 + i / 5) % 17) -
                            8);
}

inline std::vector<float> rank_input(int rank, size_t count) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = input_value(rank, i);
  return v;
}

inline std::vector<float> serial_reduce(int n, size_t count, ReduceOp op) {
  std::vector<float> out = rank_input(0, count);
  for (int r = 1; r < n; ++r) {
    const std::vector<float> in = rank_input(r, count);
    for (size_t i = 0; i < count; ++i)
      out[i] = op == ReduceOp::kMax ? std::max(out[i], in[i]) : out[i] + in[i];
  }
  if (op == ReduceOp::kMean) {
    for (float& x : out) x /= static_cast<float>(n);
  }
  return out;
}

// Forwards to `inner` and counts: a send as soon as it is called, a receive
// once it has returned; lead() is the most sends ever ahead of receives.
// One rank's thread uses it (as the transport it wraps).
class CountingTransport final : public Transport {
 public:
  explicit CountingTransport(Transport& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void send(int peer, uint64_t tag, std::span<const std::byte> payload, const std::string& what,
            Deadline deadline) override {
    count_send();
    inner_.send(peer, tag, payload, what, deadline);
  }
  void send_owned(int peer, uint64_t tag, OwnedBuffer payload, const std::string& what,
                  Deadline deadline) override {
    count_send();
    inner_.send_owned(peer, tag, std::move(payload), what, deadline);
  }
  void send_parts(int peer, uint64_t tag, std::span<const std::byte> head,
                  std::span<const std::byte> body, const std::string& what,
                  Deadline deadline) override {
    count_send();
    inner_.send_parts(peer, tag, head, body, what, deadline);
  }
  std::vector<std::byte> recv(int peer, uint64_t tag, const std::string& what,
                              Deadline deadline) override {
    std::vector<std::byte> message = inner_.recv(peer, tag, what, deadline);
    ++received_;
    return message;
  }
  void recv_into(int peer, uint64_t tag, std::span<std::byte> out, const std::string& what,
                 Deadline deadline) override {
    inner_.recv_into(peer, tag, out, what, deadline);
    ++received_;
  }
  void recv_visit(int peer, uint64_t tag, const std::string& what, Deadline deadline,
                  const MessageVisitor& use) override {
    inner_.recv_visit(peer, tag, what, deadline, use);
    ++received_;
  }
  void recv_parts(int peer, uint64_t tag, std::span<std::byte> head, std::span<std::byte> body,
                  const std::string& what, Deadline deadline,
                  const MessageVisitor& mismatch) override {
    inner_.recv_parts(peer, tag, head, body, what, deadline, mismatch);
    ++received_;
  }
  void abort(int culprit, const std::string& reason) noexcept override {
    inner_.abort(culprit, reason);
  }

  long long sends() const { return sent_; }
  long long lead() const { return lead_; }

 private:
  void count_send() {
    ++sent_;
    lead_ = std::max(lead_, sent_ - received_);
  }

  Transport& inner_;
  long long sent_ = 0;
  long long received_ = 0;
  long long lead_ = 0;
};

}  // namespace dtrain::comm::testing
