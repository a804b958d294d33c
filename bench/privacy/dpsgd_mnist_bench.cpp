// DP-SGD on MNIST (Abadi et al. 2016): accuracy at a privacy budget, and
// DP-SGD throughput against non-private training of the same model in the
// same process. bench/privacy/run_dpsgd_bench.sh runs the settings reported
// in docs/privacy.md.
//
// Usage: dpsgd_mnist_bench MODEL EPOCHS BATCH LR MOMENTUM SIGMA CLIP TARGET_EPSILON
//                          [THROUGHPUT_STEPS]
//   MODEL: cnn (Opacus's MNIST example CNN: conv 16x8x8 s2 p3, tanh,
//          maxpool 2 s1, conv 32x4x4 s2, tanh, maxpool 2 s1, fc 32, tanh,
//          fc 10) or mlp (784-256-256-10, relu).
//   SIGMA 0: solved from TARGET_EPSILON for the planned steps;
//   TARGET_EPSILON 0: no budget.
//   THROUGHPUT_STEPS (default 0: skip): steps of DP-SGD and of non-private
//          SGD (same model, batch, threads) timed alternately, 5 times each;
//          prints the median samples/s of each.
// Reads data/mnist (scripts/fetch_mnist.sh); delta 1e-5; one BLAS thread.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "core/log.h"
#include "strategy/local_strategy.h"
#include "train/callbacks.h"
#include "train/datasets.h"
#include "train/dp_sgd.h"
#include "train/job_file.h"
#include "train/model_builder.h"
#include "train/trainer.h"

extern "C" void openblas_set_num_threads(int);

namespace {

using namespace dtrain;

const char* kCnnLayers = R"(
[[model.layers]]
type = "conv2d"
out_channels = 16
kernel = 8
stride = 2
padding = 3
[[model.layers]]
type = "tanh"
[[model.layers]]
type = "maxpool2d"
kernel = 2
stride = 1
[[model.layers]]
type = "conv2d"
out_channels = 32
kernel = 4
stride = 2
[[model.layers]]
type = "tanh"
[[model.layers]]
type = "maxpool2d"
kernel = 2
stride = 1
[[model.layers]]
type = "flatten"
[[model.layers]]
type = "linear"
out_features = 32
[[model.layers]]
type = "tanh"
[[model.layers]]
type = "linear"
out_features = 10
)";

const char* kMlpLayers = R"(
[[model.layers]]
type = "flatten"
[[model.layers]]
type = "linear"
out_features = 256
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 256
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 10
)";

std::string job_toml(const std::string& model, int epochs, int batch, double lr, double momentum,
                     double sigma, double clip, double target, bool privacy) {
  return fmt::format(R"(
[job]
name = "dpsgd-mnist-{0}"
seed = 1
output = "runs/dpsgd-bench-{0}-eps{8}"
resume = false
[data]
dataset = "mnist"
path = "data/mnist"
[model]
input_shape = [1, 28, 28]
{1}
[optimizer]
type = "sgd"
lr = {2}
momentum = {9}
[schedule]
type = "constant"
[train]
epochs = {3}
batch_size = {4}
log_every_steps = 0
eval_batch_size = 1000
[privacy]
enabled = {5}
noise_multiplier = {6}
max_grad_norm = {7}
delta = 1e-5
target_epsilon = {8}
)",
                     model, model == "cnn" ? kCnnLayers : kMlpLayers, lr, epochs, batch,
                     privacy ? "true" : "false", sigma, clip, target, momentum);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Samples per second of `steps` updates: DP-SGD through DpSgd::step, or
// plain SGD on fixed-size shuffled batches through the strategy.
double throughput(const train::JobConfig& job, const data::TensorDataset& train, bool dp,
                  int steps) {
  Rng rng(job.seed);
  strategy::LocalStrategy local(
      train::build_model(job.model, rng),
      [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); });
  std::unique_ptr<train::DpSgd> dpsgd;
  if (dp) dpsgd = std::make_unique<train::DpSgd>(job, local, train, 1000);
  int64_t samples = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) {
    if (dp) {
      samples += dpsgd->step(s).samples;
    } else {
      const int64_t b = job.train.batch_size;
      const int64_t start = (int64_t(s) * b) % (train.size() - b);
      const data::TensorDataset part = train.slice(start, b);
      samples += local.train_step(part.features(), part.labels()).samples;
    }
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(samples) / dt;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::cerr << "usage: dpsgd_mnist_bench MODEL EPOCHS BATCH LR MOMENTUM SIGMA CLIP "
                 "TARGET_EPSILON [THROUGHPUT_STEPS]\n";
    return 2;
  }
  try {
    openblas_set_num_threads(1);
    const std::string model = argv[1];
    const int epochs = std::stoi(argv[2]), batch = std::stoi(argv[3]);
    const double lr = std::stod(argv[4]), momentum = std::stod(argv[5]), sigma = std::stod(argv[6]),
                 clip = std::stod(argv[7]), target = std::stod(argv[8]);
    const int throughput_steps = argc > 9 ? std::stoi(argv[9]) : 0;
    const train::JobFile file = train::parse_job(
        job_toml(model, epochs, batch, lr, momentum, sigma, clip, target, true), "bench", {});
    const train::JobConfig& job = file.job;
    const train::Datasets data = train::load_datasets(job);
    if (throughput_steps > 0) {
      std::vector<double> dp, plain;
      for (int r = 0; r < 5; ++r) {
        dp.push_back(throughput(job, data.train, true, throughput_steps));
        plain.push_back(throughput(job, data.train, false, throughput_steps));
      }
      fmt::print(
          "throughput {} batch {} ({} steps, median of 5): DP-SGD {:.0f} samples/s, "
          "non-private {:.0f} samples/s, ratio {:.2f}\n",
          model, batch, throughput_steps, median(dp), median(plain), median(plain) / median(dp));
      return 0;
    }
    Rng rng(job.seed);
    strategy::LocalStrategy local(train::build_model(job.model, rng),
                                  [&job](std::vector<Variable> p) {
                                    return nn::make_optimizer(job.optimizer, std::move(p));
                                  });
    train::Trainer trainer(job, local, Logger::null());
    train::PlainProgress progress(std::cout, 0);
    trainer.add_callback(progress);
    const train::Summary s = trainer.fit(data.train, data.test);
    fmt::print(
        "result {} epochs {} batch {} lr {} momentum {} sigma {} C {} target {}: test "
        "accuracy {:.2f}% after {} steps, {:.0f} samples/s\n",
        model, epochs, batch, lr, momentum, sigma, clip, target, 100 * s.test_accuracy, s.steps,
        s.samples_per_s);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
