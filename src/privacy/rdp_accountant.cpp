#include "privacy/rdp_accountant.h"

#include <math.h>  // lgamma_r (POSIX; not in <cmath>)

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numbers>
#include <string_view>
#include <system_error>
#include <utility>

#include "core/error.h"

namespace dtrain::privacy {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)).
double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(-std::abs(a - b)));
}

// log(exp(a) - exp(b)) for a >= b.
double log_sub(double a, double b) {
  DTRAIN_CHECK(a >= b, "log_sub: the result would be negative (log a {} < log b {})", a, b);
  if (b == kNegInf) return a;
  if (a == b) return kNegInf;
  return a + std::log1p(-std::exp(b - a));
}

// log(erfc(x)). erfc underflows past x ~ 26; beyond x = 25 the asymptotic
// series erfc(x) = exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(2x^2)^2 - ...)
// is used, whose sixth term is below 1e-13 there.
double log_erfc(double x) {
  if (x < 25.0) return std::log(std::erfc(x));
  const double inv = 1.0 / (2.0 * x * x);
  double term = 1.0;
  double sum = 1.0;
  for (int k = 1; k <= 6; ++k) {
    term *= -(2.0 * k - 1.0) * inv;
    sum += term;
  }
  return -x * x - std::log(x) - 0.5 * std::log(std::numbers::pi) + std::log(sum);
}

// lgamma without the write to the global signgam that POSIX lgamma makes:
// accountants in several threads of one process (ranks as threads) would
// race on it. glibc's lgamma is this same function with &signgam.
double log_gamma(double x) {
  int sign = 0;
  return lgamma_r(x, &sign);
}

// log A_alpha for integer alpha (Mironov et al. 2019, section 3.2):
//   A_alpha = sum_{k=0}^{alpha} C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2)).
double log_a_integer(double q, double sigma, int64_t alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double a = static_cast<double>(alpha);
  double log_a = kNegInf;
  for (int64_t k = 0; k <= alpha; ++k) {
    const double kd = static_cast<double>(k);
    const double log_binom = log_gamma(a + 1) - log_gamma(kd + 1) - log_gamma(a - kd + 1);
    const double log_term =
        log_binom + kd * log_q + (a - kd) * log_1mq + (kd * kd - kd) / (2.0 * sigma * sigma);
    log_a = log_add(log_a, log_term);
  }
  return log_a;
}

// log A_alpha for fractional alpha (Mironov et al. 2019, section 3.3). The
// integral of mu_0 (mu / mu_0)^alpha is split at z0, where q mu_1 = (1-q) mu_0
// (z0 = sigma^2 log(1/q - 1) + 1/2); on each side the binomial series of
// (1 + ratio)^alpha converges, giving two series A = A_0 + A_1 with terms
//   s0_i = C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2))
//          * erfc((i - z0) / (sqrt(2) sigma)) / 2,
//   s1_i = C(alpha, i) q^(alpha-i) (1-q)^i exp((j^2 - j) / (2 sigma^2))
//          * erfc((z0 - j) / (sqrt(2) sigma)) / 2,   j = alpha - i.
// C(alpha, i) changes sign past i = alpha, so terms are added or subtracted in
// log space by the sign of the coefficient. Past i = alpha the terms alternate
// in sign and shrink only polynomially (about i^-(alpha+2)): for q = 0.5,
// alpha = 1.1 some 10^4 of them. Summation stops past i = alpha once both
// terms fall below exp(-30) (1e-13) of the partial sum, which, for an
// alternating series, bounds the truncation error by as much.
double log_a_fractional(double q, double sigma, double alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double z0 = sigma * sigma * (std::log1p(-q) - log_q) + 0.5;
  const double sqrt2_sigma = std::numbers::sqrt2 * sigma;
  const double two_sigma2 = 2.0 * sigma * sigma;
  double log_a0 = kNegInf;
  double log_a1 = kNegInf;
  double log_abs_binom = 0.0;  // log |C(alpha, 0)|
  bool binom_positive = true;
  constexpr int64_t kMaxTerms = 1'000'000;
  for (int64_t i = 0; i < kMaxTerms; ++i) {
    const double id = static_cast<double>(i);
    const double j = alpha - id;
    const double log_t0 = log_abs_binom + id * log_q + j * log_1mq;
    const double log_t1 = log_abs_binom + j * log_q + id * log_1mq;
    const double log_e0 = std::log(0.5) + log_erfc((id - z0) / sqrt2_sigma);
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / sqrt2_sigma);
    const double log_s0 = log_t0 + (id * id - id) / two_sigma2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / two_sigma2 + log_e1;
    if (binom_positive) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    const double log_sum = log_add(log_a0, log_a1);
    if (id > alpha && std::max(log_s0, log_s1) < log_sum - 30.0) return log_sum;
    // C(alpha, i + 1) = C(alpha, i) (alpha - i) / (i + 1).
    const double factor = (alpha - id) / (id + 1.0);
    log_abs_binom += std::log(std::abs(factor));
    if (factor < 0) binom_positive = !binom_positive;
  }
  DTRAIN_CHECK(false, "sampled Gaussian RDP series did not converge (q {}, sigma {}, alpha {})", q,
               sigma, alpha);
  return 0;
}

void check_q_sigma(double q, double sigma) {
  if (!(q >= 0.0 && q <= 1.0)) {
    throw UsageError(fmt::format("sampled Gaussian RDP: q {} is outside [0, 1]", q));
  }
  if (!(sigma > 0.0 && std::isfinite(sigma))) {
    throw UsageError(
        fmt::format("sampled Gaussian RDP: sigma {} is not a positive finite number", sigma));
  }
}

void check_alpha(double alpha) {
  if (!(alpha > 1.0 && std::isfinite(alpha))) {
    throw UsageError(fmt::format("RDP order alpha {} is not a finite number > 1", alpha));
  }
}

void check_delta(double delta) {
  if (!(delta > 0.0 && delta < 1.0)) {
    throw UsageError(fmt::format("delta {} is outside (0, 1)", delta));
  }
}

std::string format_double(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  DTRAIN_CHECK(ec == std::errc(), "to_chars failed for {}", v);
  return std::string(buf, end);
}

template <typename T>
T parse_number(std::string_view text, const std::string& key) {
  T v{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    throw UsageError(fmt::format("RDP accountant state: '{}' holds '{}', not a number", key, text));
  }
  return v;
}

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  if (text.empty()) return out;
  size_t start = 0;
  while (true) {
    const size_t pos = text.find(sep, start);
    out.push_back(text.substr(start, pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

}  // namespace

std::vector<double> default_rdp_orders() {
  std::vector<double> orders;
  orders.reserve(150);
  for (int x = 1; x <= 99; ++x) orders.push_back(1.0 + x / 10.0);
  for (int a = 12; a <= 63; ++a) orders.push_back(a);
  return orders;
}

double sampled_gaussian_rdp(double q, double sigma, double alpha) {
  check_q_sigma(q, sigma);
  check_alpha(alpha);
  if (q == 0.0) return 0.0;
  if (q == 1.0) return alpha / (2.0 * sigma * sigma);
  const double log_a = alpha == std::floor(alpha) && alpha < 1e6
                           ? log_a_integer(q, sigma, static_cast<int64_t>(alpha))
                           : log_a_fractional(q, sigma, alpha);
  return log_a / (alpha - 1.0);
}

std::vector<double> sampled_gaussian_rdp(double q, double sigma, int64_t steps,
                                         std::span<const double> orders) {
  if (steps < 0) throw UsageError(fmt::format("sampled Gaussian RDP: steps {} < 0", steps));
  std::vector<double> out;
  out.reserve(orders.size());
  for (double alpha : orders) {
    out.push_back(static_cast<double>(steps) * sampled_gaussian_rdp(q, sigma, alpha));
  }
  return out;
}

PrivacySpent rdp_to_epsilon(std::span<const double> orders, std::span<const double> rdp,
                            double delta) {
  check_delta(delta);
  if (orders.size() != rdp.size() || orders.empty()) {
    throw UsageError(fmt::format("rdp_to_epsilon: {} orders but {} RDP values (need as many, > 0)",
                                 orders.size(), rdp.size()));
  }
  PrivacySpent out;
  out.classic = std::numeric_limits<double>::infinity();
  out.balle = std::numeric_limits<double>::infinity();
  const double log_delta = std::log(delta);
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    check_alpha(a);
    const double classic = rdp[i] - log_delta / (a - 1.0);
    const double balle = rdp[i] - (log_delta + std::log(a)) / (a - 1.0) + std::log1p(-1.0 / a);
    if (classic < out.classic) {
      out.classic = classic;
      out.classic_order = a;
    }
    if (balle < out.balle) {
      out.balle = balle;
      out.balle_order = a;
    }
  }
  return out;
}

std::map<std::string, std::string> RdpAccountantState::to_map() const {
  std::string o;
  for (size_t i = 0; i < orders.size(); ++i) {
    if (i > 0) o += ',';
    o += format_double(orders[i]);
  }
  std::string p;
  for (size_t i = 0; i < phases.size(); ++i) {
    if (i > 0) p += ';';
    p += format_double(phases[i].q) + ',' + format_double(phases[i].sigma) + ',' +
         std::to_string(phases[i].steps);
  }
  return {{"orders", o}, {"phases", p}};
}

RdpAccountantState RdpAccountantState::from_map(const std::map<std::string, std::string>& map) {
  RdpAccountantState state;
  const auto orders_it = map.find("orders");
  const auto phases_it = map.find("phases");
  if (orders_it == map.end()) throw UsageError("RDP accountant state: key 'orders' is missing");
  if (phases_it == map.end()) throw UsageError("RDP accountant state: key 'phases' is missing");
  for (std::string_view o : split(orders_it->second, ',')) {
    state.orders.push_back(parse_number<double>(o, "orders"));
  }
  for (std::string_view p : split(phases_it->second, ';')) {
    const auto fields = split(p, ',');
    if (fields.size() != 3) {
      throw UsageError(
          fmt::format("RDP accountant state: 'phases' entry '{}' is not q,sigma,steps", p));
    }
    state.phases.push_back({parse_number<double>(fields[0], "phases"),
                            parse_number<double>(fields[1], "phases"),
                            parse_number<int64_t>(fields[2], "phases")});
  }
  return state;
}

RdpAccountant::RdpAccountant() : RdpAccountant(default_rdp_orders()) {}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)) {
  if (orders_.empty()) throw UsageError("RDP accountant: no orders");
  for (double a : orders_) check_alpha(a);
}

void RdpAccountant::step(double q, double sigma, int64_t count) {
  check_q_sigma(q, sigma);
  if (count < 0) throw UsageError(fmt::format("RDP accountant: step count {} < 0", count));
  if (count == 0) return;
  for (Phase& p : phases_) {
    if (p.phase.q == q && p.phase.sigma == sigma) {
      p.phase.steps += count;
      steps_ += count;
      return;
    }
  }
  Phase p{{q, sigma, count}, sampled_gaussian_rdp(q, sigma, 1, orders_)};
  phases_.push_back(std::move(p));
  steps_ += count;
}

std::vector<double> RdpAccountant::total_rdp() const {
  std::vector<double> total(orders_.size(), 0.0);
  for (const Phase& p : phases_) {
    const double steps = static_cast<double>(p.phase.steps);
    for (size_t i = 0; i < total.size(); ++i) total[i] += steps * p.rdp_per_step[i];
  }
  return total;
}

PrivacySpent RdpAccountant::epsilon(double delta) const {
  check_delta(delta);
  const std::vector<double> total = total_rdp();
  if (std::all_of(total.begin(), total.end(), [](double r) { return r == 0.0; })) return {};
  return rdp_to_epsilon(orders_, total, delta);
}

bool RdpAccountant::would_exceed(double target_epsilon, double delta, double q, double sigma,
                                 int64_t more_steps) const {
  check_delta(delta);
  if (more_steps < 0) {
    throw UsageError(fmt::format("RDP accountant: more_steps {} < 0", more_steps));
  }
  // The same arithmetic as stepping and asking, so the answer agrees with
  // epsilon() after those steps bit for bit.
  RdpAccountant after = *this;
  after.step(q, sigma, more_steps);
  return after.epsilon(delta).balle > target_epsilon;
}

RdpAccountantState RdpAccountant::state() const {
  RdpAccountantState s;
  s.orders = orders_;
  for (const Phase& p : phases_) s.phases.push_back(p.phase);
  return s;
}

void RdpAccountant::restore(const RdpAccountantState& state) {
  RdpAccountant fresh(state.orders);
  for (const RdpPhase& p : state.phases) {
    if (p.steps < 1) {
      throw UsageError(fmt::format("RDP accountant state: a phase (q {}, sigma {}) has {} steps",
                                   p.q, p.sigma, p.steps));
    }
    fresh.step(p.q, p.sigma, p.steps);
  }
  if (fresh.phases_.size() != state.phases.size()) {
    throw UsageError("RDP accountant state: two phases have the same (q, sigma)");
  }
  *this = std::move(fresh);
}

double solve_noise_multiplier(double target_epsilon, double delta, double q, int64_t steps) {
  if (!(target_epsilon > 0.0 && std::isfinite(target_epsilon))) {
    throw UsageError(
        fmt::format("solve_noise_multiplier: target_epsilon {} is not a positive finite number",
                    target_epsilon));
  }
  if (!(delta > 0.0 && delta < 1.0)) {
    throw UsageError(fmt::format("solve_noise_multiplier: delta {} is outside (0, 1)", delta));
  }
  if (!(q > 0.0 && q <= 1.0)) {
    throw UsageError(fmt::format("solve_noise_multiplier: q {} is outside (0, 1]", q));
  }
  if (steps < 1) {
    throw UsageError(fmt::format("solve_noise_multiplier: steps {} < 1", steps));
  }
  const std::vector<double> orders = default_rdp_orders();
  // As sigma grows the RDP goes to 0 and epsilon to the conversion's floor.
  const std::vector<double> zeros(orders.size(), 0.0);
  const double floor = rdp_to_epsilon(orders, zeros, delta).balle;
  if (target_epsilon <= floor) {
    throw UsageError(fmt::format(
        "solve_noise_multiplier: target_epsilon {} is not above {:.4f}, the least epsilon any "
        "noise reaches at delta {} over the default orders",
        target_epsilon, floor, delta));
  }
  const auto eps = [&](double sigma) {
    return rdp_to_epsilon(orders, sampled_gaussian_rdp(q, sigma, steps, orders), delta).balle;
  };
  // Bracket: eps(lo) > target >= eps(hi).
  double hi = 1.0;
  while (eps(hi) > target_epsilon) {
    hi *= 2.0;
    DTRAIN_CHECK(hi < 1e12, "solve_noise_multiplier: no bracket (target {}, floor {})",
                 target_epsilon, floor);
  }
  double lo = hi / 2.0;
  while (eps(lo) <= target_epsilon) {
    hi = lo;
    lo /= 2.0;
    if (lo < 1e-6) return hi;
  }
  while (hi - lo > 1e-5 * hi) {
    const double mid = 0.5 * (lo + hi);
    if (eps(mid) > target_epsilon) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return hi;
}

}  // namespace dtrain::privacy
