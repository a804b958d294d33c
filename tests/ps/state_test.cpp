// pull_state / load_state: a job's state does not depend on the number of
// servers, and a job resumed from it continues as the original would.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;

StateDict model_of(uint64_t seed) {
  Rng rng(seed);
  StateDict model;
  model.insert("w", dtrain::testing::normal_tensor({9, 4}, rng));
  model.insert("b", dtrain::testing::normal_tensor({4}, rng));
  return model;
}

std::vector<Tensor> gradient(uint64_t seed) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : model_of(seed)) out.push_back(t);
  return out;
}

const std::vector<SparseTableSpec> kTables{{"emb", 3, 0.1f}};

// One sync step of sparse and dense pushes (rows first: the servers hold them
// for the version the dense push closes).
void train_step(Client& c, uint64_t step) {
  const std::vector<uint64_t> keys{step, 7, 123456789012345ull + step};
  Rng rng(step);
  c.push_rows(0, keys, dtrain::testing::normal_tensor({3, 3}, rng), 0.05f, step);
  c.push(gradient(1000 + step), 8, 0.01f, step);
}

std::vector<Tensor> pulled(Client& c, uint64_t version) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : model_of(0)) out.push_back(Tensor::zeros(t.shape()));
  EXPECT_EQ(c.pull(out, version), version);
  return out;
}

TEST(PsState, ResumesWithAnotherServerCountAndContinuesIdentically) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.optimizer.type = "adam";
  options.optimizer.lr = 0.01f;
  options.seed = 5;
  PsJob two(2, 1, options);
  auto a = two.client(0);
  a->init(model_of(1), kTables);
  for (uint64_t step = 0; step < 3; ++step) train_step(*a, step);
  const PsState saved = a->pull_state();
  EXPECT_EQ(saved.version, 3u);
  EXPECT_EQ(saved.optimizer.metadata().at("optimizer"), "adam");
  EXPECT_EQ(saved.optimizer.metadata().at("state.1.step"), "3");
  EXPECT_EQ(saved.optimizer.at("state.0.exp_avg").shape(), (Shape{9, 4}));
  EXPECT_EQ(saved.sparse.at("emb.keys").shape(), (Shape{7, 4}));  // 3 steps x 3 keys, 7 shared
  EXPECT_EQ(saved.sparse.at("emb.steps").shape(), (Shape{7}));

  PsJob one(1, 1, options);
  auto b = one.client(0);
  b->init(model_of(2), kTables);  // other values: load_state replaces them
  b->load_state(saved);
  const PsState loaded = b->pull_state();
  EXPECT_EQ(loaded.version, saved.version);
  for (const auto& [name, t] : saved.dense)
    EXPECT_EQ(loaded.dense.at(name).to_vector(), t.to_vector());
  for (const auto& [name, t] : saved.optimizer) {
    EXPECT_EQ(loaded.optimizer.at(name).to_vector(), t.to_vector()) << name;
  }
  EXPECT_EQ(loaded.optimizer.metadata(), saved.optimizer.metadata());
  for (const auto& [name, t] : saved.sparse)
    EXPECT_EQ(loaded.sparse.at(name).to_vector(), t.to_vector()) << name;

  // One more step on both: the same parameters, bit for bit.
  train_step(*a, 3);
  train_step(*b, 3);
  const auto pa = pulled(*a, 4);
  const auto pb = pulled(*b, 4);
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i].to_vector(), pb[i].to_vector());
  const std::vector<uint64_t> keys{0, 1, 2, 3, 7, 123456789012345ull + 3};
  Tensor ra = Tensor::zeros({6, 3}), rb = Tensor::zeros({6, 3});
  a->pull_rows(0, keys, ra);
  b->pull_rows(0, keys, rb);
  EXPECT_EQ(ra.to_vector(), rb.to_vector());
}

TEST(PsState, LoadStateRejectsAMismatchedModelAndChangesNothing) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  PsJob job(2, 1, options);
  auto c = job.client(0);
  c->init(model_of(1), kTables);
  const PsState before = c->pull_state();
  PsState wrong = before;
  wrong.dense = StateDict();
  wrong.dense.insert("w", Tensor::zeros({4, 9}));
  wrong.dense.insert("b", Tensor::zeros({4}));
  dtrain::testing::expect_usage_error(
      [&] { c->load_state(wrong); }, "ps load_state: 'w' has shape (4, 9), tensor 0 'w' is (9, 4)");
  const PsState after = c->pull_state();
  for (const auto& [name, t] : before.dense)
    EXPECT_EQ(after.dense.at(name).to_vector(), t.to_vector());
}

}  // namespace
}  // namespace dtrain::ps
