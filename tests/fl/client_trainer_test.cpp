#include "fl/client_trainer.h"

#include <gtest/gtest.h>

#include <numeric>

#include "fl/flat_model.h"
#include "fl/sampling.h"
#include "sim_fixtures.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

using fixtures::blobs;
using fixtures::full_batch_gradient;
using fixtures::linear_model;
using fixtures::same_bits;

constexpr int64_t kFeatures = 6, kClasses = 3;

LocalTraining sgd(int64_t epochs, int64_t batch, float lr, double mu = 0.0) {
  LocalTraining t;
  t.epochs = epochs;
  t.batch = batch;
  t.proximal_mu = mu;
  t.optimizer.type = "sgd";
  t.optimizer.lr = lr;
  return t;
}

std::vector<int64_t> range(int64_t from, int64_t count) {
  std::vector<int64_t> v(static_cast<size_t>(count));
  std::iota(v.begin(), v.end(), from);
  return v;
}

class ClientTrainerTest : public ::testing::Test {
 protected:
  data::TensorDataset data_ = blobs(60, kFeatures, kClasses);
  ModelFactory make_ = linear_model(kFeatures, kClasses);
  std::vector<float> global_ = flatten(*make_());
};

TEST(LocalSteps, EpochsTimesBatches) {
  EXPECT_EQ(local_steps(20, sgd(3, 5, 0.1f)), 12);
  EXPECT_EQ(local_steps(21, sgd(3, 5, 0.1f)), 15);  // a short last batch
  EXPECT_EQ(local_steps(4, sgd(2, 10, 0.1f)), 2);
  EXPECT_EQ(local_steps(21, sgd(3, 0, 0.1f)), 3);  // B = infinity
  EXPECT_EQ(local_steps(0, sgd(3, 5, 0.1f)), 0);
}

TEST_F(ClientTrainerTest, OneFullBatchEpochIsOneGradientStep) {
  ClientTrainer trainer(make_, data_);
  const auto indices = range(5, 17);
  Rng rng(1);
  const ClientUpdate u = trainer.train(3, 2, global_, indices, sgd(1, 0, 0.1f), rng);
  EXPECT_EQ(u.client, 3);
  EXPECT_EQ(u.round, 2);
  EXPECT_EQ(u.samples, 17);
  EXPECT_EQ(u.steps, 1);
  EXPECT_FALSE(u.partial);
  double loss = 0.0;
  const auto grad = full_batch_gradient(make_, data_, global_, indices, &loss);
  EXPECT_NEAR(u.loss, loss, 1e-6);
  ASSERT_EQ(u.delta.size(), grad.size());
  for (size_t i = 0; i < grad.size(); ++i) EXPECT_NEAR(u.delta[i], -0.1f * grad[i], 1e-6) << i;
}

TEST_F(ClientTrainerTest, ProximalTermMatchesTwoHandComputedSteps) {
  // w1 = w0 - lr g(w0);  w2 = w1 - lr (g(w1) + mu (w1 - w0)).
  const float lr = 0.2f, mu = 0.5f;
  const auto indices = range(0, 20);
  ClientTrainer trainer(make_, data_);
  Rng rng(1);
  const ClientUpdate u = trainer.train(0, 1, global_, indices, sgd(2, 0, lr, mu), rng);
  EXPECT_EQ(u.steps, 2);

  std::vector<float> w = global_;
  auto g = full_batch_gradient(make_, data_, w, indices);
  for (size_t i = 0; i < w.size(); ++i) w[i] -= lr * g[i];
  g = full_batch_gradient(make_, data_, w, indices);
  for (size_t i = 0; i < w.size(); ++i) w[i] -= lr * (g[i] + mu * (w[i] - global_[i]));
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(u.delta[i], w[i] - global_[i], 1e-6) << i;
}

TEST_F(ClientTrainerTest, MuZeroIsPlainFedAvgBitForBit) {
  ClientTrainer a(make_, data_), b(make_, data_);
  const auto indices = range(10, 23);
  Rng ra = client_rng(5, 1, 2), rb = client_rng(5, 1, 2);
  LocalTraining prox = sgd(3, 4, 0.1f, 0.0);
  const ClientUpdate ua = a.train(2, 1, global_, indices, sgd(3, 4, 0.1f), ra);
  const ClientUpdate ub = b.train(2, 1, global_, indices, prox, rb);
  EXPECT_TRUE(same_bits(ua.delta, ub.delta));
  EXPECT_EQ(ua.loss, ub.loss);
}

TEST_F(ClientTrainerTest, ProximalTermPullsTowardTheGlobalModel) {
  // Separable blobs keep pushing a linear model's weights outward; with
  // lr * mu = 0.5 every step pulls half of the distance back.
  ClientTrainer trainer(make_, data_);
  const auto indices = range(0, 30);
  Rng r1(4), r2(4);
  const ClientUpdate plain = trainer.train(0, 1, global_, indices, sgd(20, 0, 0.5f), r1);
  const ClientUpdate prox = trainer.train(0, 1, global_, indices, sgd(20, 0, 0.5f, 1.0), r2);
  EXPECT_LT(fixtures::norm(prox.delta), 0.8 * fixtures::norm(plain.delta));
  EXPECT_GT(fixtures::norm(prox.delta), 0.0);
}

TEST_F(ClientTrainerTest, MaxStepsStopsEarlyAsPartialWork) {
  ClientTrainer trainer(make_, data_);
  const auto indices = range(0, 20);
  LocalTraining t = sgd(3, 5, 0.1f);
  const int64_t full = local_steps(20, t);
  t.max_steps = straggler_steps(full, 5.0);
  Rng rng(2);
  const ClientUpdate u = trainer.train(1, 1, global_, indices, t, rng);
  EXPECT_EQ(u.steps, 3);
  EXPECT_TRUE(u.partial);
  t.max_steps = full;
  Rng rng2(2);
  const ClientUpdate whole = trainer.train(1, 1, global_, indices, t, rng2);
  EXPECT_EQ(whole.steps, 12);
  EXPECT_FALSE(whole.partial);
  EXPECT_FALSE(same_bits(u.delta, whole.delta));
}

TEST_F(ClientTrainerTest, ReusedTrainerCarriesNothingBetweenClients) {
  // Momentum state must not leak from one client to the next.
  LocalTraining t = sgd(2, 4, 0.1f);
  t.optimizer.momentum = 0.9f;
  ClientTrainer reused(make_, data_), fresh(make_, data_);
  Rng r0(1), r1(2), r2(2);
  reused.train(0, 1, global_, range(0, 16), t, r0);
  const ClientUpdate second = reused.train(1, 1, global_, range(16, 16), t, r1);
  const ClientUpdate alone = fresh.train(1, 1, global_, range(16, 16), t, r2);
  EXPECT_TRUE(same_bits(second.delta, alone.delta));
}

TEST_F(ClientTrainerTest, ReusedTrainerReseedsDropoutPerClient) {
  // Dropout's generator is extra state, outside the flat weights: a client's
  // masks must come from its own Rng, not from whoever trained before it.
  const ModelFactory make = fixtures::mlp_model(kFeatures, 8, kClasses, 7, 0.5f);
  const std::vector<float> global = flatten(*make());
  const LocalTraining t = sgd(2, 4, 0.1f);
  ClientTrainer reused(make, data_), fresh(make, data_);
  Rng r0(1), r1(2), r2(2);
  reused.train(0, 1, global, range(0, 16), t, r0);
  const ClientUpdate second = reused.train(1, 1, global, range(16, 16), t, r1);
  const ClientUpdate alone = fresh.train(1, 1, global, range(16, 16), t, r2);
  EXPECT_TRUE(same_bits(second.delta, alone.delta));
  // Other client streams give other masks.
  Rng r3(3);
  EXPECT_FALSE(same_bits(fresh.train(1, 1, global, range(16, 16), t, r3).delta, alone.delta));
}

TEST_F(ClientTrainerTest, NoSamplesGivesAnEmptyUpdate) {
  ClientTrainer trainer(make_, data_);
  Rng rng(1);
  const ClientUpdate u = trainer.train(4, 1, global_, {}, sgd(1, 10, 0.1f), rng);
  EXPECT_EQ(u.samples, 0);
  EXPECT_EQ(u.steps, 0);
  EXPECT_EQ(u.delta, std::vector<float>(global_.size(), 0.0f));
}

TEST_F(ClientTrainerTest, RefusesBadInputsNamingTheClient) {
  ClientTrainer trainer(make_, data_);
  Rng rng(1);
  const std::vector<int64_t> bad = {1, 60};
  testing::expect_usage_error([&] { trainer.train(4, 2, global_, bad, sgd(1, 10, 0.1f), rng); },
                              "client 4, round 2: sample index 60 outside the dataset of 60");
  const std::vector<float> short_weights(3, 0.0f);
  testing::expect_usage_error(
      [&] { trainer.train(4, 2, short_weights, range(0, 3), sgd(1, 10, 0.1f), rng); },
      "client 4, round 2: global weights have 3 values, the model 21");
}

TEST_F(ClientTrainerTest, CountCorrectIsArgmaxAgreement) {
  ClientTrainer trainer(make_, data_);
  const auto indices = range(0, 60);
  auto model = make_();
  const data::TensorDataset all = data_.subset(indices);
  const Tensor out = model->forward(Variable(all.features())).data();
  int64_t expected = 0;
  for (int64_t i = 0; i < 60; ++i) {
    int64_t best = 0;
    for (int64_t c = 1; c < kClasses; ++c) {
      if (out.at({i, c}) > out.at({i, best})) best = c;
    }
    expected += best == all.labels()[static_cast<size_t>(i)];
  }
  EXPECT_EQ(trainer.count_correct(global_, indices), expected);
  // Trained weights classify the blobs better than the initial ones.
  Rng rng(1);
  ClientUpdate u = trainer.train(0, 1, global_, indices, sgd(20, 10, 0.1f), rng);
  std::vector<float> trained = global_;
  for (size_t i = 0; i < trained.size(); ++i) trained[i] += u.delta[i];
  EXPECT_GT(trainer.count_correct(trained, indices), 50);
}

}  // namespace
}  // namespace dtrain::fl
