// The RDP accountant: published DP-SGD figures (TF Privacy, Opacus), the
// sampled Gaussian RDP against a direct numerical integration of the Rényi
// divergence, limits (q = 0, q = 1), monotonicity, the two conversions, the
// noise-multiplier solver, checkpoint state and the hard-stop check.
#include "privacy/rdp_accountant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <numbers>
#include <string>
#include <vector>

#include "core/error.h"

namespace dtrain::privacy {
namespace {

constexpr double kDelta = 1e-5;

// The message of the UsageError that `f` throws ("no error" when none).
template <typename F>
std::string usage_error(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

PrivacySpent spent(double q, double sigma, int64_t steps) {
  RdpAccountant acc;
  acc.step(q, sigma, steps);
  return acc.epsilon(kDelta);
}

// TF Privacy's compute_dp_sgd_privacy counts steps as
// ceil(epochs * n / batch_size) at q = batch_size / n, over the same orders,
// with the classic conversion (get_privacy_spent of 2019). Its tutorials/
// README.md published two MNIST tables (batch 256, delta 1e-5): the first
// (January 2019, commit 047e1ee) and the current one (since February 2019,
// commit d435fcb; Opacus's MNIST README repeated it until March 2021).
TEST(RdpAccountant, TfPrivacyPublishedMnistFigures) {
  struct Row {
    double sigma;
    double epochs;
    double published;
  };
  const Row rows[] = {// January 2019
                      {1.12, 60, 2.92},
                      {0.6, 30, 9.74},
                      {1.2, 10, 1.20},
                      // since February 2019
                      {1.3, 15, 1.19},
                      {1.1, 60, 3.01},
                      {0.7, 45, 7.10}};
  for (const Row& r : rows) {
    const auto steps = static_cast<int64_t>(std::ceil(r.epochs * 60000.0 / 256.0));
    const PrivacySpent e = spent(256.0 / 60000.0, r.sigma, steps);
    EXPECT_NEAR(e.classic, r.published, 0.01 * r.published) << "sigma " << r.sigma;
  }
}

// Opacus examples/mnist_README.md (since commit eb4e69a6, March 2021):
// sample rate 0.004, so 250 steps per epoch, delta 1e-5, classic conversion
// (privacy_analysis.get_privacy_spent of that version).
TEST(RdpAccountant, OpacusPublishedMnistFigures) {
  struct Row {
    double sigma;
    int64_t epochs;
    double published;
  };
  const Row rows[] = {{0.7, 45, 6.86}, {1.1, 60, 2.91}, {1.3, 15, 1.16}};
  for (const Row& r : rows) {
    const PrivacySpent e = spent(0.004, r.sigma, r.epochs * 250);
    // The published figures have two decimals.
    EXPECT_NEAR(e.classic, r.published, 0.0051) << "sigma " << r.sigma;
  }
}

// log of the integral over the real line of mu_0^(1-alpha) mu^alpha, with
// mu_0 = N(0, s^2) and mu = (1-q) N(0, s^2) + q N(1, s^2), by the trapezoid
// rule on a grid of step s/100 over [-40 s, alpha + 40 s] (the integrand's
// mass lies between 0 and alpha, Gaussian tails of width s beyond). For such
// a smooth, rapidly decaying integrand the trapezoid rule's error is
// exponentially small in 1/h; what remains is rounding: the two agree to
// ~2e-16 absolute, 4e-11 relative at the smallest RDP here (6e-6), so the
// test asserts 1e-9 relative.
double integrated_log_a(double q, double s, double alpha) {
  const double h = s / 100.0;
  const double lo = -40.0 * s;
  const double hi = alpha + 40.0 * s;
  const auto n = static_cast<int64_t>(std::ceil((hi - lo) / h));
  const double log_norm = -0.5 * std::log(2.0 * std::numbers::pi * s * s);
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  std::vector<double> log_f(static_cast<size_t>(n + 1));
  double max_log = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i <= n; ++i) {
    const double z = lo + static_cast<double>(i) * h;
    // log(mu / mu_0) = log((1-q) + q exp((2z - 1) / (2 s^2))).
    const double u = log_q + (2.0 * z - 1.0) / (2.0 * s * s);
    const double m = std::max(u, log_1mq);
    const double log_ratio = m + std::log(std::exp(u - m) + std::exp(log_1mq - m));
    log_f[static_cast<size_t>(i)] = log_norm - z * z / (2.0 * s * s) + alpha * log_ratio;
    max_log = std::max(max_log, log_f[static_cast<size_t>(i)]);
  }
  long double sum = 0;
  for (int64_t i = 0; i <= n; ++i) {
    const double w = (i == 0 || i == n) ? 0.5 : 1.0;
    sum += w * std::exp(log_f[static_cast<size_t>(i)] - max_log);
  }
  return max_log + std::log(static_cast<double>(sum) * h);
}

TEST(RdpAccountant, MatchesNumericalIntegration) {
  for (double sigma : {0.8, 2.0, 4.0}) {
    for (double q : {0.01, 0.1, 0.5}) {
      for (double alpha : {2.0, 3.5, 8.0, 32.0}) {
        const double expected = integrated_log_a(q, sigma, alpha) / (alpha - 1.0);
        const double got = sampled_gaussian_rdp(q, sigma, alpha);
        EXPECT_NEAR(got, expected, 1e-9 * expected)
            << "q " << q << " sigma " << sigma << " alpha " << alpha;
      }
    }
  }
}

// The fractional series at an order next to an integer agrees with the
// binomial sum at that integer.
TEST(RdpAccountant, FractionalSeriesMeetsIntegerSum) {
  for (double q : {0.004, 0.2}) {
    for (double alpha : {2.0, 7.0, 40.0}) {
      const double at = sampled_gaussian_rdp(q, 1.1, alpha);
      const double next = sampled_gaussian_rdp(q, 1.1, alpha + 1e-7);
      EXPECT_NEAR(next, at, 1e-5 * at) << "q " << q << " alpha " << alpha;
    }
  }
}

// Over a wide grid every order gives a finite RDP that falls as sigma grows and
// rises with q and with alpha (RDP is non-decreasing in the order).
TEST(RdpAccountant, MonotoneInSigmaQAndOrderOverAWideGrid) {
  const std::vector<double> orders = default_rdp_orders();
  const double qs[] = {1e-4, 0.004, 0.05, 0.3, 0.7, 0.99};
  const double sigmas[] = {0.3, 0.6, 1.0, 2.5, 10.0, 50.0};
  std::vector<std::vector<double>> prev_q(std::size(sigmas));
  for (double q : qs) {
    std::vector<double> prev_sigma;
    for (size_t s = 0; s < std::size(sigmas); ++s) {
      const std::vector<double> rdp = sampled_gaussian_rdp(q, sigmas[s], 1, orders);
      for (size_t i = 0; i < orders.size(); ++i) {
        SCOPED_TRACE(testing::Message()
                     << "q " << q << " sigma " << sigmas[s] << " alpha " << orders[i]);
        ASSERT_TRUE(std::isfinite(rdp[i]));
        ASSERT_GT(rdp[i], 0.0);
        if (i > 0) {
          EXPECT_GE(rdp[i], rdp[i - 1] * (1 - 1e-12));
        }
        if (!prev_sigma.empty()) {
          EXPECT_LT(rdp[i], prev_sigma[i]);
        }
        if (!prev_q[s].empty()) {
          EXPECT_GT(rdp[i], prev_q[s][i]);
        }
      }
      prev_sigma = rdp;
      prev_q[s] = rdp;
    }
  }
}

TEST(RdpAccountant, FullBatchIsTheGaussianMechanism) {
  for (double sigma : {0.5, 1.0, 3.0}) {
    for (double alpha : {1.5, 2.0, 10.0, 63.0}) {
      EXPECT_DOUBLE_EQ(sampled_gaussian_rdp(1.0, sigma, alpha), alpha / (2 * sigma * sigma));
      // The general path tends to the same value as q -> 1.
      const double near_one = sampled_gaussian_rdp(1.0 - 1e-9, sigma, alpha);
      EXPECT_NEAR(near_one, alpha / (2 * sigma * sigma), 1e-6 * alpha / (2 * sigma * sigma))
          << "sigma " << sigma << " alpha " << alpha;
    }
  }
}

TEST(RdpAccountant, NoSamplingCostsNothing) {
  EXPECT_EQ(sampled_gaussian_rdp(0.0, 1.0, 2.5), 0.0);
  RdpAccountant acc;
  const PrivacySpent none = acc.epsilon(kDelta);
  EXPECT_EQ(none.classic, 0.0);
  EXPECT_EQ(none.balle, 0.0);
  acc.step(0.0, 1.0, 100);
  EXPECT_EQ(acc.epsilon(kDelta).balle, 0.0);
  EXPECT_EQ(acc.steps(), 100);
  acc.step(0.01, 1.0, 100);
  EXPECT_GT(acc.epsilon(kDelta).balle, 0.0);
}

TEST(RdpAccountant, EpsilonGrowsWithSteps) {
  RdpAccountant acc;
  double classic = 0;
  double balle = 0;
  for (int i = 0; i < 20; ++i) {
    acc.step(0.01, 1.0, i + 1);
    const PrivacySpent e = acc.epsilon(kDelta);
    EXPECT_GT(e.classic, classic) << "after " << acc.steps() << " steps";
    EXPECT_GT(e.balle, balle) << "after " << acc.steps() << " steps";
    classic = e.classic;
    balle = e.balle;
  }
  EXPECT_EQ(acc.steps(), 210);
}

TEST(RdpAccountant, PhasesAddUp) {
  RdpAccountant acc;
  acc.step(0.01, 1.0, 300);
  acc.step(0.02, 2.0, 100);
  acc.step(0.01, 1.0, 200);
  ASSERT_EQ(acc.state().phases.size(), 2u);
  const std::vector<double> orders = default_rdp_orders();
  std::vector<double> total = sampled_gaussian_rdp(0.01, 1.0, 500, orders);
  const std::vector<double> second = sampled_gaussian_rdp(0.02, 2.0, 100, orders);
  for (size_t i = 0; i < total.size(); ++i) total[i] += second[i];
  const PrivacySpent expected = rdp_to_epsilon(orders, total, kDelta);
  const PrivacySpent got = acc.epsilon(kDelta);
  EXPECT_NEAR(got.balle, expected.balle, 1e-12 * expected.balle);
  EXPECT_EQ(got.balle_order, expected.balle_order);
  EXPECT_EQ(acc.steps(), 600);
}

TEST(RdpAccountant, ConversionsAtOneOrder) {
  const std::vector<double> orders = {8.0};
  const std::vector<double> rdp = {0.5};
  const PrivacySpent e = rdp_to_epsilon(orders, rdp, 1e-5);
  EXPECT_NEAR(e.classic, 0.5 + std::log(1e5) / 7.0, 1e-12);
  EXPECT_NEAR(e.balle, 0.5 - (std::log(1e-5) + std::log(8.0)) / 7.0 + std::log(7.0 / 8.0), 1e-12);
  EXPECT_EQ(e.classic_order, 8.0);
  EXPECT_EQ(e.balle_order, 8.0);
}

TEST(RdpAccountant, BalleIsTighterThanClassic) {
  for (double q : {0.001, 0.004, 0.1, 1.0}) {
    for (double sigma : {0.6, 1.1, 5.0}) {
      for (int64_t steps : {1, 100, 10000}) {
        const PrivacySpent e = spent(q, sigma, steps);
        EXPECT_LT(e.balle, e.classic) << "q " << q << " sigma " << sigma << " steps " << steps;
        EXPECT_GT(e.balle, 0.0);
      }
    }
  }
}

TEST(RdpAccountant, SolvedNoiseMultiplierIsTheSmallestThatMeetsTheTarget) {
  struct Case {
    double target;
    double q;
    int64_t steps;
  };
  const Case cases[] = {{1.0, 0.004, 3750}, {2.0, 0.004, 15000}, {8.0, 0.01, 1000}, {3.0, 1.0, 10}};
  for (const Case& c : cases) {
    const double sigma = solve_noise_multiplier(c.target, kDelta, c.q, c.steps);
    EXPECT_LE(spent(c.q, sigma, c.steps).balle, c.target) << "target " << c.target;
    EXPECT_GT(spent(c.q, sigma * (1 - 1e-3), c.steps).balle, c.target) << "target " << c.target;
  }
}

TEST(RdpAccountant, SolverRejectsBadArguments) {
  EXPECT_NE(
      usage_error([] { solve_noise_multiplier(0.0, kDelta, 0.01, 10); }).find("target_epsilon 0"),
      std::string::npos);
  EXPECT_NE(usage_error([] {
              solve_noise_multiplier(0.05, kDelta, 0.01, 10);
            }).find("least epsilon any noise reaches"),
            std::string::npos);
  EXPECT_NE(usage_error([] { solve_noise_multiplier(1.0, 0.0, 0.01, 10); }).find("delta 0"),
            std::string::npos);
  EXPECT_NE(usage_error([] { solve_noise_multiplier(1.0, kDelta, 0.0, 10); }).find("q 0"),
            std::string::npos);
  EXPECT_NE(usage_error([] { solve_noise_multiplier(1.0, kDelta, 0.01, 0); }).find("steps 0"),
            std::string::npos);
}

TEST(RdpAccountant, RejectsBadArguments) {
  RdpAccountant acc;
  EXPECT_NE(usage_error([&] { acc.step(1.5, 1.0); }).find("q 1.5"), std::string::npos);
  EXPECT_NE(usage_error([&] { acc.step(0.1, 0.0); }).find("sigma 0"), std::string::npos);
  EXPECT_NE(usage_error([&] { acc.step(0.1, 1.0, -1); }).find("count -1"), std::string::npos);
  EXPECT_NE(usage_error([&] { acc.epsilon(1.0); }).find("delta 1"), std::string::npos);
  EXPECT_NE(usage_error([] { sampled_gaussian_rdp(0.1, 1.0, 1.0); }).find("alpha 1"),
            std::string::npos);
  EXPECT_NE(usage_error([] {
              RdpAccountant bad({2.0, 0.5});
            }).find("alpha 0.5"),
            std::string::npos);
  EXPECT_EQ(acc.steps(), 0);
}

TEST(RdpAccountant, StateRoundTripsBitForBit) {
  RdpAccountant acc;
  acc.step(256.0 / 60000.0, 1.12, 1234);
  acc.step(0.1 / 3.0, 0.7 + 1e-13, 77);
  acc.step(1.0, 5.0, 3);
  const RdpAccountantState state = acc.state();
  const std::map<std::string, std::string> map = state.to_map();
  const RdpAccountantState back = RdpAccountantState::from_map(map);
  EXPECT_EQ(back, state);
  RdpAccountant restored;
  restored.restore(back);
  EXPECT_EQ(restored.steps(), acc.steps());
  const PrivacySpent a = acc.epsilon(kDelta);
  const PrivacySpent b = restored.epsilon(kDelta);
  EXPECT_EQ(a.classic, b.classic);
  EXPECT_EQ(a.balle, b.balle);
  EXPECT_EQ(a.balle_order, b.balle_order);
  // Both go on identically.
  acc.step(0.01, 1.0, 10);
  restored.step(0.01, 1.0, 10);
  EXPECT_EQ(acc.epsilon(kDelta).balle, restored.epsilon(kDelta).balle);
}

TEST(RdpAccountant, MalformedStateIsRejectedAndChangesNothing) {
  RdpAccountant acc;
  acc.step(0.01, 1.0, 5);
  std::map<std::string, std::string> map = acc.state().to_map();
  auto without_phases = map;
  without_phases.erase("phases");
  EXPECT_NE(usage_error([&] {
              RdpAccountantState::from_map(without_phases);
            }).find("'phases' is missing"),
            std::string::npos);
  auto bad_number = map;
  bad_number["orders"] = "1.5,2x";
  EXPECT_NE(usage_error([&] { RdpAccountantState::from_map(bad_number); }).find("'2x'"),
            std::string::npos);
  auto bad_phase = map;
  bad_phase["phases"] = "0.1,1.0";
  EXPECT_NE(usage_error([&] { RdpAccountantState::from_map(bad_phase); }).find("not q,sigma,steps"),
            std::string::npos);
  RdpAccountantState out_of_range = acc.state();
  out_of_range.phases.push_back({2.0, 1.0, 3});
  EXPECT_NE(usage_error([&] { acc.restore(out_of_range); }).find("q 2"), std::string::npos);
  EXPECT_EQ(acc.steps(), 5);
}

TEST(RdpAccountant, WouldExceedStopsBeforeTheBudgetIsSpent) {
  RdpAccountant acc;
  acc.step(0.004, 1.1, 1000);
  RdpAccountant ahead = acc;
  ahead.step(0.004, 1.1, 500);
  const double budget = ahead.epsilon(kDelta).balle;
  EXPECT_FALSE(acc.would_exceed(budget, kDelta, 0.004, 1.1, 500));
  EXPECT_TRUE(acc.would_exceed(budget, kDelta, 0.004, 1.1, 501));
  EXPECT_FALSE(acc.would_exceed(budget, kDelta, 0.004, 1.1, 0));
  // A noisier step at the same rate costs less.
  EXPECT_FALSE(acc.would_exceed(budget, kDelta, 0.004, 2.0, 501));
  // Asking changes nothing.
  EXPECT_EQ(acc.steps(), 1000);
  EXPECT_EQ(acc.state().phases.size(), 1u);
}

}  // namespace
}  // namespace dtrain::privacy
