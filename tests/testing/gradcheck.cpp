#include "testing/gradcheck.h"

#include <cmath>
#include <cstring>
#include <sstream>
#include <utility>

#include "autograd/functions.h"
#include "core/rng.h"

namespace dtrain::testing {
namespace {

double weighted_sum(const Tensor& y, const Tensor& r) {
  double total = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) total += static_cast<double>(y.data()[i]) * r.data()[i];
  return total;
}

}  // namespace

Tensor random_tensor(const Shape& shape, uint64_t seed, float low, float high) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape);
  for (float& v : t.span()) v = rng.uniform(low, high);
  return t;
}

Tensor shuffled_ramp(const Shape& shape, uint64_t seed, Ramp ramp) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  const int64_t n = t.numel();
  const float offset = ramp == Ramp::kCentred ? 0.5f - static_cast<float>(n / 2) : 0.0f;
  for (int64_t i = 0; i < n; ++i) t.data()[i] = 0.1f * (static_cast<float>(i) + offset);
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(t.data()[i], t.data()[rng.below(static_cast<uint64_t>(i + 1))]);
  }
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * sizeof(float)) == 0;
}

::testing::AssertionResult gradcheck(const GradFn& f, const std::vector<Tensor>& inputs,
                                     const GradcheckOptions& options) {
  auto checked = [&](size_t i) { return options.check.empty() || options.check[i]; };
  std::vector<Variable> leaves;
  for (size_t i = 0; i < inputs.size(); ++i) leaves.emplace_back(inputs[i].clone(), checked(i));
  Variable y = f(leaves);
  const Tensor weights = random_tensor(y.shape(), options.seed, 0.5f, 1.5f);
  Variable loss = sum(mul(y, Variable(weights)));
  loss.backward();

  std::ostringstream failures;
  int bad = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!checked(i)) continue;
    if (!leaves[i].has_grad()) {
      return ::testing::AssertionFailure() << "input " << i << " received no gradient";
    }
    const Tensor analytic = leaves[i].dense_grad();
    std::vector<Variable> probe;
    for (size_t j = 0; j < inputs.size(); ++j) probe.emplace_back(inputs[j].clone(), false);
    const Tensor& x = probe[i].data();
    for (int64_t e = 0; e < x.numel(); ++e) {
      const float saved = x.data()[e];
      double plus = 0.0;
      double minus = 0.0;
      {
        NoGradGuard no_grad;
        x.data()[e] = saved + options.eps;
        plus = weighted_sum(f(probe).data(), weights);
        x.data()[e] = saved - options.eps;
        minus = weighted_sum(f(probe).data(), weights);
      }
      x.data()[e] = saved;
      const double numeric = (plus - minus) / (2.0 * options.eps);
      const double got = analytic.data()[e];
      if (std::fabs(got - numeric) > options.atol + options.rtol * std::fabs(numeric)) {
        if (++bad <= 8) {
          failures << "\n  input " << i << " element " << e << ": analytic " << got << ", numeric "
                   << numeric;
        }
      }
    }
  }
  if (bad > 0) {
    return ::testing::AssertionFailure() << bad << " gradient elements differ" << failures.str();
  }
  return ::testing::AssertionSuccess();
}

}  // namespace dtrain::testing
