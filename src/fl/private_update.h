// What a federated client sends and what the server applies when a round is
// private: DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning
// Differentially Private Recurrent Language Models", ICLR) and secure
// aggregation (privacy/secagg.h). The simulation (fl/simulation.cpp) and
// the deployed client and server use the same functions, so both compute
// the same estimator. docs/federated.md, "Privacy in federated rounds",
// states the estimator and the trust model.
//
// The estimator. With DP (config.dp(): dp_clip S > 0), every client weighs
// 1 (uniform weights, McMahan et al.'s w_k capped at 1 with all w_k = 1),
// clips its delta to L2 norm S, and the server releases
//   delta = (sum_{k in round} clip_S(Delta_k) + N(0, z^2 S^2 I)) / m,
// m = clients_per_round() (the fixed denominator q W of McMahan et al. with
// W = K): one client changes the sum by at most S, so the noise is z times
// the sensitivity. Without DP, client k weighs n_k / n_bar (n_bar: the mean
// number of samples a client holds, public like every n_k) and the server
// divides the weighted sum by the included clients' weights: FedAvg's
// sample-weighted mean.
//
// Where the noise is added. Without secure aggregation the server adds all
// of it (secagg_output). With secure aggregation the server never sees a
// single update, so each of the m planned clients adds N(0, z^2 S^2 / m) to
// its input (secagg_input) and the sum of m inputs carries z^2 S^2. When only
// r < m masked inputs reach the sum (drops after phase 1), the server adds
// the missing N(0, z^2 S^2 (m - r) / m) before it releases the model: the
// released model always carries the full noise; the honest-but-curious
// server's own view of the unmasked sum carries r / m of it.
//
// Thread safety: pure functions of their arguments (and the caller's Rng).
// Errors: UsageError for sizes that do not match or a round without clients.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"
#include "fl/fl_config.h"
#include "fl/update.h"
#include "privacy/secagg.h"
#include "privacy/secagg_round.h"

namespace dtrain::fl {

// Client k's weight in the masked sum: 1 with DP, else samples / mean_samples.
double client_weight(const FlConfig& config, int64_t samples, double mean_samples);

// The L2 norm of `values` (double accumulation).
double l2_norm(std::span<const float> values);

// Scales `delta` in place so that its L2 norm is at most `clip` (> 0);
// returns the norm before clipping.
double clip_l2(std::span<float> delta, double clip);

// What client `update.client` contributes to the round's sum (and, with
// secure aggregation, masks): its delta clipped to S (with DP), times its
// weight, plus its share of the noise when the noise is distributed (DP and
// secure aggregation: N(0, z^2 S^2 / clients_in_round) per value, from
// `noise_rng`, the client's own stream). `clients_in_round` is the planned m.
std::vector<float> secagg_input(const ClientUpdate& update, const FlConfig& config,
                                int64_t clients_in_round, double mean_samples, Rng& noise_rng);

// The mean delta the server applies, from the unmasked sum of the included
// clients' inputs. `clients_in_round`: the planned m; `included`: how many
// inputs are in the sum; `included_weight`: the sum of their client_weight().
// With DP the server adds the noise not yet in the sum (all of it without
// secure aggregation; (m - included) / m of it with) from `server_rng`, and
// divides by m; without DP it divides by included_weight (> 0).
std::vector<float> secagg_output(std::span<const float> unmasked_sum, const FlConfig& config,
                                 int64_t clients_in_round, int64_t included, double included_weight,
                                 Rng& server_rng);

// The Shamir threshold for `holders` holders: config.secagg_threshold, or
// floor(holders / 2) + 1 when it is 0 (above half, Bonawitz et al.'s
// setting), at most `holders`.
uint32_t secagg_threshold(const FlConfig& config, uint32_t holders);

// The secure-aggregation settings of round `round` among `n` clients (ids
// 0..n-1 in the round: the sampled clients in ascending order) with vectors
// of `vector_length` values: the graph, the threshold above, the clip c, and
// a public graph seed drawn from (seed, round). min_survivors is the
// threshold. UsageError when privacy::validate() refuses the result.
privacy::SecAggConfig secagg_config(const FlConfig& config, int64_t n, uint64_t seed, int64_t round,
                                    uint64_t vector_length);

// A simulated client's drop point in a secure round, for a client whose fate
// (fl/sampling.h) is kDropped: one of kBeforeAdvertise (never answers),
// kAfterAdvertise, kAfterShareKeys, kAfterMaskedInput, equally likely, drawn
// from the client's own stream for (seed, round), so a round replays.
privacy::SecAggDrop secagg_drop_point(uint64_t seed, int64_t round, int64_t client);

// The generators of the DP noise: a client's share (its own stream) and the
// server's. Domain-separated from sampling's streams.
Rng client_noise_rng(uint64_t seed, int64_t round, int64_t client);
Rng server_noise_rng(uint64_t seed, int64_t round);

}  // namespace dtrain::fl
