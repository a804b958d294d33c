// The RDP accountant's cost and its published-figure comparison. Prints, as
// JSON lines: the epsilon of each published DP-SGD MNIST setting (TF Privacy,
// Opacus) by both conversions beside the published figure; then medians over
// repetitions of the time of a new phase's first step (the sampled Gaussian
// RDP at the 150 default orders), of a memoised step followed by epsilon()
// (what the trainer does every epoch), and of solve_noise_multiplier.
// Usage: rdp_accountant_bench [REPS]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "privacy/rdp_accountant.h"

namespace {

using Clock = std::chrono::steady_clock;
using dtrain::privacy::PrivacySpent;
using dtrain::privacy::RdpAccountant;

template <typename F>
double median_us(int reps, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void published(const char* source, double q, double sigma, int64_t steps, double figure) {
  RdpAccountant acc;
  acc.step(q, sigma, steps);
  const PrivacySpent e = acc.epsilon(1e-5);
  std::printf(
      "{\"source\": \"%s\", \"q\": %.6f, \"sigma\": %.2f, \"steps\": %lld, \"published\": %.2f, "
      "\"classic\": %.4f, \"classic_order\": %.1f, \"balle\": %.4f, \"balle_order\": %.1f}\n",
      source, q, sigma, static_cast<long long>(steps), figure, e.classic, e.classic_order, e.balle,
      e.balle_order);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 21;
  const double tf_q = 256.0 / 60000.0;
  const auto tf_steps = [](double epochs) {
    return static_cast<int64_t>(std::ceil(epochs * 60000.0 / 256.0));
  };
  published("tf_privacy_2019a", tf_q, 1.12, tf_steps(60), 2.92);
  published("tf_privacy_2019a", tf_q, 1.2, tf_steps(10), 1.20);
  published("tf_privacy_2019a", tf_q, 0.6, tf_steps(30), 9.74);
  published("opacus_2021", 0.004, 0.7, 45 * 250, 6.86);
  published("opacus_2021", 0.004, 1.1, 60 * 250, 2.91);
  published("opacus_2021", 0.004, 1.3, 15 * 250, 1.16);
  published("tf_privacy_2019b", tf_q, 1.3, tf_steps(15), 1.19);
  published("tf_privacy_2019b", tf_q, 1.1, tf_steps(60), 3.01);
  published("tf_privacy_2019b", tf_q, 0.7, tf_steps(45), 7.10);
  // Opacus's README before March 2021: the 2019b figures beside batch 250.
  published("opacus_2020_b250", 250.0 / 60000.0, 0.7, 45 * 240, 7.10);
  published("opacus_2020_b250", 250.0 / 60000.0, 1.1, 60 * 240, 3.01);
  published("opacus_2020_b250", 250.0 / 60000.0, 1.3, 15 * 240, 1.19);

  for (const auto& [q, sigma] : std::vector<std::pair<double, double>>{
           {0.004, 1.1}, {0.004, 0.6}, {0.01, 4.0}, {0.1, 1.0}, {0.5, 1.0}}) {
    double sink = 0;
    const double first_us = median_us(reps, [&] {
      RdpAccountant acc;
      acc.step(q, sigma);
      sink += acc.epsilon(1e-5).balle;
    });
    RdpAccountant acc;
    acc.step(q, sigma);
    acc.step(0.002, 1.0);  // a second phase, as after a change of batch size
    const double memo_us = median_us(reps, [&] {
      acc.step(q, sigma, 250);
      sink += acc.epsilon(1e-5).balle;
    });
    std::printf(
        "{\"q\": %.3f, \"sigma\": %.1f, \"first_step_and_epsilon_us\": %.1f, "
        "\"memoised_step_and_epsilon_us\": %.2f, \"sink\": %d}\n",
        q, sigma, first_us, memo_us, sink > 0 ? 1 : 0);
  }
  for (const double target : {1.0, 3.0, 8.0}) {
    double sigma = 0;
    const double us = median_us(std::max(3, reps / 4), [&] {
      sigma = dtrain::privacy::solve_noise_multiplier(target, 1e-5, 0.004, 15000);
    });
    std::printf(
        "{\"solve_target_epsilon\": %.1f, \"q\": 0.004, \"steps\": 15000, \"sigma\": %.5f, "
        "\"ms\": %.2f}\n",
        target, sigma, us / 1000.0);
  }
  return 0;
}
