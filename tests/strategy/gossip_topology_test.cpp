#include "strategy/gossip_topology.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "testing/expect_error.h"

namespace dtrain::strategy::gossip {
namespace {

using dtrain::testing::expect_usage_error;

constexpr double kTol = 1e-12;

const std::vector<TopologyKind> kKinds = {TopologyKind::kRing, TopologyKind::kTorus,
                                          TopologyKind::kFull, TopologyKind::kExponential,
                                          TopologyKind::kOnePeerExponential};

std::string label(const Topology& t, int64_t step, const std::vector<bool>& alive) {
  std::string dead;
  for (size_t i = 0; i < alive.size(); ++i) {
    if (!alive[i]) dead += " " + std::to_string(i);
  }
  return std::string(topology_name(t.kind())) + " N=" + std::to_string(t.workers()) +
         " step=" + std::to_string(step) + " dead:" + (dead.empty() ? " none" : dead);
}

// The alive masks to try for N workers: all alive, each worker dead alone,
// and pairs of dead workers (adjacent and far apart).
std::vector<std::vector<bool>> alive_masks(int n) {
  std::vector<std::vector<bool>> masks = {{}};
  for (int d = 0; d < n; ++d) {
    std::vector<bool> m(static_cast<size_t>(n), true);
    m[static_cast<size_t>(d)] = false;
    masks.push_back(m);
  }
  if (n >= 3) {
    for (int d = 0; d < n; ++d) {
      for (const int e : {(d + 1) % n, (d + n / 2) % n}) {
        if (e == d) continue;
        std::vector<bool> m(static_cast<size_t>(n), true);
        m[static_cast<size_t>(d)] = false;
        m[static_cast<size_t>(e)] = false;
        masks.push_back(m);
      }
    }
  }
  return masks;
}

bool alive_at(const std::vector<bool>& alive, int i) {
  return alive.empty() || alive[static_cast<size_t>(i)];
}

double at(const std::vector<double>& w, int n, int i, int j) {
  return w[static_cast<size_t>(i) * static_cast<size_t>(n) + static_cast<size_t>(j)];
}

// y = W x.
std::vector<double> mix(const std::vector<double>& w, const std::vector<double>& x) {
  const auto n = static_cast<int>(x.size());
  std::vector<double> y(x.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j)
      y[static_cast<size_t>(i)] += at(w, n, i, j) * x[static_cast<size_t>(j)];
  }
  return y;
}

double mean_of(const std::vector<double>& x) {
  double s = 0.0;
  for (const double v : x) s += v;
  return s / static_cast<double>(x.size());
}

// ||x - c||_2.
double distance_to(const std::vector<double>& x, double c) {
  double s = 0.0;
  for (const double v : x) s += (v - c) * (v - c);
  return std::sqrt(s);
}

std::vector<double> random_vector(int n, Rng& rng) {
  std::vector<double> x(static_cast<size_t>(n));
  for (double& v : x) v = rng.normal();
  return x;
}

TEST(GossipTopology, EveryMatrixIsDoublyStochasticOverTheAlive) {
  for (const TopologyKind kind : kKinds) {
    for (int n = 2; n <= 16; ++n) {
      const Topology t(kind, n);
      for (const std::vector<bool>& alive : alive_masks(n)) {
        for (int64_t step = 0; step <= t.period(); ++step) {
          SCOPED_TRACE(label(t, step, alive));
          const std::vector<double> w = t.matrix(step, alive);
          ASSERT_EQ(w.size(), static_cast<size_t>(n * n));
          for (int i = 0; i < n; ++i) {
            double row = 0.0, column = 0.0;
            for (int j = 0; j < n; ++j) {
              EXPECT_GE(at(w, n, i, j), 0.0) << i << "," << j;
              if (!alive_at(alive, i)) {
                EXPECT_EQ(at(w, n, i, j), i == j ? 1.0 : 0.0) << "dead row " << i;
              } else if (!alive_at(alive, j)) {
                EXPECT_EQ(at(w, n, i, j), 0.0) << "alive " << i << " mixes dead " << j;
              }
              if (alive_at(alive, j)) row += at(w, n, i, j);
              if (alive_at(alive, j)) column += at(w, n, j, i);
            }
            if (alive_at(alive, i)) {
              EXPECT_NEAR(row, 1.0, kTol) << "row " << i;
              EXPECT_NEAR(column, 1.0, kTol) << "column " << i;
            }
          }
        }
      }
    }
  }
}

TEST(GossipTopology, StaticKindsAreSymmetricWithSymmetricNeighbours) {
  for (const TopologyKind kind : kKinds) {
    for (int n = 1; n <= 16; ++n) {
      const Topology t(kind, n);
      if (t.dynamic()) continue;
      EXPECT_EQ(t.period(), 1);
      for (const std::vector<bool>& alive : alive_masks(n)) {
        SCOPED_TRACE(label(t, 0, alive));
        const std::vector<double> w = t.matrix(0, alive);
        for (int i = 0; i < n; ++i) {
          EXPECT_EQ(t.in_neighbours(i, 0, alive), t.out_neighbours(i, 0, alive));
          EXPECT_EQ(t.in_neighbours(i, 0, alive), t.in_neighbours(i, 5, alive));
          for (const int j : t.in_neighbours(i, 0, alive)) {
            const std::vector<int> back = t.in_neighbours(j, 0, alive);
            EXPECT_TRUE(std::find(back.begin(), back.end(), i) != back.end()) << i << "->" << j;
          }
          for (int j = 0; j < n; ++j) EXPECT_EQ(at(w, n, i, j), at(w, n, j, i)) << i << "," << j;
        }
      }
    }
  }
}

TEST(GossipTopology, NeighboursAreTheMatrixNonzeros) {
  for (const TopologyKind kind : kKinds) {
    for (int n = 1; n <= 16; ++n) {
      const Topology t(kind, n);
      for (const std::vector<bool>& alive : alive_masks(n)) {
        for (int64_t step = 0; step <= t.period(); ++step) {
          SCOPED_TRACE(label(t, step, alive));
          const std::vector<double> w = t.matrix(step, alive);
          for (int i = 0; i < n; ++i) {
            std::vector<int> in, out;
            for (int j = 0; j < n; ++j) {
              if (j != i && at(w, n, i, j) > 0.0) in.push_back(j);
              if (j != i && at(w, n, j, i) > 0.0) out.push_back(j);
            }
            EXPECT_EQ(t.in_neighbours(i, step, alive), in) << "rank " << i;
            EXPECT_EQ(t.out_neighbours(i, step, alive), out) << "rank " << i;
            const MixingRow r = t.row(i, step, alive);
            EXPECT_EQ(r.self, at(w, n, i, i));
            for (size_t k = 0; k < r.neighbours.size(); ++k) {
              EXPECT_GT(r.neighbours[k].second, 0.0);
              if (k > 0) {
                EXPECT_LT(r.neighbours[k - 1].first, r.neighbours[k].first);
              }
            }
          }
        }
      }
    }
  }
}

TEST(GossipTopology, NeighbourSetsOfEachKind) {
  using V = std::vector<int>;
  EXPECT_EQ(Topology(TopologyKind::kRing, 8).in_neighbours(0, 0), (V{1, 7}));
  EXPECT_EQ(Topology(TopologyKind::kRing, 2).in_neighbours(0, 0), (V{1}));
  EXPECT_EQ(Topology(TopologyKind::kRing, 1).in_neighbours(0, 0), (V{}));
  // 3 x 4: rank 5 is (1, 1).
  EXPECT_EQ(Topology(TopologyKind::kTorus, 12).in_neighbours(5, 0), (V{1, 4, 6, 9}));
  // 2 x 2 and 2 x 4: up and down are one neighbour.
  EXPECT_EQ(Topology(TopologyKind::kTorus, 4).in_neighbours(0, 0), (V{1, 2}));
  EXPECT_EQ(Topology(TopologyKind::kTorus, 8).in_neighbours(0, 0), (V{1, 3, 4}));
  // A prime number of workers: 1 x 7, a ring.
  EXPECT_EQ(Topology(TopologyKind::kTorus, 7).in_neighbours(0, 0), (V{1, 6}));
  EXPECT_EQ(Topology(TopologyKind::kTorus, 7).matrix(0),
            Topology(TopologyKind::kRing, 7).matrix(0));
  EXPECT_EQ(Topology(TopologyKind::kFull, 5).in_neighbours(2, 0), (V{0, 1, 3, 4}));
  // +-1, +-2, +-4 (4 = -4 mod 8).
  EXPECT_EQ(Topology(TopologyKind::kExponential, 8).in_neighbours(0, 0), (V{1, 2, 4, 6, 7}));
  EXPECT_EQ(Topology(TopologyKind::kExponential, 5).in_neighbours(0, 0), (V{1, 2, 3, 4}));
  EXPECT_EQ(Topology(TopologyKind::kExponential, 12).in_neighbours(3, 0), (V{1, 2, 4, 5, 7, 11}));
}

TEST(GossipTopology, OnePeerRotatesThroughThePowersOfTwo) {
  using V = std::vector<int>;
  const Topology t(TopologyKind::kOnePeerExponential, 8);
  EXPECT_TRUE(t.dynamic());
  EXPECT_EQ(t.period(), 3);
  EXPECT_EQ(t.in_neighbours(0, 0), (V{7}));
  EXPECT_EQ(t.out_neighbours(0, 0), (V{1}));
  EXPECT_EQ(t.in_neighbours(0, 1), (V{6}));
  EXPECT_EQ(t.out_neighbours(0, 1), (V{2}));
  EXPECT_EQ(t.in_neighbours(0, 2), (V{4}));
  EXPECT_EQ(t.out_neighbours(0, 2), (V{4}));
  EXPECT_EQ(t.in_neighbours(0, 3), (V{7}));
  const MixingRow r = t.row(3, 1);
  EXPECT_EQ(r.self, 0.5);
  ASSERT_EQ(r.neighbours.size(), 1u);
  EXPECT_EQ(r.neighbours[0], (std::pair<int, double>{1, 0.5}));

  EXPECT_EQ(Topology(TopologyKind::kOnePeerExponential, 5).period(), 3);
  EXPECT_EQ(Topology(TopologyKind::kOnePeerExponential, 5).in_neighbours(0, 2), (V{1}));
  EXPECT_EQ(Topology(TopologyKind::kOnePeerExponential, 9).period(), 4);
  const Topology two(TopologyKind::kOnePeerExponential, 2);
  EXPECT_EQ(two.period(), 1);
  EXPECT_EQ(two.in_neighbours(0, 7), (V{1}));
  EXPECT_EQ(two.out_neighbours(1, 7), (V{0}));
  const Topology one(TopologyKind::kOnePeerExponential, 1);
  EXPECT_EQ(one.period(), 1);
  EXPECT_EQ(one.in_neighbours(0, 0), (V{}));
  EXPECT_EQ(one.out_neighbours(0, 0), (V{}));
  EXPECT_EQ(one.row(0, 3).self, 1.0);
}

TEST(GossipTopology, RingGapMatchesTheClosedForm) {
  for (int n = 3; n <= 16; ++n) {
    // W = (I + shift + shift^T) / 3: eigenvalues 1/3 + 2/3 cos(2 pi m / N).
    const double second = 1.0 / 3 + 2.0 / 3 * std::cos(2 * std::numbers::pi / n);
    const double lowest = 1.0 / 3 + 2.0 / 3 * std::cos(2 * std::numbers::pi * (n / 2) / n);
    const double expected = 1.0 - std::max(std::abs(second), std::abs(lowest));
    EXPECT_NEAR(Topology(TopologyKind::kRing, n).spectral_gap(), expected, kTol) << "N=" << n;
  }
  EXPECT_NEAR(Topology(TopologyKind::kRing, 8).spectral_gap(), 0.19526214587563503, kTol);
  // Two workers: W = J/2.
  EXPECT_NEAR(Topology(TopologyKind::kRing, 2).spectral_gap(), 1.0, kTol);
}

TEST(GossipTopology, TorusGapMatchesTheClosedForm) {
  // R, C >= 3: W = (I + up + down + left + right) / 5, eigenvalues
  // (1 + 2 cos(2 pi a / R) + 2 cos(2 pi b / C)) / 5.
  for (const auto& [n, rows, cols] :
       {std::tuple{9, 3, 3}, std::tuple{12, 3, 4}, std::tuple{16, 4, 4}, std::tuple{15, 3, 5}}) {
    double largest = 0.0;
    for (int a = 0; a < rows; ++a) {
      for (int b = 0; b < cols; ++b) {
        if (a == 0 && b == 0) continue;
        const double lambda = (1 + 2 * std::cos(2 * std::numbers::pi * a / rows) +
                               2 * std::cos(2 * std::numbers::pi * b / cols)) /
                              5;
        largest = std::max(largest, std::abs(lambda));
      }
    }
    EXPECT_NEAR(Topology(TopologyKind::kTorus, n).spectral_gap(), 1.0 - largest, kTol) << "N=" << n;
  }
  // 2 x 2: a ring of 4 (weights 1/3), connected.
  const double torus4 = Topology(TopologyKind::kTorus, 4).spectral_gap();
  EXPECT_GT(torus4, 0.0);
  EXPECT_NEAR(torus4, Topology(TopologyKind::kRing, 4).spectral_gap(), kTol);
}

TEST(GossipTopology, FullIsExactAveraging) {
  for (int n = 2; n <= 16; ++n) {
    const Topology t(TopologyKind::kFull, n);
    for (const double v : t.matrix(0)) EXPECT_NEAR(v, 1.0 / n, kTol) << "N=" << n;
    EXPECT_NEAR(t.spectral_gap(), 1.0, kTol) << "N=" << n;
  }
}

TEST(GossipTopology, OnePeerAveragesExactlyInAPeriodForPowersOfTwo) {
  for (const int n : {2, 4, 8, 16}) {
    const Topology t(TopologyKind::kOnePeerExponential, n);
    // Mix the unit vectors through one period: the columns of the product.
    for (int j = 0; j < n; ++j) {
      std::vector<double> x(static_cast<size_t>(n), 0.0);
      x[static_cast<size_t>(j)] = 1.0;
      for (int64_t step = 0; step < t.period(); ++step) x = mix(t.matrix(step), x);
      for (const double v : x) EXPECT_NEAR(v, 1.0 / n, kTol) << "N=" << n << " column " << j;
    }
    EXPECT_NEAR(t.spectral_gap(), 1.0, kTol) << "N=" << n;
  }
  // Not a power of two: no exact average, yet connected.
  for (const int n : {3, 5, 6, 7, 12}) {
    const double gap = Topology(TopologyKind::kOnePeerExponential, n).spectral_gap();
    EXPECT_GT(gap, 0.0) << "N=" << n;
    EXPECT_LT(gap, 1.0 - 1e-6) << "N=" << n;
  }
}

TEST(GossipTopology, EveryKindIsConnected) {
  for (const TopologyKind kind : kKinds) {
    for (int n = 1; n <= 16; ++n) {
      const double gap = Topology(kind, n).spectral_gap();
      EXPECT_GT(gap, 1e-3) << topology_name(kind) << " N=" << n;
      EXPECT_LE(gap, 1.0) << topology_name(kind) << " N=" << n;
    }
  }
}

// The doc's table (docs/gossip.md), to the printed digits.
TEST(GossipTopology, SpectralGapsOfTheDocTable) {
  const std::vector<std::pair<TopologyKind, std::vector<double>>> table = {
      {TopologyKind::kRing, {0.667, 0.195, 0.051}},
      {TopologyKind::kTorus, {0.667, 0.500, 0.400}},
      {TopologyKind::kFull, {1.000, 1.000, 1.000}},
      {TopologyKind::kExponential, {1.000, 0.667, 0.500}},
      {TopologyKind::kOnePeerExponential, {1.000, 1.000, 1.000}},
  };
  for (const auto& [kind, gaps] : table) {
    for (size_t i = 0; i < gaps.size(); ++i) {
      const int n = std::vector<int>{4, 8, 16}[i];
      EXPECT_NEAR(Topology(kind, n).spectral_gap(), gaps[i], 5e-4)
          << topology_name(kind) << " N=" << n;
    }
  }
}

TEST(GossipTopology, ADeadNeighboursWeightMovesToTheDiagonal) {
  const Topology ring(TopologyKind::kRing, 8);
  std::vector<bool> alive(8, true);
  alive[3] = false;
  const MixingRow r2 = ring.row(2, 0, alive);
  EXPECT_NEAR(r2.self, 2.0 / 3, kTol);
  ASSERT_EQ(r2.neighbours.size(), 1u);
  EXPECT_EQ(r2.neighbours[0].first, 1);
  EXPECT_NEAR(r2.neighbours[0].second, 1.0 / 3, kTol);
  const MixingRow r4 = ring.row(4, 0, alive);
  EXPECT_NEAR(r4.self, 2.0 / 3, kTol);
  ASSERT_EQ(r4.neighbours.size(), 1u);
  EXPECT_EQ(r4.neighbours[0].first, 5);
  const MixingRow r3 = ring.row(3, 0, alive);
  EXPECT_EQ(r3.self, 1.0);
  EXPECT_TRUE(r3.neighbours.empty());
  const MixingRow r6 = ring.row(6, 0, alive);  // not a neighbour: unchanged
  EXPECT_NEAR(r6.self, 1.0 / 3, kTol);
  EXPECT_EQ(r6.neighbours.size(), 2u);
}

TEST(GossipTopology, OnePeerSkipsTheDead) {
  using V = std::vector<int>;
  const Topology t(TopologyKind::kOnePeerExponential, 8);
  std::vector<bool> alive(8, true);
  alive[7] = false;
  EXPECT_EQ(t.in_neighbours(0, 0, alive), (V{6}));
  EXPECT_EQ(t.out_neighbours(6, 0, alive), (V{0}));
  EXPECT_EQ(t.in_neighbours(1, 1, alive), (V{5}));  // 1 - 2 = 7 dead, then 5
  // Step 2 pairs 3 with 7: 3 is alone alive on its cycle and keeps its model.
  EXPECT_EQ(t.in_neighbours(3, 2, alive), (V{}));
  EXPECT_EQ(t.row(3, 2, alive).self, 1.0);
  alive[6] = false;  // two dead in a row
  EXPECT_EQ(t.in_neighbours(0, 0, alive), (V{5}));
  EXPECT_EQ(t.out_neighbours(5, 0, alive), (V{0}));
}

TEST(GossipTopology, MixingKeepsTheMassOfTheAlive) {
  Rng rng(14);
  for (const TopologyKind kind : kKinds) {
    for (int n = 2; n <= 16; ++n) {
      const Topology t(kind, n);
      for (const std::vector<bool>& alive : alive_masks(n)) {
        for (int64_t step = 0; step <= t.period(); ++step) {
          SCOPED_TRACE(label(t, step, alive));
          const std::vector<double> x = random_vector(n, rng);
          const std::vector<double> y = mix(t.matrix(step, alive), x);
          double before = 0.0, after = 0.0;
          for (int i = 0; i < n; ++i) {
            if (!alive_at(alive, i)) {
              EXPECT_EQ(y[static_cast<size_t>(i)], x[static_cast<size_t>(i)]) << "dead " << i;
              continue;
            }
            before += x[static_cast<size_t>(i)];
            after += y[static_cast<size_t>(i)];
          }
          EXPECT_NEAR(after, before, 1e-12);
        }
      }
    }
  }
}

// The disagreement shrinks at least by (1 - gap) per step (per period for
// one-peer), and the bound is tight: power iteration on P^T P over the
// disagreement finds a direction that shrinks by exactly that.
TEST(GossipTopology, MixingConvergesToTheAverageAtTheGapsRate) {
  for (const TopologyKind kind : kKinds) {
    for (const int n : {2, 3, 4, 5, 6, 8, 9, 12, 16}) {
      const Topology t(kind, n);
      SCOPED_TRACE(std::string(topology_name(kind)) + " N=" + std::to_string(n));
      const double rate = 1.0 - t.spectral_gap();
      // One period's matrices: P = W_{p-1} ... W_0 and P^T = W_0^T ... W_{p-1}^T.
      std::vector<std::vector<double>> steps, transposed;
      for (int s = 0; s < t.period(); ++s) {
        steps.push_back(t.matrix(s));
        std::vector<double> w_t = steps.back();
        for (int i = 0; i < n; ++i) {
          for (int j = 0; j < n; ++j)
            w_t[static_cast<size_t>(i * n + j)] = at(steps.back(), n, j, i);
        }
        transposed.insert(transposed.begin(), w_t);
      }
      const auto apply = [](const std::vector<std::vector<double>>& ws, std::vector<double> x) {
        for (const auto& w : ws) x = mix(w, x);
        return x;
      };
      Rng rng(static_cast<uint64_t>(1000 * n + static_cast<int>(kind)));
      for (int trial = 0; trial < 10; ++trial) {
        std::vector<double> x = random_vector(n, rng);
        const double mean = mean_of(x);
        const double start = distance_to(x, mean);
        for (int p = 1; p <= 40; ++p) {
          x = apply(steps, x);
          EXPECT_NEAR(mean_of(x), mean, kTol);
          EXPECT_LE(distance_to(x, mean), std::pow(rate, p) * start * (1 + 1e-9) + kTol)
              << "period " << p;
        }
      }
      std::vector<double> d = random_vector(n, rng);
      double squared = 0.0;
      for (int p = 0; p < 2000; ++p) {
        const double m = mean_of(d);
        for (double& v : d) v -= m;
        const double norm = distance_to(d, 0.0);
        if (norm < 1e-200) break;
        for (double& v : d) v /= norm;
        const std::vector<double> once = apply(steps, d);
        ASSERT_LE(distance_to(once, mean_of(once)), rate + 1e-9) << "iteration " << p;
        d = apply(transposed, once);
        squared = distance_to(d, mean_of(d));
      }
      EXPECT_NEAR(std::sqrt(squared), rate, 1e-4);
    }
  }
}

// With dead workers the survivors still agree, on their own average.
TEST(GossipTopology, SurvivorsConvergeToTheirAverage) {
  Rng rng(7);
  for (const TopologyKind kind : kKinds) {
    for (const int n : {5, 8, 12}) {
      const Topology t(kind, n);
      for (const std::vector<bool>& alive : alive_masks(n)) {
        const bool ring = kind == TopologyKind::kRing || (kind == TopologyKind::kTorus && n == 5);
        const auto dead = std::count(alive.begin(), alive.end(), false);
        // Two dead cut a ring in two.
        if (alive.empty() || (ring && dead > 1)) continue;
        SCOPED_TRACE(label(t, 0, alive));
        std::vector<double> x = random_vector(n, rng);
        const std::vector<double> start = x;
        double sum = 0.0;
        int count = 0;
        for (int i = 0; i < n; ++i) {
          if (alive_at(alive, i)) sum += x[static_cast<size_t>(i)], ++count;
        }
        std::vector<std::vector<double>> steps;
        for (int s = 0; s < t.period(); ++s) steps.push_back(t.matrix(s, alive));
        for (size_t step = 0; step < 3000; ++step) x = mix(steps[step % steps.size()], x);
        for (int i = 0; i < n; ++i) {
          const double expected = alive_at(alive, i) ? sum / count : start[static_cast<size_t>(i)];
          EXPECT_NEAR(x[static_cast<size_t>(i)], expected, 1e-9) << "rank " << i;
        }
      }
    }
  }
}

TEST(GossipTopology, DescribeNamesTheShapeAndTheGap) {
  EXPECT_EQ(Topology(TopologyKind::kRing, 8).describe(),
            "ring of 8 workers: 2 neighbours each, Metropolis-Hastings weights 1/3, spectral gap "
            "0.195");
  EXPECT_EQ(Topology(TopologyKind::kOnePeerExponential, 8).describe(),
            "one-peer exponential graph of 8 workers: 1 peer per step (weights 1/2), 3 steps per "
            "period (exact averaging per period), spectral gap 1.000");
  EXPECT_EQ(Topology(TopologyKind::kTorus, 12).describe(),
            "2-D torus of 12 workers (3 x 4): 4 neighbours each, Metropolis-Hastings weights 1/5, "
            "spectral gap 0.400");
  EXPECT_EQ(Topology(TopologyKind::kRing, 2).describe(),
            "ring of 2 workers: 1 neighbour each, Metropolis-Hastings weights 1/2, spectral gap "
            "1.000");
  EXPECT_EQ(Topology(TopologyKind::kFull, 1).describe(),
            "fully connected graph of 1 worker: nothing to mix");
  const std::string six = Topology(TopologyKind::kOnePeerExponential, 6).describe();
  EXPECT_EQ(six.find("exact"), std::string::npos) << six;
  EXPECT_NE(six.find("3 steps per period"), std::string::npos) << six;
}

// A Topology is immutable: threads reading one at once see the same rows.
TEST(GossipTopology, ThreadsShareOneTopology) {
  const Topology t(TopologyKind::kOnePeerExponential, 12);
  std::vector<bool> alive(12, true);
  alive[5] = false;
  const std::vector<double> expected = t.matrix(0, alive);
  const double gap = t.spectral_gap();
  std::vector<int> agreed(4, 0);
  {
    std::vector<std::jthread> threads;
    for (size_t k = 0; k < agreed.size(); ++k) {
      threads.emplace_back([&, k] {
        agreed[k] = t.matrix(0, alive) == expected && t.spectral_gap() == gap &&
                    t.out_neighbours(4, 0, alive) == std::vector<int>{6};
      });
    }
  }
  EXPECT_EQ(agreed, std::vector<int>(4, 1));
}

TEST(GossipTopology, NamesRoundTrip) {
  const std::vector<std::string> names = topology_names();
  ASSERT_EQ(names.size(), kKinds.size());
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(parse_topology(names[i]), kKinds[i]);
    EXPECT_EQ(topology_name(kKinds[i]), names[i]);
  }
  EXPECT_EQ(names[4], "one-peer-exponential");
}

TEST(GossipTopology, MisuseIsAUsageError) {
  expect_usage_error([] { parse_topology("xyz"); },
                     "'xyz' is not a gossip topology: ring, torus, full, exponential, "
                     "one-peer-exponential");
  EXPECT_THROW(parse_topology("Ring"), UsageError);
  EXPECT_THROW(parse_topology(""), UsageError);
  expect_usage_error([] { Topology(TopologyKind::kRing, 0); },
                     "gossip topology ring: 0 workers, need at least 1");
  EXPECT_THROW(Topology(TopologyKind::kTorus, -3), UsageError);
  const Topology t(TopologyKind::kExponential, 4);
  expect_usage_error([&] { t.row(4, 0); },
                     "gossip topology exponential of 4 workers: mixing row of rank 4, out of "
                     "[0, 4)");
  EXPECT_THROW(t.row(-1, 0), UsageError);
  EXPECT_THROW(t.in_neighbours(4, 0), UsageError);
  EXPECT_THROW(t.out_neighbours(-1, 0), UsageError);
  expect_usage_error([&] { t.matrix(0, std::vector<bool>(3, true)); },
                     "gossip topology exponential of 4 workers: the alive mask has 3 entries, "
                     "expected 4 (or none)");
  EXPECT_THROW(t.row(0, 0, std::vector<bool>(5, true)), UsageError);
  const Topology one_peer(TopologyKind::kOnePeerExponential, 4);
  EXPECT_THROW(one_peer.out_neighbours(0, 0, std::vector<bool>(2, true)), UsageError);
  EXPECT_THROW(one_peer.out_neighbours(4, 0), UsageError);
}

}  // namespace
}  // namespace dtrain::strategy::gossip
