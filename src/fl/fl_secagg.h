// Secure aggregation in the deployed federated mode (docs/fl-deploy.md,
// "Secure aggregation"): the settings FlServer and FlClient share, and the
// two conversions between a ClientUpdate and SecAgg's vectors.
//
// With FlSecAggOptions::enabled, a deployed round runs the four phases of
// privacy/secagg.h between the server and its sampled clients over the
// job's authenticated frames (fl/fl_protocol.h kSecAggSetup, kSecAggBroadcast,
// kSecAggAnswer). The server learns the sum of the survivors' masked vectors
// and nothing of any single update.
//
// What a client masks (secagg_masked_input): its delta, each value clipped
// to [-clip, clip] by the fixed-point code (privacy/secagg_quantize.h). What
// the server applies (secagg_mean_delta): the unmasked sum divided by the
// number of included clients, an unweighted mean: a sample-weighted mean
// would need the weights inside the masked vector. The clients' sample
// counts and losses travel in the clear beside the masked vector (the
// round's loss report).
//
// Deadlines: phase p (0: the local training and the key advertisement, 1:
// the encrypted shares, 2: the masked input, 3: the unmasking shares) ends
// at the round's start plus (phase_shares[0] + ... + phase_shares[p]) times
// fl.round_timeout_s, so time an early phase leaves goes to the later ones
// and the round never outlasts its timeout.
//
// Thread safety: values and pure functions. Errors: UsageError from
// validate() for shares that are not positive or sum to more than 1, or a
// clip that is not positive.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "fl/fl_protocol.h"
#include "fl/update.h"
#include "privacy/secagg.h"

namespace dtrain::fl {

struct FlSecAggOptions {
  bool enabled = false;
  privacy::SecAggGraphKind graph = privacy::SecAggGraphKind::kFull;
  uint32_t degree = 0;     // SecAgg+ k; 0: recommended_degree(m)
  uint32_t threshold = 0;  // Shamir t; 0: a majority of each client's holders
  float clip = 1.0F;
  std::array<double, 4> phase_shares{0.7, 0.1, 0.1, 0.1};
};

void validate(const FlSecAggOptions& options);

// The round's SecAggConfig for m sampled clients (threshold 0 becomes
// floor(holders / 2) + 1; a threshold above the holders becomes the holders).
privacy::SecAggConfig secagg_config(const FlSecAggOptions& options, uint32_t session,
                                    uint32_t clients, uint64_t graph_seed, uint64_t vector_length);
// The config a client rebuilds from the server's setup.
privacy::SecAggConfig secagg_config(const FlSecAggSetup& setup);

// What the client hands SecAggClient::masked_input: its delta.
std::span<const float> secagg_masked_input(const ClientUpdate& update);
// The server's mean delta from the unmasked sum of `included` clients.
std::vector<float> secagg_mean_delta(std::span<const float> sum, size_t included);

}  // namespace dtrain::fl
