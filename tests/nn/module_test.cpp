#include "nn/module.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "testing/expect_error.h"

namespace dtrain::nn {
namespace {

using testing::expect_usage_error;
// Expects fn() to throw UsageError whose message contains `part`.
template <class Fn>
void expect_usage_error_containing(Fn&& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "expected UsageError containing: " << part;
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

std::vector<std::string> names_of(const auto& named) {
  std::vector<std::string> names;
  for (const auto& entry : named) names.push_back(entry.first);
  return names;
}

// conv -> relu -> pool -> flatten -> fc1 -> bn -> relu -> fc2, with a nested
// Sequential to exercise dotted paths.
std::unique_ptr<Sequential> small_cnn(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<Sequential>();
  auto& features = model->add("features", std::make_unique<Sequential>());
  features.add(std::make_unique<Conv2d>(1, 4, 3, rng));
  features.add(std::make_unique<ReLU>());
  features.add(std::make_unique<MaxPool2d>(2));
  model->add("flatten", std::make_unique<Flatten>());
  model->add("fc1", std::make_unique<Linear>(4 * 3 * 3, 8, rng));
  model->add("bn", std::make_unique<BatchNorm1d>(8));
  model->add("act", std::make_unique<ReLU>());
  model->add("drop", std::make_unique<Dropout>(0.25f, rng));
  model->add("fc2", std::make_unique<Linear>(8, 3, rng));
  return model;
}

TEST(Module, ParametersAreNamedByDottedPathInRegistrationOrder) {
  auto model = small_cnn(1);
  const std::vector<std::string> expected = {"features.0.weight", "features.0.bias", "fc1.weight",
                                             "fc1.bias",          "bn.weight",       "bn.bias",
                                             "fc2.weight",        "fc2.bias"};
  EXPECT_EQ(names_of(model->named_parameters()), expected);
  EXPECT_EQ(names_of(model->named_buffers()),
            (std::vector<std::string>{"bn.running_mean", "bn.running_var"}));

  const auto params = model->parameters();
  const auto named = model->named_parameters();
  ASSERT_EQ(params.size(), named.size());
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(params[i].data().same_storage(named[i].second.data())) << named[i].first;
    EXPECT_TRUE(params[i].requires_grad());
  }
  EXPECT_EQ(model->num_parameters(), 4 * 9 + 4 + 36 * 8 + 8 + 8 + 8 + 8 * 3 + 3);
}

TEST(Module, ChildrenKnowTheirPathForMessages) {
  auto model = small_cnn(1);
  auto& features = static_cast<Sequential&>(*model->named_children()[0].second);
  EXPECT_EQ(features[0].name(), "features.0");
  EXPECT_EQ(features[0].label(), "conv2d 'features.0'");
  EXPECT_EQ(model->label(), "sequential");
  model->set_name("net");
  EXPECT_EQ(features[0].label(), "conv2d 'net.features.0'");
  // Parameter names stay relative to the module asked.
  EXPECT_EQ(model->named_parameters()[0].first, "features.0.weight");
}

TEST(Module, StateDictAliasesParametersThenBuffersWithExtraStateInMetadata) {
  auto model = small_cnn(2);
  const StateDict dict = model->state_dict();
  std::vector<std::string> expected = names_of(model->named_parameters());
  for (const auto& name : names_of(model->named_buffers())) expected.push_back(name);
  EXPECT_EQ(names_of(dict.entries()), expected);
  EXPECT_EQ(dict.metadata().at("bn.num_batches_tracked"), "0");
  EXPECT_TRUE(dict.metadata().count("drop.rng"));

  // Aliasing: writing through the dict changes the model.
  dict.at("fc2.bias").fill(7.0f);
  for (float v : model->named_parameters()[7].second.data().to_vector()) EXPECT_EQ(v, 7.0f);
}

TEST(Module, StateDictRoundTripsIntoAModelBuiltFromAnotherSeed) {
  auto source = small_cnn(3);
  auto target = small_cnn(4);
  source->state_dict().at("bn.running_var").fill(2.5f);
  StateDict saved = source->state_dict().clone();
  saved.metadata()["bn.num_batches_tracked"] = "17";
  target->load_state_dict(saved);

  const StateDict loaded = target->state_dict();
  for (const auto& [name, tensor] : saved) {
    const Tensor& got = loaded.at(name);
    ASSERT_EQ(got.shape(), tensor.shape()) << name;
    EXPECT_EQ(std::memcmp(got.data(), tensor.data(), sizeof(float) * tensor.numel()), 0) << name;
    EXPECT_FALSE(got.same_storage(tensor)) << name << " must be copied, not aliased";
  }
  EXPECT_EQ(loaded.metadata().at("bn.num_batches_tracked"), "17");
  EXPECT_EQ(loaded.metadata().at("drop.rng"), saved.metadata().at("drop.rng"));
}

TEST(Module, LoadStateDictNamesTheMissingKey) {
  auto model = small_cnn(1);
  StateDict partial;
  for (const auto& [name, tensor] : model->state_dict()) {
    if (name != "fc2.bias") partial.insert(name, tensor.clone());
  }
  partial.metadata() = model->state_dict().metadata();
  expect_usage_error(
      [&] { model->load_state_dict(partial); },
      "sequential: load_state_dict: missing key 'fc2.bias' (pass strict=false to keep the "
      "current value)");

  // Not strict: the rest loads and fc2.bias keeps its value.
  const std::vector<float> bias_before = model->state_dict().at("fc2.bias").to_vector();
  partial.at("fc1.weight").fill(0.5f);
  model->load_state_dict(partial, /*strict=*/false);
  EXPECT_EQ(model->state_dict().at("fc1.weight").to_vector()[0], 0.5f);
  EXPECT_EQ(model->state_dict().at("fc2.bias").to_vector(), bias_before);
}

TEST(Module, LoadStateDictNamesAnUnexpectedKey) {
  auto model = small_cnn(1);
  StateDict extra = model->state_dict().clone();
  extra.insert("fc3.weight", Tensor::zeros({2, 2}));
  expect_usage_error_containing([&] { model->load_state_dict(extra); },
                                "unexpected key 'fc3.weight'");
  model->load_state_dict(extra, /*strict=*/false);  // ignored when not strict
}

TEST(Module, LoadStateDictShapeMismatchNamesBothShapesAndChangesNothing) {
  auto model = small_cnn(1);
  StateDict wrong = model->state_dict().clone();
  for (auto& entry : wrong) entry.second.fill(9.0f);
  StateDict bad;
  for (const auto& [name, tensor] : wrong) {
    bad.insert(name, name == "fc2.weight" ? Tensor::zeros({3, 9}) : tensor);
  }
  bad.metadata() = wrong.metadata();
  const StateDict before = model->state_dict().clone();
  expect_usage_error(
      [&] { model->load_state_dict(bad, /*strict=*/false); },
      "sequential: load_state_dict: 'fc2.weight' has shape (3, 9) in the state dict but (3, 8) "
      "in the model");
  // Nothing was copied, although fc1 etc. came before fc2 and fit.
  for (const auto& [name, tensor] : model->state_dict()) {
    EXPECT_EQ(tensor.to_vector(), before.at(name).to_vector()) << name;
  }
}

TEST(Module, LoadStateDictRejectsMalformedOrMissingExtraState) {
  auto model = small_cnn(1);
  StateDict dict = model->state_dict().clone();
  dict.metadata()["bn.num_batches_tracked"] = "twelve";
  expect_usage_error([&] { model->load_state_dict(dict); },
                     "batch_norm1d 'bn': extra state 'num_batches_tracked' is 'twelve', expected a "
                     "non-negative integer");
  dict.metadata()["bn.num_batches_tracked"] = "3";
  dict.metadata()["drop.rng"] = "123";
  expect_usage_error_containing([&] { model->load_state_dict(dict); },
                                "dropout 'drop': extra state 'rng' is '123'");
  dict.metadata().erase("drop.rng");
  expect_usage_error([&] { model->load_state_dict(dict); },
                     "sequential: load_state_dict: missing metadata key 'drop.rng'");
  model->load_state_dict(dict, /*strict=*/false);
  EXPECT_EQ(model->state_dict().metadata().at("bn.num_batches_tracked"), "3");
}

// A module with its own registrations, to test the protected API.
class Probe : public Module {
 public:
  Probe() : Module("probe") {}
  Variable forward(const Variable& input) override { return input; }
  Shape output_shape(const Shape& input) const override { return input; }
  using Module::register_buffer;
  using Module::register_module;
  using Module::register_parameter;
};

TEST(Module, RejectsDuplicateAndDottedNames) {
  Probe probe;
  probe.register_parameter("w", Tensor::zeros({2}));
  expect_usage_error([&] { probe.register_buffer("w", Tensor::zeros({2})); },
                     "probe: duplicate entry name 'w'");
  expect_usage_error([&] { probe.register_module("w", std::make_unique<ReLU>()); },
                     "probe: duplicate entry name 'w'");
  expect_usage_error([&] { probe.register_parameter("a.b", Tensor::zeros({2})); },
                     "probe: invalid entry name 'a.b' (must be non-empty and contain no '.')");
  expect_usage_error([&] { probe.register_parameter("", Tensor::zeros({2})); },
                     "probe: invalid entry name '' (must be non-empty and contain no '.')");
}

TEST(Module, TrainAndEvalReachEveryDescendant) {
  auto model = small_cnn(1);
  model->eval();
  auto& features = static_cast<Sequential&>(*model->named_children()[0].second);
  EXPECT_FALSE(model->is_training());
  EXPECT_FALSE(features[2].is_training());
  model->train();
  EXPECT_TRUE(features[2].is_training());
  // A child added later takes its parent's mode.
  model->eval();
  auto& late = model->add("late", std::make_unique<ReLU>());
  EXPECT_FALSE(late.is_training());
}

TEST(Module, OutputShapeChainsAndNamesTheFailingLayer) {
  Rng rng(1);
  Sequential model;
  model.add("fc1", std::make_unique<Linear>(784, 300, rng));
  model.add("act", std::make_unique<ReLU>());
  model.add("fc2", std::make_unique<Linear>(784, 256, rng));
  expect_usage_error(
      [&] {
        model.output_shape({128, 784});
      },
      "linear 'fc2': input (128, 300) does not match weight (256, 784)");

  auto cnn = small_cnn(1);
  EXPECT_EQ(cnn->output_shape({5, 1, 8, 8}), (Shape{5, 3}));
  expect_usage_error(
      [&] {
        cnn->output_shape({5, 2, 8, 8});
      },
      "conv2d 'features.0': input (5, 2, 8, 8) does not match weight (4, 1, 3, 3) (expects "
      "[N, 1, H, W])");
}

TEST(Module, ForwardChecksShapesWithTheSameMessage) {
  Rng rng(1);
  Sequential model;
  model.add("fc1", std::make_unique<Linear>(784, 300, rng));
  model.add("fc2", std::make_unique<Linear>(784, 256, rng));
  Variable x(Tensor::zeros({128, 784}));
  expect_usage_error([&] { model.forward(x); },
                     "linear 'fc2': input (128, 300) does not match weight (256, 784)");
}

TEST(Module, ForwardMatchesOutputShapeAndZeroGradDropsGradients) {
  auto model = small_cnn(5);
  Rng data_rng(9);
  Tensor x = Tensor::empty({6, 1, 8, 8});
  for (float& v : x.span()) v = data_rng.normal();
  const Variable y = model->forward(Variable(x));
  EXPECT_EQ(y.shape(), model->output_shape(x.shape()));
  sum(y).backward();
  for (const auto& [name, p] : model->named_parameters()) EXPECT_TRUE(p.has_grad()) << name;
  model->zero_grad();
  for (const auto& [name, p] : model->named_parameters()) EXPECT_FALSE(p.has_grad()) << name;
}

TEST(Module, GradReadyHooksRegisteredOnParametersFireDuringBackward) {
  auto model = small_cnn(6);
  auto params = model->parameters();
  std::vector<int> fired(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].register_grad_ready_hook([&fired, i](Variable& p) {
      EXPECT_TRUE(p.grad().defined());
      ++fired[i];
    });
  }
  Tensor x = Tensor::full({4, 1, 8, 8}, 0.5f);
  x.data()[3] = -1.0f;
  sum(model->forward(Variable(x))).backward();
  EXPECT_EQ(fired, std::vector<int>(params.size(), 1));
}

}  // namespace
}  // namespace dtrain::nn
