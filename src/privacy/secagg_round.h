// run_secagg_round: one whole secure-aggregation round (secagg.h) in memory,
// every client and the server in this thread, messages handed over as bytes,
// with chosen clients dropping out at chosen points. For tests and
// benchmarks; the federated simulation and the deployed server and client
// drive SecAggClient/SecAggServer over their own transport instead.
//
// Entropy: client u's secrets come from BLAKE2b(options.seed, u), so a run
// is reproducible; a deployment draws random_key() per client and round.
// Counters: the bytes of every message each client sent and received, the
// server's totals, and the seconds each client and the server spent in each
// phase (steady clock, this thread).
// Errors: UsageError for a bad configuration or inputs of different lengths.
// A round that fails (too few clients at a phase) is reported in the result
// (ok = false, failure = the server's CommError message), not thrown. A client
// that gives up (its CommError: too few neighbours left) counts as a drop.
// Thread safety: a pure function. Blocks only for its own computation.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "privacy/secagg.h"

namespace dtrain::privacy {

// Where a client stops taking part.
enum class SecAggDrop : uint8_t {
  kNever = 0,
  kBeforeAdvertise,   // never answers
  kAfterAdvertise,    // sent its keys, then gone (in U1, not U2)
  kAfterShareKeys,    // sent its encrypted shares, then gone (in U2, not U3)
  kAfterMaskedInput,  // sent y_u, then gone before the unmask request (in U3)
  kDuringUnmasking,   // got the unmask request and answered, but the answer is lost
};

struct SecAggRoundOptions {
  uint32_t round = 0;
  uint32_t threshold = 0;
  SecAggGraphKind graph = SecAggGraphKind::kFull;
  uint32_t degree = 0;  // SecAgg+ k; 0: recommended_degree(n)
  float clip = 1.0F;
  uint64_t seed = 0;  // graph relabelling and every client's entropy
  uint32_t min_survivors = 0;
};

struct SecAggRoundStats {
  std::vector<uint64_t> client_bytes_sent;      // per client
  std::vector<uint64_t> client_bytes_received;  // per client
  uint64_t server_bytes_received = 0;
  uint64_t server_bytes_sent = 0;
  // Per phase 0..3: the seconds of each client that worked in it (one entry
  // per such client, in id order) and the server's seconds (its receive_*
  // and finish_* calls of the phase).
  std::array<std::vector<double>, 4> client_seconds;
  std::array<double, 4> server_seconds{};
};

struct SecAggRoundResult {
  bool ok = false;
  std::string failure;             // the CommError's message when !ok
  std::vector<float> sum;          // when ok
  std::vector<uint32_t> included;  // U3, when ok
  SecAggRoundStats stats;
};

// inputs[u] is client u's vector; all of one length. The spans may alias
// (a benchmark gives every client the same buffer).
SecAggRoundResult run_secagg_round(std::span<const std::span<const float>> inputs,
                                   const SecAggRoundOptions& options,
                                   const std::map<uint32_t, SecAggDrop>& drops);
SecAggRoundResult run_secagg_round(std::span<const std::vector<float>> inputs,
                                   const SecAggRoundOptions& options,
                                   const std::map<uint32_t, SecAggDrop>& drops);

}  // namespace dtrain::privacy
