// Helpers of the collective tests: ranks as threads over an InProcHub, and
// integer-valued inputs whose sums are exact in float32 in any order.
#pragma once

#include <exception>
#include <functional>
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

}  // namespace dtrain::comm::testing
