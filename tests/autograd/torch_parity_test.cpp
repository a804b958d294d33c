// PyTorch parity: a small MLP and a small conv net with the same weights and
// batch in dtrain and in torch (float64 there, from the same float32 inputs);
// the loss and every gradient must agree to 1e-4 relative to the largest
// magnitude of each tensor, plus 1e-6 absolute for gradients that are zero in
// exact arithmetic (a bias in front of batch_norm). Skipped when
// /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "testing/gradcheck.h"

namespace dtrain {
namespace {

namespace fs = std::filesystem;
using testing::random_tensor;

constexpr double kRelativeTolerance = 1e-4;
constexpr double kAbsoluteTolerance = 1e-6;

bool torch_available() {
  return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0;
}

// Both models in torch. Input lines: "name ndim dims... values..."; output
// lines: "name values..." for the loss and the gradient of every parameter.
constexpr const char* kTorchScript = R"PY(
import sys
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
t = {}
for line in open(sys.argv[2]):
    parts = line.split()
    ndim = int(parts[1])
    shape = [int(v) for v in parts[2:2 + ndim]]
    values = [float(v) for v in parts[2 + ndim:]]
    t[parts[0]] = torch.tensor(values, dtype=torch.float64).reshape(shape)

params = [k for k in t if k not in ("x", "targets", "class_weights")]
for k in params:
    t[k].requires_grad_(True)
targets = t["targets"].long()
if sys.argv[1] == "mlp":
    h = F.relu(F.linear(t["x"], t["w1"], t["b1"]))
    loss = F.cross_entropy(F.linear(h, t["w2"], t["b2"]), targets)
else:
    h = F.relu(F.conv2d(t["x"], t["c1w"], t["c1b"], stride=1, padding=1))
    h = F.max_pool2d(h, 2, 2)
    h = F.conv2d(h, t["c2w"], t["c2b"], stride=2, padding=1)
    h = F.batch_norm(h, torch.zeros(h.shape[1], dtype=torch.float64),
                     torch.ones(h.shape[1], dtype=torch.float64), t["gamma"], t["beta"],
                     training=True, momentum=0.1, eps=1e-5)
    h = F.avg_pool2d(F.relu(h), 2, 1)
    loss = F.cross_entropy(F.linear(h.flatten(1), t["fw"], t["fb"]), targets,
                           weight=t["class_weights"])
loss.backward()
with open(sys.argv[3], "w") as out:
    out.write("loss %r\n" % loss.item())
    for k in params:
        out.write(k + " " + " ".join(repr(v) for v in t[k].grad.flatten().tolist()) + "\n")
)PY";

class TorchParity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch_available()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch";
    dir_ = fs::temp_directory_path() / ("dtrain_torch_parity_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Runs the torch model `model` on `inputs`; returns name -> values.
  std::map<std::string, std::vector<double>> run_torch(
      const std::string& model, const std::vector<std::pair<std::string, Tensor>>& inputs) {
    {
      std::ofstream script(dir_ / "model.py");
      script << kTorchScript;
      std::ofstream in(dir_ / "in.txt");
      in.precision(9);
      for (const auto& [name, tensor] : inputs) {
        in << name << ' ' << tensor.dim();
        for (int64_t d : tensor.shape()) in << ' ' << d;
        for (float v : tensor.span()) in << ' ' << v;
        in << '\n';
      }
    }
    const std::string command = "/usr/bin/python3 " + (dir_ / "model.py").string() + " " + model +
                                " " + (dir_ / "in.txt").string() + " " +
                                (dir_ / "out.txt").string();
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    std::map<std::string, std::vector<double>> out;
    std::ifstream results(dir_ / "out.txt");
    std::string line;
    while (std::getline(results, line)) {
      std::istringstream fields(line);
      std::string name;
      fields >> name;
      double v = 0;
      while (fields >> v) out[name].push_back(v);
    }
    return out;
  }

  static void expect_close(const std::string& name, const Tensor& got,
                           const std::vector<double>& want) {
    ASSERT_EQ(static_cast<size_t>(got.numel()), want.size()) << name;
    double scale = 0.0;
    double worst = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::fabs(want[i]));
      worst = std::max(worst, std::fabs(got.data()[i] - want[i]));
    }
    EXPECT_LE(worst, kRelativeTolerance * scale + kAbsoluteTolerance)
        << name << ": largest |difference| " << worst << " against largest |value| " << scale;
  }

  fs::path dir_;
};

Tensor targets_tensor(const std::vector<int64_t>& targets) {
  Tensor t = Tensor::empty({static_cast<int64_t>(targets.size())});
  for (size_t i = 0; i < targets.size(); ++i) t.data()[i] = static_cast<float>(targets[i]);
  return t;
}

TEST_F(TorchParity, MlpLossAndGradients) {
  const std::vector<int64_t> targets = {0, 3, 1, 2, 3, 0, 1, 1};
  std::vector<std::pair<std::string, Tensor>> inputs = {
      {"x", random_tensor({8, 10}, 1)},
      {"w1", random_tensor({16, 10}, 2, -0.5f, 0.5f)},
      {"b1", random_tensor({16}, 3, -0.1f, 0.1f)},
      {"w2", random_tensor({4, 16}, 4, -0.5f, 0.5f)},
      {"b2", random_tensor({4}, 5, -0.1f, 0.1f)},
      {"targets", targets_tensor(targets)}};
  std::map<std::string, Variable> v;
  for (const auto& [name, tensor] : inputs)
    v[name] = Variable(tensor, name != "x" && name != "targets");
  Variable h = relu(linear(v["x"], v["w1"], v["b1"]));
  Variable loss = cross_entropy(linear(h, v["w2"], v["b2"]), targets);
  loss.backward();

  auto want = run_torch("mlp", inputs);
  expect_close("loss", loss.data(), want["loss"]);
  for (const char* name : {"w1", "b1", "w2", "b2"}) expect_close(name, v[name].grad(), want[name]);
}

TEST_F(TorchParity, ConvNetLossAndGradients) {
  const std::vector<int64_t> targets = {2, 0, 5, 1};
  const std::vector<float> class_weights = {1.0f, 0.5f, 2.0f, 1.0f, 1.5f, 0.25f};
  std::vector<std::pair<std::string, Tensor>> inputs = {
      {"x", random_tensor({4, 1, 10, 10}, 10)},
      {"c1w", random_tensor({3, 1, 3, 3}, 11, -0.5f, 0.5f)},
      {"c1b", random_tensor({3}, 12, -0.1f, 0.1f)},
      {"c2w", random_tensor({5, 3, 3, 3}, 13, -0.5f, 0.5f)},
      {"c2b", random_tensor({5}, 14, -0.1f, 0.1f)},
      {"gamma", random_tensor({5}, 15, 0.5f, 1.5f)},
      {"beta", random_tensor({5}, 16, -0.2f, 0.2f)},
      {"fw", random_tensor({6, 20}, 17, -0.5f, 0.5f)},
      {"fb", random_tensor({6}, 18, -0.1f, 0.1f)},
      {"targets", targets_tensor(targets)},
      {"class_weights", Tensor::from_vector(class_weights, {6})}};
  std::map<std::string, Variable> v;
  for (const auto& [name, tensor] : inputs) {
    v[name] = Variable(tensor, name != "x" && name != "targets" && name != "class_weights");
  }
  Tensor running_mean = Tensor::zeros({5});
  Tensor running_var = Tensor::ones({5});
  Variable h = relu(conv2d(v["x"], v["c1w"], v["c1b"], 1, 1));  // [4, 3, 10, 10]
  h = max_pool2d(h, 2, 2);                                      // [4, 3, 5, 5]
  h = conv2d(h, v["c2w"], v["c2b"], 2, 1);                      // [4, 5, 3, 3]
  h = batch_norm(h, v["gamma"], v["beta"], running_mean, running_var, true, 0.1f, 1e-5f);
  h = avg_pool2d(relu(h), 2, 1);  // [4, 5, 2, 2]
  Variable loss = cross_entropy(linear(flatten(h), v["fw"], v["fb"]), targets, class_weights);
  loss.backward();

  auto want = run_torch("conv", inputs);
  expect_close("loss", loss.data(), want["loss"]);
  for (const char* name : {"c1w", "c1b", "c2w", "c2b", "gamma", "beta", "fw", "fb"}) {
    expect_close(name, v[name].grad(), want[name]);
  }
}

}  // namespace
}  // namespace dtrain
