// The privacy accountant of DP-SGD: Rényi differential privacy (RDP) of the
// sampled Gaussian mechanism, composed over training steps and converted to an
// (epsilon, delta) guarantee.
//
// One step of DP-SGD samples each example with probability q (Poisson
// sampling), clips each example's gradient to norm C and adds Gaussian noise of
// standard deviation sigma * C to the sum: the sampled Gaussian mechanism with
// noise multiplier sigma. Its RDP at order alpha (Mironov 2017, "Rényi
// Differential Privacy") is computed as in Mironov, Talwar and Zhang 2019,
// "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
// (arXiv:1908.10530): a binomial sum for integer orders, the two series of
// section 3.3 for fractional orders, both in log space. RDP composes by
// addition, so T steps cost T times one step, and phases with different
// (q, sigma) add up. docs/privacy.md gives the formulas and the published
// figures this is checked against.
//
// Ownership: RdpAccountant is a value (copyable); it owns its phases and their
// memoised per-order RDP. Thread safety: none; one owner (the trainer) calls
// it, or the caller locks. Errors: UsageError for arguments out of range,
// naming the argument and its value. Nothing blocks.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace dtrain::privacy {

// Opacus's DEFAULT_ALPHAS (opacus/accountants/rdp.py; the same list as TF
// Privacy's compute_dp_sgd_privacy): 1 + x / 10 for x = 1..99, then 12..63.
// 150 orders, ascending, all > 1.
std::vector<double> default_rdp_orders();

// RDP at order `alpha` of one step of the sampled Gaussian mechanism with
// sampling rate `q` in [0, 1] and noise multiplier `sigma` > 0 (sensitivity 1).
// q = 0 gives 0; q = 1 gives the Gaussian mechanism's alpha / (2 sigma^2).
// `alpha` > 1, finite. Throws UsageError otherwise.
double sampled_gaussian_rdp(double q, double sigma, double alpha);

// RDP of `steps` steps at each order of `orders`: steps * sampled_gaussian_rdp.
std::vector<double> sampled_gaussian_rdp(double q, double sigma, int64_t steps,
                                         std::span<const double> orders);

// An (epsilon, delta) guarantee from RDP, by two conversions, each with the
// order that minimised it.
//   classic: Mironov 2017 Proposition 3,
//            epsilon = rdp(alpha) + log(1/delta) / (alpha - 1);
//   balle:   Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi
//            Differential Privacy", Theorem 21,
//            epsilon = rdp(alpha) - (log delta + log alpha) / (alpha - 1)
//                      + log((alpha - 1) / alpha).
// balle < classic at every order (their difference, log(alpha) / (alpha - 1)
// - log(1 - 1/alpha), is positive); the budget is spent by `balle`.
struct PrivacySpent {
  double classic = 0;
  double classic_order = 0;
  double balle = 0;
  double balle_order = 0;
};

// Converts per-order RDP (`rdp[i]` at `orders[i]`) for `delta` in (0, 1).
// Throws UsageError for a bad delta or mismatched lengths.
PrivacySpent rdp_to_epsilon(std::span<const double> orders, std::span<const double> rdp,
                            double delta);

// All steps taken at one (q, sigma), whether consecutive or not.
struct RdpPhase {
  double q = 0;
  double sigma = 0;
  int64_t steps = 0;

  bool operator==(const RdpPhase&) const = default;
};

// The accountant's checkpointable state: the orders and the phases, in the
// order they were first used. Restoring it recomputes the same sums in the
// same order, so epsilon comes back bit for bit.
struct RdpAccountantState {
  std::vector<double> orders;
  std::vector<RdpPhase> phases;

  // Exact text form (shortest round-trip decimal of each double) for a
  // checkpoint's string map: keys "orders", "phases" (q,sigma,steps;...).
  std::map<std::string, std::string> to_map() const;
  // Throws UsageError naming the key when a value is missing or malformed.
  static RdpAccountantState from_map(const std::map<std::string, std::string>& map);

  bool operator==(const RdpAccountantState&) const = default;
};

class RdpAccountant {
 public:
  // `orders`: each > 1 and finite (UsageError otherwise); the default is
  // default_rdp_orders().
  RdpAccountant();
  explicit RdpAccountant(std::vector<double> orders);

  // Accounts `count` >= 0 steps at sampling rate q in [0, 1] and noise
  // multiplier sigma > 0. A (q, sigma) seen before (bit-equal) adds to its
  // phase and reuses its memoised RDP, so a step costs O(1) after the first.
  void step(double q, double sigma, int64_t count = 1);

  // The guarantee after all steps so far, for delta in (0, 1). With no steps,
  // or only steps at q = 0, it is exactly 0 for both conversions, with order
  // 0 (nothing was released), not the conversions' positive slack. Cost:
  // phases x orders additions.
  PrivacySpent epsilon(double delta) const;

  // Whether `more_steps` further steps at (q, sigma) would bring the Balle
  // epsilon above `target_epsilon`: the trainer's hard stop, asked before a
  // step. Does not change the accountant.
  bool would_exceed(double target_epsilon, double delta, double q, double sigma,
                    int64_t more_steps) const;

  // Total steps over all phases.
  int64_t steps() const { return steps_; }
  const std::vector<double>& orders() const { return orders_; }

  RdpAccountantState state() const;
  // Replaces this accountant's state. Throws UsageError for invalid contents
  // (an order <= 1, a phase out of range) and leaves the accountant unchanged.
  void restore(const RdpAccountantState& state);

 private:
  struct Phase {
    RdpPhase phase;
    std::vector<double> rdp_per_step;  // at each of orders_
  };

  // Sum over phases of steps * rdp_per_step, at each order.
  std::vector<double> total_rdp() const;

  std::vector<double> orders_;
  std::vector<Phase> phases_;
  int64_t steps_ = 0;
};

// The smallest noise multiplier (to relative tolerance 1e-4; the result errs
// above) whose Balle epsilon over the default orders after `steps` steps at
// sampling rate `q` is <= `target_epsilon`. Finds its own bracket, then
// bisects. Throws UsageError naming the argument for target_epsilon <= 0,
// delta outside (0, 1), q outside (0, 1], steps < 1, and for a target below
// what any sigma reaches (the conversion's floor, which it states).
double solve_noise_multiplier(double target_epsilon, double delta, double q, int64_t steps);

}  // namespace dtrain::privacy
