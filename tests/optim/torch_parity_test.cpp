// Each optimizer against torch.optim on the same parameters and gradients
// for 5 steps: after every step, every element within 1e-5 relative to
// max(|torch value|, 1). Skipped when /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "nn/optimizer.h"
#include "optim/adagrad.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "torch_reference.h"

namespace dtrain::optim {
namespace {

constexpr int kSteps = 5;

struct ParityCase {
  std::string name;
  std::function<std::unique_ptr<nn::Optimizer>(std::vector<Variable>)> make;
  std::string torch_optimizer;  // constructor expression over `params`
  bool sparse = false;          // sparse row gradients on a [6, 3] table
};

std::ostream& operator<<(std::ostream& os, const ParityCase& c) { return os << c.name; }

std::vector<float> normals(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = rng.normal();
  return v;
}

// Dense: parameters [4, 3] and [5]; parameter 1 has no gradient at step 2
// (it must be skipped, its state and step count untouched, as in torch).
// Sparse: one [6, 3] table; each step touches a few rows, with a duplicate.
class TorchParity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(TorchParity, MatchesTorchOptimForFiveSteps) {
  const ParityCase& c = GetParam();
  Rng rng(2024);
  const std::vector<Shape> shapes =
      c.sparse ? std::vector<Shape>{{6, 3}} : std::vector<Shape>{{4, 3}, {5}};
  std::vector<Variable> params;
  std::string script = testing::torch_preamble() + "params = [\n";
  for (const Shape& shape : shapes) {
    const std::vector<float> init = normals(shape_numel(shape), rng);
    params.emplace_back(Tensor::from_vector(init, shape), /*requires_grad=*/true);
    script +=
        fmt::format("    torch.tensor({}, dtype=torch.float32).reshape({}).requires_grad_(),\n",
                    testing::python_list(init), fmt::join(shape, ", "));
  }
  script += "]\nopt = " + c.torch_optimizer + "\nsteps = [\n";

  std::unique_ptr<nn::Optimizer> optimizer = c.make(params);
  std::vector<std::vector<float>> ours;
  for (int step = 0; step < kSteps; ++step) {
    script += "  [";
    if (c.sparse) {
      const std::vector<std::vector<int64_t>> rows = {{1, 4, 1}, {0, 5}, {2}, {4, 3, 4, 0}, {5}};
      const auto& indices = rows[static_cast<size_t>(step)];
      const std::vector<float> values = normals(static_cast<int64_t>(indices.size()) * 3, rng);
      SparseRows grad{indices,
                      Tensor::from_vector(values, {static_cast<int64_t>(indices.size()), 3}), 6};
      optimizer->rule().update_sparse(0, params[0].data(), grad);
      script += fmt::format("('sparse', [{}], {})", fmt::join(indices, ", "),
                            testing::python_list(values));
    } else {
      for (size_t i = 0; i < params.size(); ++i) {
        if (i == 1 && step == 2) {
          params[i].zero_grad();
          script += "None, ";
          continue;
        }
        const std::vector<float> g = normals(params[i].numel(), rng);
        params[i].set_grad(Tensor::from_vector(g, params[i].shape()));
        script += testing::python_list(g) + ", ";
      }
      optimizer->step();
    }
    script += "],\n";
    std::vector<float> flat;
    for (const auto& p : params) {
      for (float v : p.data().span()) flat.push_back(v);
    }
    ours.push_back(std::move(flat));
  }
  script +=
      "]\n"
      "def as_grad(g, p):\n"
      "    if g is None:\n"
      "        return None\n"
      "    if isinstance(g, tuple):\n"
      "        idx = torch.tensor([g[1]], dtype=torch.int64)\n"
      "        val = torch.tensor(g[2], dtype=torch.float32).reshape(len(g[1]), *p.shape[1:])\n"
      "        return torch.sparse_coo_tensor(idx, val, p.shape)\n"
      "    return torch.tensor(g, dtype=torch.float32).reshape(p.shape)\n"
      "for grads in steps:\n"
      "    for p, g in zip(params, grads):\n"
      "        p.grad = as_grad(g, p)\n"
      "    opt.step()\n"
      "    print(' '.join(repr(v) for p in params for v in p.detach().reshape(-1).tolist()))\n";

  const std::optional<std::string> output = testing::run_torch(script);
  if (!output) GTEST_SKIP() << "/usr/bin/python3 cannot import torch";
  const auto expected = testing::parse_rows(*output);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps)) << *output;
  for (int step = 0; step < kSteps; ++step) {
    const auto& want = expected[static_cast<size_t>(step)];
    const auto& got = ours[static_cast<size_t>(step)];
    ASSERT_EQ(want.size(), got.size()) << "step " << step;
    for (size_t j = 0; j < want.size(); ++j) {
      const float tolerance = 1e-5f * std::max(std::abs(want[j]), 1.0f);
      EXPECT_NEAR(got[j], want[j], tolerance) << "step " << step << " element " << j;
    }
  }
}

template <class Opt, class Options>
std::function<std::unique_ptr<nn::Optimizer>(std::vector<Variable>)> maker(Options options) {
  return [options](std::vector<Variable> params) {
    return nn::Optimizer::make<Opt>(std::move(params), options);
  };
}

std::vector<ParityCase> parity_cases() {
  std::vector<ParityCase> cases;
  cases.push_back({"sgd", maker<Sgd>(SgdOptions{.lr = 0.1f}), "torch.optim.SGD(params, lr=0.1)"});
  cases.push_back({"sgd_momentum_dampening_weight_decay",
                   maker<Sgd>(SgdOptions{
                       .lr = 0.05f, .momentum = 0.9f, .dampening = 0.1f, .weight_decay = 0.01f}),
                   "torch.optim.SGD(params, lr=0.05, momentum=0.9, dampening=0.1, "
                   "weight_decay=0.01)"});
  cases.push_back(
      {"sgd_nesterov",
       maker<Sgd>(
           SgdOptions{.lr = 0.05f, .momentum = 0.8f, .nesterov = true, .weight_decay = 1e-3f}),
       "torch.optim.SGD(params, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)"});
  cases.push_back(
      {"adam", maker<Adam>(AdamOptions{.lr = 0.01f}), "torch.optim.Adam(params, lr=0.01)"});
  cases.push_back(
      {"adam_betas_eps_weight_decay",
       maker<Adam>(AdamOptions{
           .lr = 0.02f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f, .weight_decay = 0.1f}),
       "torch.optim.Adam(params, lr=0.02, betas=(0.8, 0.99), eps=1e-6, "
       "weight_decay=0.1)"});
  cases.push_back({"adamw", maker<AdamW>(AdamOptions{.lr = 0.01f, .weight_decay = 0.05f}),
                   "torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)"});
  cases.push_back(
      {"adagrad",
       maker<Adagrad>(AdagradOptions{
           .lr = 0.1f, .lr_decay = 0.1f, .weight_decay = 0.01f, .initial_accumulator_value = 0.1f}),
       "torch.optim.Adagrad(params, lr=0.1, lr_decay=0.1, weight_decay=0.01, "
       "initial_accumulator_value=0.1)"});
  cases.push_back(
      {"sgd_sparse", maker<Sgd>(SgdOptions{.lr = 0.1f}), "torch.optim.SGD(params, lr=0.1)", true});
  cases.push_back({"sgd_momentum_sparse", maker<Sgd>(SgdOptions{.lr = 0.1f, .momentum = 0.9f}),
                   "torch.optim.SGD(params, lr=0.1, momentum=0.9)", true});
  cases.push_back({"adagrad_sparse",
                   maker<Adagrad>(AdagradOptions{
                       .lr = 0.1f, .lr_decay = 0.05f, .initial_accumulator_value = 0.1f}),
                   "torch.optim.Adagrad(params, lr=0.1, lr_decay=0.05, "
                   "initial_accumulator_value=0.1)",
                   true});
  cases.push_back({"adam_sparse_is_sparse_adam", maker<Adam>(AdamOptions{.lr = 0.05f}),
                   "torch.optim.SparseAdam(params, lr=0.05)", true});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Optimizers, TorchParity, ::testing::ValuesIn(parity_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace dtrain::optim
