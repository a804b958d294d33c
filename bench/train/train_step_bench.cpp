// dtrain side of the training-throughput benchmark: the MNIST MLP
// (784-256-256-10) or LeNet-5, SGD with momentum 0.9, batch 128, on 8 batches
// of real MNIST images (the first 8 * BATCH of the training set, normalised
// as the trainer does; compute only), the same batches as
// torch_train_bench.py. The data comes from $DATA (default data/mnist, run
// from the repository root).
// Prints one JSON line per repetition: {"model": ..., "samples_per_s": ...}.
// Usage: train_step_bench MODEL STEPS REPS [WORKERS [mirrored|allreduce [BATCH]]]
//   WORKERS > 1: that many replicas in one process (mirrored) or that many
//   processes started here (allreduce, the default), one thread each; the
//   global batch (default 128) is split among them. With allreduce, rank 0 also
//   prints the share of allreduce time hidden behind backward and the share
//   of the optimizer update hidden behind the last buckets' allreduce, and
//   the mean update and exposed-wait times per step in milliseconds.
// $OVERLAP_UPDATE=0 turns the bucket-by-bucket update off (one optimizer step
// after every bucket; AllReduceOptions::overlap_update), for A/B runs of one
// binary.
// $INTRA_OP_THREADS (default 1) sets the tensor layer's intra-op threads
// (tensor/intra_op.h) alone; $THREADS sets train.threads as `dtrain train`
// does (train::set_compute_threads: the intra-op threads and OpenBLAS's).
// $INTRA_OP_SPIN_US sets how long the intra-op team polls before it sleeps
// (tensor::set_intra_op_spin; default tensor::kDefaultIntraOpSpin), for A/B
// runs of one binary.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "cli/launcher.h"
#include "comm/collectives/connect_worker.h"
#include "comm/rendezvous/launch_env.h"
#include "core/rng.h"
#include "data/idx.h"
#include "optim/sgd.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "tensor/intra_op.h"
#include "train/job_config.h"
#include "train/model_builder.h"
#include "train/run_job.h"

using namespace dtrain;

namespace {

train::ModelConfig model_config(const std::string& name) {
  train::ModelConfig config;
  config.input_shape = {1, 28, 28};
  auto layer = [&](std::string type, int64_t out = 0, int64_t kernel = 0, int64_t padding = 0) {
    train::LayerConfig l;
    l.type = std::move(type);
    l.name = std::to_string(config.layers.size());
    l.out_features = out;
    l.out_channels = out;
    l.kernel = kernel;
    l.padding = padding;
    config.layers.push_back(l);
  };
  if (name == "mlp") {
    layer("flatten");
    layer("linear", 256);
    layer("relu");
    layer("linear", 256);
    layer("relu");
    layer("linear", 10);
  } else {
    layer("conv2d", 6, 5, 2);
    layer("relu");
    layer("maxpool2d", 0, 2);
    layer("conv2d", 16, 5);
    layer("relu");
    layer("maxpool2d", 0, 2);
    layer("flatten");
    layer("linear", 120);
    layer("relu");
    layer("linear", 84);
    layer("relu");
    layer("linear", 10);
  }
  return config;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s mlp|lenet5 STEPS REPS [WORKERS [mirrored|allreduce [BATCH]]]\n",
                 argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  const int steps = std::atoi(argv[2]);
  const int reps = std::atoi(argv[3]);
  const int workers = argc > 4 ? std::atoi(argv[4]) : 1;
  const std::string mode = argc > 5 ? argv[5] : "allreduce";
  const int64_t batch = argc > 6 ? std::atoll(argv[6]) : 128;
  if (const char* intra = std::getenv("INTRA_OP_THREADS")) {
    tensor::set_intra_op_threads(std::atoi(intra));
  }
  if (const char* spin = std::getenv("INTRA_OP_SPIN_US")) {
    tensor::set_intra_op_spin(std::chrono::microseconds(std::atoll(spin)));
  }
  if (const char* threads = std::getenv("THREADS")) {
    train::JobConfig job;
    job.train.threads = std::atoi(threads);
    train::set_compute_threads(job);
  }
  const auto env = cli::current_environment();
  const comm::LaunchInfo launch = comm::resolve_launch_env(env);
  if (workers > 1 && mode == "allreduce" && launch.world_size == 1) {
    cli::LaunchOptions l;
    l.argv.assign(argv, argv + argc);
    l.argv[0] = cli::self_executable();
    l.workers = workers;
    l.environment = env;
    cli::Launcher launcher(l, std::cout, std::cerr, Logger::null());
    return launcher.run(Deadline::never()).exit_code;
  }
  const train::ModelConfig config = model_config(name);
  Rng rng(1);
  auto make_optimizer = [](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = 0.01f;
    o.momentum = 0.9f;
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
  std::unique_ptr<comm::Communicator> communicator;
  std::unique_ptr<strategy::Strategy> strat;
  if (launch.world_size > 1) {
    communicator = comm::connect_worker("train_step_bench", launch,
                                        {std::chrono::seconds(60), std::chrono::seconds(5), {}},
                                        Logger::stderr_logger());
    strategy::AllReduceOptions options;
    const char* overlap = std::getenv("OVERLAP_UPDATE");
    options.overlap_update = overlap == nullptr || std::string(overlap) != "0";
    strat = std::make_unique<strategy::AllReduceStrategy>(train::build_model(config, rng),
                                                          make_optimizer, *communicator, options);
  } else if (workers > 1) {
    strat = std::make_unique<strategy::MirroredStrategy>(
        train::build_model(config, rng), [&] { return train::build_model(config, rng); }, workers,
        make_optimizer);
  } else {
    strat =
        std::make_unique<strategy::LocalStrategy>(train::build_model(config, rng), make_optimizer);
  }
  data::IdxOptions idx;
  idx.limit = 8 * batch;
  idx.normalize = true;
  const char* data_dir = std::getenv("DATA");
  const std::string dir = data_dir != nullptr ? data_dir : "data/mnist";
  const Tensor images = data::read_idx_images(dir + "/train-images-idx3-ubyte", idx);
  const std::vector<int64_t> labels = data::read_idx_labels(dir + "/train-labels-idx1-ubyte", idx);
  std::vector<Tensor> xs;
  std::vector<std::vector<int64_t>> ys;
  for (int64_t b = 0; b < 8; ++b) {
    xs.push_back(images.narrow(b * batch, batch).clone());
    ys.emplace_back(labels.begin() + b * batch, labels.begin() + (b + 1) * batch);
  }
  // This process's rows of each global batch.
  const int64_t world = launch.world_size, rank = launch.rank;
  const int64_t lo = batch * rank / world, hi = batch * (rank + 1) / world;
  auto step = [&](int i) {
    const auto& y = ys[static_cast<size_t>(i % 8)];
    strat->train_step(
        xs[static_cast<size_t>(i % 8)].narrow(lo, hi - lo),
        std::span<const int64_t>(y).subspan(static_cast<size_t>(lo), static_cast<size_t>(hi - lo)));
  };
  for (int i = 0; i < 20; ++i) step(i);
  auto* allreduce = dynamic_cast<strategy::AllReduceStrategy*>(strat.get());
  for (int r = 0; r < reps; ++r) {
    double hidden = 0.0;
    double update_hidden = 0.0;
    double update_s = 0.0;
    double wait_s = 0.0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
      step(i);
      if (allreduce != nullptr) {
        hidden += allreduce->overlap_stats().hidden_share();
        update_hidden += allreduce->overlap_stats().update_hidden_share();
        update_s += allreduce->overlap_stats().update_s;
        wait_s += allreduce->overlap_stats().wait_s;
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rank != 0) continue;
    if (allreduce != nullptr) {
      std::printf(
          "{\"model\": \"%s\", \"samples_per_s\": %.1f, \"hidden_share\": %.3f, "
          "\"update_hidden_share\": %.3f, \"update_ms\": %.4f, \"wait_ms\": %.4f}\n",
          name.c_str(), steps * batch / seconds, hidden / steps, update_hidden / steps,
          1e3 * update_s / steps, 1e3 * wait_s / steps);
    } else {
      std::printf("{\"model\": \"%s\", \"samples_per_s\": %.1f}\n", name.c_str(),
                  steps * batch / seconds);
    }
    std::fflush(stdout);
  }
  return 0;
}
