// Sequential's fused steps (Linear + ReLU, ReLU + MaxPool2d) give the same
// bits as running the layers one by one: output and every parameter's
// gradient, on a LeNet-5-shaped model with a nested MLP head.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "testing/gradcheck.h"

namespace dtrain::nn {

using testing::same_bits;

namespace {

std::unique_ptr<Sequential> lenet_like() {
  Rng rng(5);
  auto model = std::make_unique<Sequential>();
  model->add(std::make_unique<Conv2d>(1, 4, 5, rng, 1, 2));
  model->add(std::make_unique<ReLU>());
  model->add(std::make_unique<MaxPool2d>(2));
  model->add(std::make_unique<Conv2d>(4, 6, 3, rng));
  model->add(std::make_unique<ReLU>());
  model->add(std::make_unique<MaxPool2d>(2));
  model->add(std::make_unique<Flatten>());
  auto head = std::make_unique<Sequential>();
  head->add(std::make_unique<Linear>(6 * 2 * 2, 12, rng));
  head->add(std::make_unique<ReLU>());
  head->add(std::make_unique<Linear>(12, 10, rng));
  head->add(std::make_unique<ReLU>());  // a trailing ReLU fuses too
  model->add("head", std::move(head));
  return model;
}

TEST(SequentialFusion, FusedStepsGiveTheUnfusedBits) {
  const Tensor x = testing::random_tensor({3, 1, 12, 12}, 7);
  std::vector<Tensor> outputs;
  std::vector<std::vector<Tensor>> grads;
  for (const bool fused : {true, false}) {
    auto model = lenet_like();
    model->set_fusion(fused);
    Variable y = model->forward(Variable(x));
    Variable r(testing::random_tensor(y.shape(), 8), false);
    sum(mul(y, r)).backward();
    outputs.push_back(y.data());
    grads.emplace_back();
    for (const Variable& p : model->parameters()) grads.back().push_back(p.grad());
  }
  EXPECT_TRUE(same_bits(outputs[0], outputs[1]));
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) {
    EXPECT_TRUE(same_bits(grads[0][i], grads[1][i])) << "parameter " << i;
  }
}

TEST(SequentialFusion, LayersAddedAfterAForwardJoinThePlan) {
  Rng rng(3);
  Sequential model;
  model.add(std::make_unique<Linear>(4, 3, rng));
  const Tensor x = testing::random_tensor({2, 4}, 9);
  const Variable before = model.forward(Variable(x));
  model.add(std::make_unique<ReLU>());
  const Variable after = model.forward(Variable(x));
  for (int64_t i = 0; i < after.data().numel(); ++i) {
    EXPECT_EQ(after.data().data()[i], std::max(before.data().data()[i], 0.0f));
  }
}

}  // namespace
// The forward pre-hook sees every leaf layer once, in order, before it runs
// (nested Sequentials pass it on and are not seen themselves), fused or
// not; a throwing hook stops forward before that layer.
TEST(SequentialFusion, ForwardPreHookSeesEveryLeafLayerInOrderBeforeItRuns) {
  auto model = lenet_like();
  std::vector<std::string> want;
  for (const auto& [name, child] : model->named_children()) {
    if (auto* nested = dynamic_cast<Sequential*>(child)) {
      for (const auto& [inner, leaf] : nested->named_children()) want.push_back(leaf->name());
    } else {
      want.push_back(child->name());
    }
  }
  ASSERT_EQ(want.size(), 11u);
  Rng rng(9);
  Tensor x = Tensor::empty({2, 1, 12, 12});
  for (float& v : x.span()) v = rng.normal();
  std::vector<std::string> seen;
  model->set_forward_pre_hook([&](Module& layer) { seen.push_back(layer.name()); });
  for (const bool fusion : {true, false}) {
    model->set_fusion(fusion);
    seen.clear();
    (void)model->forward(Variable(x));
    EXPECT_EQ(seen, want) << "fusion " << fusion;
  }
  model->set_forward_pre_hook([](Module& layer) {
    if (layer.name() == "head.0") throw UsageError("stop before head.0");
  });
  EXPECT_THROW((void)model->forward(Variable(x)), UsageError);
  model->set_forward_pre_hook({});
  (void)model->forward(Variable(x));
}

}  // namespace dtrain::nn
