// ClientUpdate and the round's aggregation: what a client sends back after
// its local training, and the sample-weighted mean the server takes of the
// updates it accepts (McMahan et al. 2017, Algorithm 1):
//
//   delta = sum_k n_k (w_k - w) / sum_k n_k     over the accepted clients k
//
// Weights are flat float vectors in the model's state_dict() order (every
// parameter, then every buffer: fl/flat_model.h).
//
// Determinism: mean_delta() sums in ascending client id with double
// accumulators, whatever order the updates arrived in, so a round's result
// is bit-identical for any thread count or arrival order. Memory: the
// accepted updates are kept until mean_delta() (bounded by the clients of one
// round, never by K).
//
// Validation (add()): an update is rejected, counted and described, and the
// aggregate left unchanged, when its round is not this round (stale or from
// the future), its client id is outside [0, clients) or not one this round
// sampled, the client already reported this round, its size is not the
// model's, its sample count is not positive (or would overflow the round's
// total), or its loss or any value of its delta is not finite. Checks run in
// that order and the first failure is the reason, which names the client and
// the round (this aggregator's): "client 17, round 3: update has 1200
// values, the model has 199210". Whether a straggler's partial work is
// wanted is the caller's decision, not checked here.
// Constructor: UsageError for round < 0, clients < 1, model_size < 0, or a
// sampled id out of range or repeated.
// Thread safety: none; the caller serializes add(). Blocking: never.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dtrain::fl {

struct ClientUpdate {
  int64_t client = 0;
  int64_t round = 0;
  int64_t samples = 0;       // n_k: the aggregation weight (the client's samples)
  std::vector<float> delta;  // w_k - w, flat
  double loss = 0.0;         // mean training loss over the local steps
  int64_t steps = 0;         // local optimizer steps taken
  bool partial = false;      // a straggler's partial work
};

class RoundAggregator {
 public:
  // `sampled`: the client ids this round asked (any order, no duplicates).
  RoundAggregator(int64_t round, int64_t clients, int64_t model_size, std::vector<int64_t> sampled);

  // nullopt when accepted; else the reason it was rejected.
  std::optional<std::string> add(ClientUpdate update);

  int64_t round() const { return round_; }
  int64_t accepted() const { return static_cast<int64_t>(updates_.size()); }
  int64_t rejected() const { return rejected_; }
  // Sum of the accepted updates' n_k.
  int64_t samples() const;
  // The accepted client ids, ascending.
  std::vector<int64_t> accepted_clients() const;
  // Sample-weighted mean of the accepted updates' losses (NaN when none).
  double mean_loss() const;
  // The weighted mean delta; UsageError when nothing was accepted.
  std::vector<float> mean_delta() const;

 private:
  int64_t round_;
  int64_t clients_;
  int64_t model_size_;
  std::vector<int64_t> sampled_;  // sorted
  std::vector<ClientUpdate> updates_;
  int64_t rejected_ = 0;
};

}  // namespace dtrain::fl
