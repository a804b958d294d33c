#include "strategy/gossip_topology.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.h"

namespace dtrain::strategy::gossip {

namespace {

constexpr std::array<std::string_view, 5> kTopologyNames = {"ring", "torus", "full", "exponential",
                                                            "one-peer-exponential"};

int positive_mod(int64_t value, int n) {
  const int64_t m = value % n;
  return static_cast<int>(m < 0 ? m + n : m);
}

// ceil(log2 n) for n >= 1.
int ceil_log2(int n) {
  int k = 0;
  while ((int64_t{1} << k) < n) ++k;
  return k;
}

bool is_alive(const std::vector<bool>& alive, int rank) {
  return alive.empty() || alive[static_cast<size_t>(rank)];
}

// The eigenvalues of the symmetric n x n matrix `a` (row-major, destroyed),
// unsorted, by the cyclic Jacobi method (Golub & Van Loan, Matrix
// Computations, 4th ed., section 8.5): sweep over every off-diagonal pair
// (p, q), rotating it to zero; each sweep shrinks the off-diagonal mass,
// quadratically near the end. The rotation for (p, q): theta = (a_qq - a_pp)
// / (2 a_pq), t = sign(theta) / (|theta| + sqrt(theta^2 + 1)) (the smaller
// root, for stability), c = 1 / sqrt(t^2 + 1), s = t c; A <- J^T A J with
// J = I except J_pp = J_qq = c, J_pq = s, J_qp = -s.
std::vector<double> symmetric_eigenvalues(std::vector<double> a, int n) {
  const auto at = [&](int i, int j) -> double& {
    return a[static_cast<size_t>(i) * static_cast<size_t>(n) + static_cast<size_t>(j)];
  };
  constexpr int kMaxSweeps = 100;
  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        total += at(i, j) * at(i, j);
        if (i != j) off += at(i, j) * at(i, j);
      }
    }
    if (off <= 1e-30 * total || off < 1e-300) break;
    for (int p = 0; p < n - 1; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = at(p, q);
        if (apq == 0.0) continue;
        const double theta = (at(q, q) - at(p, p)) / (2.0 * apq);
        const double t =
            std::copysign(1.0, theta) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0);
        const double s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p and q: A J
          const double akp = at(k, p), akq = at(k, q);
          at(k, p) = c * akp - s * akq;
          at(k, q) = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p and q: J^T (A J)
          const double apk = at(p, k), aqk = at(q, k);
          at(p, k) = c * apk - s * aqk;
          at(q, k) = s * apk + c * aqk;
        }
        at(p, q) = 0.0;
        at(q, p) = 0.0;
      }
    }
  }
  std::vector<double> eigenvalues(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) eigenvalues[static_cast<size_t>(i)] = at(i, i);
  return eigenvalues;
}

// c = a b for n x n row-major matrices.
std::vector<double> multiply(const std::vector<double>& a, const std::vector<double>& b, int n) {
  const auto un = static_cast<size_t>(n);
  std::vector<double> c(un * un, 0.0);
  for (size_t i = 0; i < un; ++i) {
    for (size_t k = 0; k < un; ++k) {
      const double aik = a[i * un + k];
      if (aik == 0.0) continue;
      for (size_t j = 0; j < un; ++j) c[i * un + j] += aik * b[k * un + j];
    }
  }
  return c;
}

// "1/3" for 1 / (degree + 1).
std::string weight_fraction(int degree) { return fmt::format("1/{}", degree + 1); }

std::string_view plural(int count, std::string_view one, std::string_view many) {
  return count == 1 ? one : many;
}

}  // namespace

TopologyKind parse_topology(std::string_view name) {
  for (size_t i = 0; i < kTopologyNames.size(); ++i) {
    if (kTopologyNames[i] == name) return static_cast<TopologyKind>(i);
  }
  throw UsageError(fmt::format("'{}' is not a gossip topology: {}", name,
                               fmt::join(kTopologyNames, ", ")));
}

std::string_view topology_name(TopologyKind kind) {
  return kTopologyNames[static_cast<size_t>(kind)];
}

std::vector<std::string> topology_names() {
  return {kTopologyNames.begin(), kTopologyNames.end()};
}

Topology::Topology(TopologyKind kind, int workers) : kind_(kind), workers_(workers) {
  if (workers < 1) {
    throw UsageError(fmt::format("gossip topology {}: {} workers, need at least 1",
                                 topology_name(kind), workers));
  }
  if (kind == TopologyKind::kTorus) {
    // The most square R x C = N with R <= C: R the largest divisor <= sqrt(N).
    for (int r = 1; static_cast<int64_t>(r) * r <= workers; ++r) {
      if (workers % r == 0) rows_ = r;
    }
    cols_ = workers / rows_;
  }
}

int Topology::period() const { return dynamic() && workers_ > 1 ? ceil_log2(workers_) : 1; }

void Topology::check_rank(int rank, const char* what) const {
  if (rank < 0 || rank >= workers_) {
    throw UsageError(fmt::format("gossip topology {} of {} workers: {} of rank {}, out of [0, {})",
                                 topology_name(kind_), workers_, what, rank, workers_));
  }
}

void Topology::check_alive(const std::vector<bool>& alive) const {
  if (!alive.empty() && alive.size() != static_cast<size_t>(workers_)) {
    throw UsageError(fmt::format(
        "gossip topology {} of {} workers: the alive mask has {} entries, expected {} (or none)",
        topology_name(kind_), workers_, alive.size(), workers_));
  }
}

int Topology::one_peer_shift(int64_t step) const {
  return 1 << positive_mod(step, period());
}

std::vector<int> Topology::static_neighbours(int rank) const {
  const int n = workers_;
  std::vector<int> out;
  switch (kind_) {
    case TopologyKind::kRing:
      out = {positive_mod(rank - 1, n), positive_mod(rank + 1, n)};
      break;
    case TopologyKind::kTorus: {
      const int r = rank / cols_, c = rank % cols_;
      out = {positive_mod(r - 1, rows_) * cols_ + c, positive_mod(r + 1, rows_) * cols_ + c,
             r * cols_ + positive_mod(c - 1, cols_), r * cols_ + positive_mod(c + 1, cols_)};
      break;
    }
    case TopologyKind::kFull:
      for (int j = 0; j < n; ++j) out.push_back(j);
      break;
    case TopologyKind::kExponential:
      for (int64_t d = 1; d < n; d *= 2) {
        out.push_back(positive_mod(rank - d, n));
        out.push_back(positive_mod(rank + d, n));
      }
      break;
    case TopologyKind::kOnePeerExponential:
      DTRAIN_CHECK(false, "static_neighbours of the dynamic topology {}", topology_name(kind_));
  }
  // Small N folds neighbours onto each other (ring of 2, torus 2 x C) or
  // onto the rank itself (a 1 x C torus's up and down).
  std::erase(out, rank);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

MixingRow Topology::row(int rank, int64_t step, const std::vector<bool>& alive) const {
  check_rank(rank, "mixing row");
  check_alive(alive);
  MixingRow result;
  if (!is_alive(alive, rank)) return result;
  if (dynamic()) {
    if (workers_ == 1) return result;
    const int shift = one_peer_shift(step);
    // The nearest alive worker before `rank` on its cycle of the shift.
    for (int j = positive_mod(rank - shift, workers_); j != rank;
         j = positive_mod(j - shift, workers_)) {
      if (is_alive(alive, j)) {
        result.self = 0.5;
        result.neighbours.emplace_back(j, 0.5);
        break;
      }
    }
    return result;
  }
  // Metropolis-Hastings: W[i][j] = 1 / (1 + max(deg i, deg j)); the weights
  // of dead neighbours stay on the diagonal.
  const std::vector<int> neighbours = static_neighbours(rank);
  const auto degree = static_cast<int>(neighbours.size());
  double others = 0.0;
  for (const int j : neighbours) {
    if (!is_alive(alive, j)) continue;
    const int degree_j = static_cast<int>(static_neighbours(j).size());
    const double w = 1.0 / (1.0 + std::max(degree, degree_j));
    result.neighbours.emplace_back(j, w);
    others += w;
  }
  result.self = 1.0 - others;
  return result;
}

std::vector<int> Topology::in_neighbours(int rank, int64_t step,
                                         const std::vector<bool>& alive) const {
  const MixingRow r = row(rank, step, alive);
  std::vector<int> out;
  out.reserve(r.neighbours.size());
  for (const auto& [j, w] : r.neighbours) out.push_back(j);
  return out;
}

std::vector<int> Topology::out_neighbours(int rank, int64_t step,
                                          const std::vector<bool>& alive) const {
  check_rank(rank, "out-neighbours");
  check_alive(alive);
  if (!dynamic()) return in_neighbours(rank, step, alive);
  if (workers_ == 1 || !is_alive(alive, rank)) return {};
  // The nearest alive worker after `rank` on its cycle: the one whose
  // nearest alive before is `rank`.
  const int shift = one_peer_shift(step);
  for (int j = positive_mod(rank + shift, workers_); j != rank;
       j = positive_mod(j + shift, workers_)) {
    if (is_alive(alive, j)) return {j};
  }
  return {};
}

std::vector<double> Topology::matrix(int64_t step, const std::vector<bool>& alive) const {
  check_alive(alive);
  const auto n = static_cast<size_t>(workers_);
  std::vector<double> w(n * n, 0.0);
  for (int i = 0; i < workers_; ++i) {
    const MixingRow r = row(i, step, alive);
    const auto ui = static_cast<size_t>(i);
    w[ui * n + ui] = r.self;
    for (const auto& [j, wij] : r.neighbours) w[ui * n + static_cast<size_t>(j)] = wij;
  }
  return w;
}

double Topology::spectral_gap() const {
  const int n = workers_;
  if (n == 1) return 1.0;
  const auto un = static_cast<size_t>(n);
  // Deflate the consensus direction: every W_t is doubly stochastic, so
  // W (or P) - J/N has the same spectrum (singular values) as W (P) with
  // the eigenvalue (singular value) 1 of the all-ones vector replaced by 0.
  // Working on the deflated matrix keeps an exact average (P = J/N) at a gap
  // of 1 to rounding, where sqrt of a rounded 0 would not.
  const auto deflate = [&](std::vector<double> m) {
    for (double& v : m) v -= 1.0 / n;
    return m;
  };
  double largest = 0.0;
  if (!dynamic()) {
    for (const double lambda : symmetric_eigenvalues(deflate(matrix(0)), n)) {
      largest = std::max(largest, std::abs(lambda));
    }
  } else {
    // P = W_{p-1} ... W_1 W_0 (x_{t+1} = W_t x_t); sigma_2(P) = the square
    // root of the largest eigenvalue of Q^T Q, Q = P - J/N.
    std::vector<double> product = matrix(0);
    for (int t = 1; t < period(); ++t) product = multiply(matrix(t), product, n);
    const std::vector<double> q = deflate(std::move(product));
    std::vector<double> qtq(un * un, 0.0);
    for (size_t i = 0; i < un; ++i) {
      for (size_t j = 0; j < un; ++j) {
        double sum = 0.0;
        for (size_t k = 0; k < un; ++k) sum += q[k * un + i] * q[k * un + j];
        qtq[i * un + j] = sum;
      }
    }
    for (const double lambda : symmetric_eigenvalues(std::move(qtq), n)) {
      largest = std::max(largest, lambda);
    }
    largest = std::sqrt(largest);
  }
  return std::clamp(1.0 - largest, 0.0, 1.0);
}

std::string Topology::describe() const {
  const int n = workers_;
  std::string_view graph;
  switch (kind_) {
    case TopologyKind::kRing:
      graph = "ring";
      break;
    case TopologyKind::kTorus:
      graph = "2-D torus";
      break;
    case TopologyKind::kFull:
      graph = "fully connected graph";
      break;
    case TopologyKind::kExponential:
      graph = "static exponential graph";
      break;
    case TopologyKind::kOnePeerExponential:
      graph = "one-peer exponential graph";
      break;
  }
  std::string shape;
  if (kind_ == TopologyKind::kTorus) shape = fmt::format(" ({} x {})", rows_, cols_);
  const std::string head =
      fmt::format("{} of {} {}{}", graph, n, plural(n, "worker", "workers"), shape);
  if (n == 1) return head + ": nothing to mix";
  const std::string gap = fmt::format("spectral gap {:.3f}", spectral_gap());
  if (dynamic()) {
    const bool power_of_two = (n & (n - 1)) == 0;
    return fmt::format("{}: 1 peer per step (weights 1/2), {} {} per period{}, {}", head, period(),
                       plural(period(), "step", "steps"),
                       power_of_two ? " (exact averaging per period)" : "", gap);
  }
  // Every static kind is vertex-transitive: all degrees are equal.
  const auto degree = static_cast<int>(static_neighbours(0).size());
  return fmt::format("{}: {} {} each, Metropolis-Hastings weights {}, {}", head, degree,
                     plural(degree, "neighbour", "neighbours"), weight_fraction(degree), gap);
}

}  // namespace dtrain::strategy::gossip
