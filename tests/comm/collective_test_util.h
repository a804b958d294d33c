// Helpers of the collective tests: ranks as threads over an InProcHub,
// integer-valued inputs whose sums are exact in float32 in any order, and a
// transport that counts what a rank sends and receives, and the check that a
// count mismatch fails every rank naming both calls.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/transport/inproc_transport.h"
#include "core/error.h"

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

// Runs an allreduce of `count` floats (one more on `odd_rank`) on `n` ranks
// with `options` and expects every rank to fail naming the mismatch and both
// calls, "allreduce #1 (<count> floats, sum)" and "(<count + 1> ...)".
inline void expect_count_mismatch_named_everywhere(int n, size_t count, int odd_rank,
                                                   const CommunicatorOptions& options) {
  std::vector<std::string> errors(static_cast<size_t>(n));
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options);
    std::vector<float> data(rank == odd_rank ? count + 1 : count, 1.0f);
    try {
      comm.allreduce(data, ReduceOp::kSum);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  });
  for (int r = 0; r < n; ++r) {
    const std::string& what = errors[static_cast<size_t>(r)];
    EXPECT_NE(what.find("does not match"), std::string::npos) << "rank " << r << ": " << what;
    for (const size_t c : {count, count + 1}) {
      EXPECT_NE(what.find("allreduce #1 (" + std::to_string(c) + " floats, sum)"),
                std::string::npos)
          << "rank " << r << ": " << what;
    }
  }
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

// Messages rank 0 sends for one allreduce of `count` floats over `n` ranks
// with `options`, checking the sum against serial_reduce on every rank.
inline long long messages_per_allreduce(int n, size_t count, const CommunicatorOptions& options) {
  std::vector<long long> sends(static_cast<size_t>(n), -1);
  run_ranks(n, [&](int rank, Transport& inner) {
    CountingTransport transport(inner);
    Communicator comm(transport, options);
    std::vector<float> data = rank_input(rank, count);
    comm.allreduce(data, ReduceOp::kSum);
    EXPECT_EQ(data, serial_reduce(n, count, ReduceOp::kSum));
    sends[static_cast<size_t>(rank)] = transport.sends();
  });
  return sends[0];
}

// The same with the size limit `limit` of CommunicatorOptions set to
// `bytes`, one message per block (chunk_bytes far above it).
inline long long messages_per_allreduce(int n, size_t count, size_t CommunicatorOptions::*limit,
                                        size_t bytes) {
  CommunicatorOptions options;
  options.*limit = bytes;
  options.chunk_bytes = size_t{64} << 20;
  return messages_per_allreduce(n, count, options);
}

}  // namespace dtrain::comm::testing
