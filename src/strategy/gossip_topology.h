// Gossip topologies and their mixing weights (docs/gossip.md).
//
// A topology says, for worker i of N at step t, whose models i mixes in (its
// in-neighbours) and with which weights: the row i of a mixing matrix W_t,
// x_i <- sum_j W_t[i][j] x_j. Every W_t is doubly stochastic (rows and
// columns sum to 1), so the average of the models is kept by mixing.
//
// Kinds ("distributed.gossip.topology"):
//  - ring: i +- 1;
//  - torus: a 2-D torus of R x C = N workers (R <= C, the most square
//    factorisation; a prime N is a ring), i's neighbours up, down, left, right;
//  - full: every other worker;
//  - exponential: the static exponential graph, i +- 2^k for 2^k < N
//    (undirected);
//  - one-peer-exponential: at step t, i mixes with one peer: it receives from
//    i - 2^k and sends to i + 2^k (mod N), k = t mod ceil(log2 N), weights
//    1/2 and 1/2. For N a power of two, log2 N steps average exactly (Ying et
//    al. 2021; BlueFog's recommendation).
// Static kinds are undirected, with Metropolis-Hastings weights
// W[i][j] = 1 / (1 + max(deg i, deg j)) for neighbours, W[i][i] = 1 - the
// row's others: symmetric, hence doubly stochastic.
//
// A dead neighbour (alive[j] false) is dropped: its weight moves to the
// diagonal, W[i][i] += W[i][j]. Over the workers alive the matrix stays
// symmetric (static kinds) or doubly stochastic (one-peer), so the average of
// the survivors is kept; no worker needs to know more than its own
// neighbours' state.
//
// Thread safety: a Topology is immutable; every method may be called from
// any thread. Errors: UsageError for fewer than 1 worker, an unknown kind's
// name (listing the names), a rank out of range or an alive mask of the
// wrong size.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dtrain::strategy::gossip {

enum class TopologyKind { kRing, kTorus, kFull, kExponential, kOnePeerExponential };

// "ring", "torus", "full", "exponential", "one-peer-exponential".
TopologyKind parse_topology(std::string_view name);
std::string_view topology_name(TopologyKind kind);
// Every kind's name, in the order above.
std::vector<std::string> topology_names();

// One row of a mixing matrix: the weight of the worker's own model and of
// each in-neighbour's (sorted by rank, weights > 0).
struct MixingRow {
  double self = 1.0;
  std::vector<std::pair<int, double>> neighbours;
};

class Topology {
 public:
  Topology(TopologyKind kind, int workers);

  TopologyKind kind() const { return kind_; }
  int workers() const { return workers_; }
  // Whether the neighbours change from step to step (one-peer-exponential).
  bool dynamic() const { return kind_ == TopologyKind::kOnePeerExponential; }
  // Steps after which a dynamic topology repeats (1 for static kinds).
  int period() const;

  // Whose models `rank` mixes in at `step`, and who mixes in its model,
  // sorted, without `rank` itself. Equal for static kinds.
  std::vector<int> in_neighbours(int rank, int64_t step) const;
  std::vector<int> out_neighbours(int rank, int64_t step) const;

  // Row `rank` of W_step, with dead neighbours dropped (empty `alive`: all
  // alive).
  MixingRow row(int rank, int64_t step, const std::vector<bool>& alive = {}) const;
  // W_step as N x N doubles, row-major; rows of dead workers are identity rows.
  std::vector<double> matrix(int64_t step, const std::vector<bool>& alive = {}) const;

  // 1 - |lambda_2|: for static kinds of W's eigenvalues (the second largest
  // magnitude); for dynamic ones of the product of one period's matrices
  // (its second largest singular value), a per-period figure; 1 for N = 1
  // (nothing to mix).
  double spectral_gap() const;
  // One line for the job's start: "ring of 8 workers: 2 neighbours each
  // (weights 1/3), spectral gap 0.195".
  std::string describe() const;

 private:
  TopologyKind kind_;
  int workers_;
  int rows_ = 1, cols_ = 1;  // torus shape
};

}  // namespace dtrain::strategy::gossip
