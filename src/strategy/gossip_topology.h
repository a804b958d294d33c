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
// A dead neighbour (alive[j] false) is dropped:
//  - static kinds: its weight moves to the diagonal, W[i][i] += W[i][j].
//    Over the workers alive the matrix stays symmetric, hence doubly
//    stochastic; no worker needs to know more than its own neighbours' state.
//  - one-peer-exponential: moving the weight to the diagonal would break the
//    column sums (a directed cycle with a hole is a path, and the only doubly
//    stochastic matrix on a directed path is the identity), so the dead are
//    skipped instead: at step t, i receives from the nearest alive worker of
//    i - 2^k, i - 2*2^k, ... and sends to the nearest alive of i + 2^k,
//    i + 2*2^k, ... (its own cycle of the shift by 2^k). That is a
//    permutation of the alive workers, so 1/2 I + 1/2 P stays doubly
//    stochastic over them; a worker alone alive in its cycle keeps its model.
//    It needs the alive state of the dead run between i and its new peer.
// Either way the average of the survivors is kept, and a dead worker's own
// row is the identity.
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
  // sorted, without `rank` itself: the nonzeros of row `rank` and of column
  // `rank` of matrix(step, alive). Equal for static kinds. With an `alive`
  // mask the dead are dropped (one-peer: skipped, see above) and a dead rank
  // has none; empty `alive`: all alive.
  std::vector<int> in_neighbours(int rank, int64_t step, const std::vector<bool>& alive = {}) const;
  std::vector<int> out_neighbours(int rank, int64_t step,
                                  const std::vector<bool>& alive = {}) const;

  // Row `rank` of W_step, with dead neighbours dropped (empty `alive`: all
  // alive).
  MixingRow row(int rank, int64_t step, const std::vector<bool>& alive = {}) const;
  // W_step as N x N doubles, row-major; rows of dead workers are identity rows.
  std::vector<double> matrix(int64_t step, const std::vector<bool>& alive = {}) const;

  // With every worker alive: 1 - |lambda_2|. Static kinds: of W's
  // eigenvalues, the largest magnitude other than the eigenvalue 1 (the
  // spectral norm of W - J/N); the disagreement x - mean(x) shrinks by at
  // least the factor (1 - gap) per step. Dynamic ones: of the product P of
  // one period's matrices, its second largest singular value (the spectral
  // norm of P - J/N), a per-period figure. 1 for N = 1 (nothing to mix), 0
  // for a disconnected graph. Computed by the cyclic Jacobi method:
  // O(N^3) per sweep, for N up to a few hundred.
  double spectral_gap() const;
  // One line for the job's start: "ring of 8 workers: 2 neighbours each,
  // Metropolis-Hastings weights 1/3, spectral gap 0.195".
  std::string describe() const;

 private:
  void check_rank(int rank, const char* what) const;
  void check_alive(const std::vector<bool>& alive) const;
  // A static kind's (undirected) neighbours of `rank`, sorted, all alive.
  std::vector<int> static_neighbours(int rank) const;
  // One-peer: the shift 2^k of `step`.
  int one_peer_shift(int64_t step) const;

  TopologyKind kind_;
  int workers_;
  int rows_ = 1, cols_ = 1;  // torus shape
};

}  // namespace dtrain::strategy::gossip
