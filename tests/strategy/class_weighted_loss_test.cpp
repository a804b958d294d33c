// Class-weighted cross entropy (the loss of train.class_weights): its value
// against a hand computation, its gradient against central differences and,
// where /usr/bin/python3 has torch, both against torch's
// cross_entropy(weight=w, reduction="none").mean(); its additivity over
// workers (the sample-weighted mean of the parts' losses is the loss of the
// whole batch).
#include "strategy/class_weighted_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "testing/gradcheck.h"

namespace dtrain::strategy {
namespace {

const std::vector<int64_t> kTargets = {0, 2, 1, 2, 2, 0, 1};
const std::vector<float> kWeights = {0.5f, 2.0f, 1.25f};

// mean_j w[t_j] * (-log softmax(z_j)[t_j]), in double.
double reference_loss(const Tensor& z, const std::vector<int64_t>& t, const std::vector<float>& w) {
  const int64_t n = z.size(0), c = z.size(1);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = z.data() + i * c;
    double m = row[0];
    for (int64_t k = 1; k < c; ++k) m = std::max(m, double(row[k]));
    double s = 0.0;
    for (int64_t k = 0; k < c; ++k) s += std::exp(double(row[k]) - m);
    const double logp = double(row[t[size_t(i)]]) - m - std::log(s);
    total += double(w[size_t(t[size_t(i)])]) * -logp;
  }
  return total / double(n);
}

TEST(ClassWeightedLoss, IsTheMeanOfWeightedPerSampleLosses) {
  const Tensor z = testing::random_tensor({7, 3}, 21, -2.0f, 2.0f);
  const LossFn loss = class_weighted_cross_entropy_loss(kWeights);
  EXPECT_NEAR(loss(Variable(z), kTargets).item(), reference_loss(z, kTargets, kWeights), 1e-5);
}

TEST(ClassWeightedLoss, GradientMatchesCentralDifferences) {
  const LossFn loss = class_weighted_cross_entropy_loss(kWeights);
  EXPECT_TRUE(
      testing::gradcheck([&](const std::vector<Variable>& v) { return loss(v[0], kTargets); },
                         {testing::random_tensor({7, 3}, 22, -2.0f, 2.0f)}));
}

TEST(ClassWeightedLoss, AddsUpOverWorkersToTheWholeBatch) {
  // Two workers with 3 and 4 rows: (3 L_a + 4 L_b) / 7 = L of all 7 rows,
  // for the value and the gradient.
  const Tensor z = testing::random_tensor({7, 3}, 23, -2.0f, 2.0f);
  const LossFn loss = class_weighted_cross_entropy_loss(kWeights);
  Variable whole(z.clone(), true);
  loss(whole, kTargets).backward();
  Variable a(z.narrow(0, 3).clone(), true);
  Variable b(z.narrow(3, 4).clone(), true);
  const std::span<const int64_t> t(kTargets);
  Variable la = mul_scalar(loss(a, t.subspan(0, 3)), 3.0f / 7.0f);
  Variable lb = mul_scalar(loss(b, t.subspan(3, 4)), 4.0f / 7.0f);
  la.backward();
  lb.backward();
  EXPECT_NEAR(la.item() + lb.item(), loss(Variable(z), kTargets).item(), 1e-5);
  for (int64_t i = 0; i < 7 * 3; ++i) {
    const float split = i < 9 ? a.grad().data()[i] : b.grad().data()[i - 9];
    EXPECT_NEAR(split, whole.grad().data()[i], 1e-6) << i;
  }
}

TEST(ClassWeightedLoss, RejectsBadWeights) {
  EXPECT_THROW(class_weighted_cross_entropy_loss({1.0f, -1.0f}), UsageError);
  EXPECT_THROW(class_weighted_cross_entropy_loss({NAN}), UsageError);
  const LossFn two = class_weighted_cross_entropy_loss({1.0f, 1.0f});
  EXPECT_THROW(two(Variable(Tensor::zeros({2, 3})), std::vector<int64_t>{0, 1}), UsageError);
}

TEST(ClassWeightedLoss, MatchesTorchWeightedCrossEntropy) {
  if (std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 cannot import torch";
  }
  const Tensor z = testing::random_tensor({7, 3}, 24, -2.0f, 2.0f);
  std::ostringstream values;
  values.precision(9);
  for (float v : z.span()) values << v << ',';
  std::ostringstream targets;
  for (int64_t t : kTargets) targets << t << ',';
  std::ostringstream weights;
  weights.precision(9);
  for (float w : kWeights) weights << w << ',';
  const std::string command =
      "/usr/bin/python3 -c \"import torch, torch.nn.functional as F\n"
      "z = torch.tensor([" +
      values.str() +
      "], dtype=torch.float64).reshape(7, 3).requires_grad_()\n"
      "t = torch.tensor([" +
      targets.str() +
      "])\n"
      "w = torch.tensor([" +
      weights.str() +
      "], dtype=torch.float64)\n"
      "loss = F.cross_entropy(z, t, weight=w, reduction='none').mean()\n"
      "loss.backward()\n"
      "print(' '.join(repr(v) for v in [loss.item()] + z.grad.flatten().tolist()))\"";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[4096];
  while (size_t got = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, got);
  ASSERT_EQ(::pclose(pipe), 0) << command;
  std::istringstream fields(out);
  std::vector<double> want;
  for (double v = 0; fields >> v;) want.push_back(v);
  ASSERT_EQ(want.size(), 1u + 21u) << out;

  Variable logits(z.clone(), true);
  Variable loss = class_weighted_cross_entropy_loss(kWeights)(logits, kTargets);
  loss.backward();
  EXPECT_NEAR(loss.item(), want[0], 1e-5 * std::abs(want[0]));
  for (size_t i = 0; i < 21; ++i) EXPECT_NEAR(logits.grad().data()[i], want[i + 1], 1e-6) << i;
}

}  // namespace
}  // namespace dtrain::strategy
