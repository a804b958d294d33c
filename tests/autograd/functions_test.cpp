// Every function in autograd/functions.h against central finite differences.
#include "autograd/functions.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "tensor/intra_op.h"
#include "testing/gradcheck.h"

namespace dtrain {
namespace {

using testing::gradcheck;
using testing::GradcheckOptions;
using testing::random_tensor;
using testing::shuffled_ramp;
using V = std::vector<Variable>;

// Values in [0.2, 1] with random sign: at least 0.2 away from relu's kink.
Tensor away_from_zero(const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(shape, seed, 0.2f, 1.0f);
  Tensor signs = random_tensor(shape, seed + 1);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (signs.data()[i] < 0) t.data()[i] = -t.data()[i];
  }
  return t;
}

TEST(Gradcheck, ArithmeticSameShape) {
  const std::vector<Tensor> in = {random_tensor({3, 4}, 1), random_tensor({3, 4}, 2, 0.5f, 2.0f)};
  EXPECT_TRUE(gradcheck([](const V& v) { return add(v[0], v[1]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return sub(v[0], v[1]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return mul(v[0], v[1]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return div(v[0], v[1]); }, in));
}

TEST(Gradcheck, ArithmeticBroadcastRowAndScalar) {
  for (const Shape& b_shape : {Shape{4}, Shape{1}, Shape{3, 4}, Shape{}}) {
    SCOPED_TRACE(shape_str(b_shape));
    const std::vector<Tensor> in = {random_tensor({2, 3, 4}, 3),
                                    random_tensor(b_shape, 4, 0.5f, 2.0f)};
    EXPECT_TRUE(gradcheck([](const V& v) { return add(v[0], v[1]); }, in));
    EXPECT_TRUE(gradcheck([](const V& v) { return sub(v[0], v[1]); }, in));
    EXPECT_TRUE(gradcheck([](const V& v) { return mul(v[0], v[1]); }, in));
    EXPECT_TRUE(gradcheck([](const V& v) { return div(v[0], v[1]); }, in));
  }
}

TEST(Gradcheck, UnaryArithmetic) {
  const std::vector<Tensor> in = {random_tensor({5, 3}, 5)};
  const std::vector<Tensor> positive = {random_tensor({5, 3}, 6, 0.5f, 2.0f)};
  EXPECT_TRUE(gradcheck([](const V& v) { return add_scalar(v[0], 2.5f); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return mul_scalar(v[0], -1.5f); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return neg(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return square(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return exp(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return log(v[0]); }, positive));
  EXPECT_TRUE(
      gradcheck([](const V& v) { return v[0] * 3.0f - v[0] / (v[0] * v[0] + v[0]); }, positive));
}

TEST(Gradcheck, MatmulAndLinear) {
  EXPECT_TRUE(gradcheck([](const V& v) { return matmul(v[0], v[1]); },
                        {random_tensor({4, 3}, 7), random_tensor({3, 5}, 8)}));
  EXPECT_TRUE(
      gradcheck([](const V& v) { return linear(v[0], v[1], v[2]); },
                {random_tensor({4, 3}, 9), random_tensor({5, 3}, 10), random_tensor({5}, 11)}));
  EXPECT_TRUE(gradcheck([](const V& v) { return linear(v[0], v[1], Variable()); },
                        {random_tensor({2, 6}, 12), random_tensor({3, 6}, 13)}));
}

TEST(Gradcheck, Activations) {
  const std::vector<Tensor> in = {away_from_zero({4, 5}, 14)};
  EXPECT_TRUE(gradcheck([](const V& v) { return relu(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return sigmoid(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return tanh(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return gelu(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return softmax(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return log_softmax(v[0]); }, in));
}

TEST(Gradcheck, DropoutWithFixedRng) {
  const std::vector<Tensor> in = {random_tensor({6, 7}, 15)};
  EXPECT_TRUE(gradcheck(
      [](const V& v) {
        Rng rng(99);
        return dropout(v[0], 0.4f, true, rng);
      },
      in));
}

TEST(Gradcheck, ReductionsAndShape) {
  const std::vector<Tensor> in = {random_tensor({3, 2, 4}, 16)};
  EXPECT_TRUE(gradcheck([](const V& v) { return sum(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return mean(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return sum_rows(v[0]); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return reshape(v[0], {4, -1}); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return flatten(v[0]); }, in));
}

TEST(Gradcheck, Conv2dStrideAndPadding) {
  struct Case {
    int64_t stride, padding, kernel;
  };
  for (const Case& c : {Case{1, 0, 3}, Case{2, 1, 3}, Case{1, 2, 5}, Case{2, 0, 2}}) {
    SCOPED_TRACE(::testing::Message() << "stride " << c.stride << " padding " << c.padding);
    EXPECT_TRUE(gradcheck([c](const V& v) { return conv2d(v[0], v[1], v[2], c.stride, c.padding); },
                          {random_tensor({2, 3, 7, 6}, 17),
                           random_tensor({4, 3, c.kernel, c.kernel}, 18), random_tensor({4}, 19)}));
  }
  EXPECT_TRUE(gradcheck([](const V& v) { return conv2d(v[0], v[1], Variable(), 1, 1); },
                        {random_tensor({1, 2, 4, 4}, 20), random_tensor({3, 2, 3, 3}, 21)}));
  // Only the input and the bias need gradients: forward keeps no columns.
  GradcheckOptions input_only;
  input_only.check = {true, false, true};
  EXPECT_TRUE(gradcheck(
      [](const V& v) { return conv2d(v[0], v[1], v[2], 2, 1); },
      {random_tensor({2, 2, 5, 6}, 22), random_tensor({3, 2, 3, 3}, 23), random_tensor({3}, 24)},
      input_only));
  // Stride 1 runs as an implicit GEMM whose weight gradient puts the output
  // channels in vector lanes: 17 channels fill two 8-lane strips and part of
  // a third (and one 16-lane strip plus part of another with AVX-512).
  EXPECT_TRUE(gradcheck([](const V& v) { return conv2d(v[0], v[1], v[2], 1, 1); },
                        {random_tensor({2, 2, 5, 4}, 28), random_tensor({17, 2, 3, 3}, 29),
                         random_tensor({17}, 30)}));
  // Wide rows (OW = 20) exercise the blocked row copies of im2col/col2im.
  EXPECT_TRUE(gradcheck(
      [](const V& v) { return conv2d(v[0], v[1], v[2], 1, 2); },
      {random_tensor({1, 1, 3, 20}, 25), random_tensor({2, 1, 5, 5}, 26), random_tensor({2}, 27)}));
}

TEST(Gradcheck, PoolingWithPadding) {
  const std::vector<Tensor> in = {shuffled_ramp({2, 3, 6, 5}, 22)};
  const std::vector<Tensor> wide = {shuffled_ramp({1, 2, 4, 22}, 23)};
  GradcheckOptions options;
  options.eps = 1e-2f;  // far below the 0.1 spacing: the argmax never changes
  EXPECT_TRUE(gradcheck([](const V& v) { return max_pool2d(v[0], 2, 2); }, in, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return max_pool2d(v[0], 2, 2); }, wide, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return max_pool2d(v[0], 3, 2, 1); }, in, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return max_pool2d(v[0], 3, 1, 1); }, in, options));
  EXPECT_TRUE(gradcheck([](const V& v) { return avg_pool2d(v[0], 2, 2); }, in));
  EXPECT_TRUE(gradcheck([](const V& v) { return avg_pool2d(v[0], 3, 2, 1); }, in));
}

// With 2 and 3 intra-op threads (tensor/intra_op.h): the threaded stride-1
// convolution (forward, input and weight gradients), max pooling and the
// dense layer split by rows (OpenBLAS at one thread, as the tests run), on a
// batch of 3 (uneven parts) and of 1 (fewer samples than threads).
TEST(Gradcheck, Conv2dMaxPoolAndLinearWithIntraOpThreads) {
  GradcheckOptions pool;
  pool.eps = 1e-2f;  // far below shuffled_ramp's 0.1 spacing
  for (int threads : {2, 3}) {
    SCOPED_TRACE(::testing::Message() << "threads " << threads);
    tensor::set_intra_op_threads(threads);
    for (int64_t batch : {3, 1}) {
      EXPECT_TRUE(gradcheck([](const V& v) { return conv2d(v[0], v[1], v[2], 1, 2); },
                            {random_tensor({batch, 2, 6, 5}, 40), random_tensor({7, 2, 5, 5}, 41),
                             random_tensor({7}, 42)}));
      EXPECT_TRUE(gradcheck([](const V& v) { return max_pool2d(v[0], 2, 2); },
                            {shuffled_ramp({batch, 3, 6, 4}, 43)}, pool));
      const std::vector<Tensor> dense = {random_tensor({batch, 5}, 44), random_tensor({4, 5}, 45),
                                         random_tensor({4}, 46)};
      EXPECT_TRUE(gradcheck([](const V& v) { return linear(v[0], v[1], v[2]); }, dense));
    }
  }
  tensor::set_intra_op_threads(1);
}

TEST(Gradcheck, BatchNormTrainingAndEvaluation) {
  for (const Shape& shape : {Shape{6, 3}, Shape{3, 2, 3, 4}}) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t channels = shape[1];
    const std::vector<Tensor> in = {random_tensor(shape, 23, -2.0f, 2.0f),
                                    random_tensor({channels}, 24, 0.5f, 1.5f),
                                    random_tensor({channels}, 25)};
    for (bool training : {true, false}) {
      SCOPED_TRACE(training ? "training" : "evaluation");
      GradcheckOptions options;
      options.eps = 5e-3f;
      EXPECT_TRUE(gradcheck(
          [channels, training](const V& v) {
            // Fresh running statistics per call, so every evaluation is identical.
            Tensor running_mean = Tensor::full({channels}, 0.1f);
            Tensor running_var = Tensor::full({channels}, 1.5f);
            return batch_norm(v[0], v[1], v[2], running_mean, running_var, training, 0.1f, 1e-5f);
          },
          in, options));
    }
  }
}

TEST(Gradcheck, EmbeddingSparseGradient) {
  const std::vector<int64_t> ids = {3, 1, 3, 0};
  EXPECT_TRUE(
      gradcheck([&ids](const V& v) { return embedding(v[0], ids); }, {random_tensor({5, 3}, 26)}));
}

TEST(Gradcheck, Losses) {
  const std::vector<int64_t> targets = {2, 0, 1, 2, 3};
  EXPECT_TRUE(gradcheck([&](const V& v) { return cross_entropy(v[0], targets); },
                        {random_tensor({5, 4}, 27, -2.0f, 2.0f)}));
  const std::vector<float> weights = {0.5f, 2.0f, 1.0f, 3.0f};
  EXPECT_TRUE(gradcheck([&](const V& v) { return cross_entropy(v[0], targets, weights); },
                        {random_tensor({5, 4}, 28, -2.0f, 2.0f)}));
  EXPECT_TRUE(gradcheck([](const V& v) { return mse_loss(v[0], v[1]); },
                        {random_tensor({4, 3}, 29), random_tensor({4, 3}, 30)}));
  EXPECT_TRUE(
      gradcheck([](const V& v) { return binary_cross_entropy_with_logits(v[0], v[1]); },
                {random_tensor({6, 1}, 31, -3.0f, 3.0f), random_tensor({6, 1}, 32, 0.0f, 1.0f)}));
}

TEST(Gradcheck, ComposedMlpAndConvNet) {
  const std::vector<int64_t> targets = {1, 0, 2};
  EXPECT_TRUE(gradcheck(
      [&](const V& v) {
        Variable h = relu(linear(v[0], v[1], v[2]));
        return cross_entropy(linear(h, v[3], v[4]), targets);
      },
      {random_tensor({3, 4}, 33), random_tensor({5, 4}, 34), random_tensor({5}, 35),
       random_tensor({3, 5}, 36), random_tensor({3}, 37)}));
}

}  // namespace
}  // namespace dtrain
