// The fused functions (linear_relu, relu_max_pool2d): each against central
// finite differences, and against the unfused composition it replaces, bit
// for bit in the output and every gradient.
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "autograd/functions.h"
#include "testing/gradcheck.h"

namespace dtrain {
namespace {

using testing::gradcheck;
using testing::GradcheckOptions;
using testing::Ramp;
using testing::random_tensor;
using testing::same_bits;
using testing::shuffled_ramp;
using V = std::vector<Variable>;

// Runs f and g on fresh leaves over `inputs`, backward through sum(out * r),
// and expects identical outputs and gradients.
void expect_same_bits(const testing::GradFn& f, const testing::GradFn& g,
                      const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  std::vector<std::vector<Tensor>> grads;
  for (const testing::GradFn* fn : {&f, &g}) {
    V leaves;
    for (const Tensor& t : inputs) leaves.emplace_back(t.clone(), true);
    Variable y = (*fn)(leaves);
    Variable r(random_tensor(y.shape(), 99), false);
    sum(mul(y, r)).backward();
    out.push_back(y.data());
    grads.emplace_back();
    for (const Variable& leaf : leaves) grads.back().push_back(leaf.grad());
  }
  EXPECT_TRUE(same_bits(out[0], out[1]));
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_TRUE(same_bits(grads[0][i], grads[1][i])) << "input " << i;
  }
}

TEST(FusedFunctions, LinearReluGradcheck) {
  GradcheckOptions options;
  options.eps = 1e-3f;  // the inputs keep the products clear of ReLU's kink by more
  EXPECT_TRUE(gradcheck(
      [](const V& v) { return linear_relu(v[0], v[1], v[2]); },
      {shuffled_ramp({4, 3}, 1, Ramp::kCentred), random_tensor({5, 3}, 2), random_tensor({5}, 3)},
      options));
  EXPECT_TRUE(gradcheck([](const V& v) { return linear_relu(v[0], v[1], Variable()); },
                        {random_tensor({2, 6}, 4), random_tensor({3, 6}, 5)}, options));
}

TEST(FusedFunctions, LinearReluMatchesLinearThenRelu) {
  const std::vector<Tensor> in = {random_tensor({7, 9}, 6), random_tensor({11, 9}, 7),
                                  random_tensor({11}, 8)};
  expect_same_bits([](const V& v) { return linear_relu(v[0], v[1], v[2]); },
                   [](const V& v) { return relu(linear(v[0], v[1], v[2])); }, in);
}

TEST(FusedFunctions, ReluMaxPoolGradcheck) {
  GradcheckOptions options;
  options.eps = 1e-2f;  // below half the 0.1 spacing: no argmax or sign changes
  const std::vector<Tensor> in = {shuffled_ramp({2, 3, 6, 5}, 9, Ramp::kCentred)};
  const std::vector<Tensor> wide = {shuffled_ramp({1, 2, 4, 22}, 10, Ramp::kCentred)};
  EXPECT_TRUE(gradcheck([](const V& v) { return relu_max_pool2d(v[0], 2, 2); }, in, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return relu_max_pool2d(v[0], 2, 2); }, wide, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return relu_max_pool2d(v[0], 3, 2, 1); }, in, options));
}

TEST(FusedFunctions, ReluMaxPoolMatchesReluThenMaxPool) {
  // Random values, negative ones included, so that whole windows die; and
  // exact zeros and ties, where the argmax rules of both paths must agree.
  Tensor x = random_tensor({3, 4, 10, 12}, 11);
  for (int64_t i = 0; i < x.numel(); i += 7) x.data()[i] = 0.0f;
  for (int64_t i = 3; i < x.numel(); i += 13) x.data()[i] = x.data()[i - 1];
  struct Window {
    int64_t kernel, stride, padding;
  };
  for (const Window w : {Window{2, 2, 0}, Window{3, 2, 1}, Window{3, 1, 1}}) {
    SCOPED_TRACE(w.kernel);
    expect_same_bits(
        [w](const V& v) { return relu_max_pool2d(v[0], w.kernel, w.stride, w.padding); },
        [w](const V& v) { return max_pool2d(relu(v[0]), w.kernel, w.stride, w.padding); }, {x});
  }
}

}  // namespace
}  // namespace dtrain
