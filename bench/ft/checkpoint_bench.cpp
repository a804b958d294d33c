// Checkpoint write benchmark.
//
// 1. Throughput: io::CheckpointDirectory::write (encode, write, fsync, rename,
//    directory fsync, pruning) of the MNIST MLP's state (784-256-256-10
//    weights and SGD momentum buffers, ~1.6 MiB) and of a 64 MiB state,
//    against the disk's own sequential write bandwidth measured in the same
//    run: POSIX write + fsync of the same byte count into the same folder.
// 2. Training-thread stall per checkpoint: synchronous writing (the state as
//    it lies, written on the calling thread) against background writing (the
//    trainer's path: clone the state, hand it to a CheckpointWriter).
// Medians over repetitions; one JSON line per measurement.
// Usage: checkpoint_bench [DIR [REPS]]   (DIR default: $TMPDIR or /tmp)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/checkpoint.h"
#include "optim/optimizer_config.h"
#include "strategy/local_strategy.h"
#include "train/checkpoint_writer.h"
#include "train/model_builder.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The MNIST MLP after one SGD step with momentum (so the optimizer holds its
// buffers), as a checkpoint the trainer would write.
struct MlpState {
  std::unique_ptr<strategy::LocalStrategy> strategy;
  train::JobConfig job;
};

MlpState mnist_mlp() {
  MlpState s;
  s.job.model.input_shape = {1, 28, 28};
  auto layer = [&](std::string type, int64_t out = 0) {
    train::LayerConfig l;
    l.type = std::move(type);
    l.name = std::to_string(s.job.model.layers.size());
    l.out_features = out;
    s.job.model.layers.push_back(l);
  };
  layer("flatten");
  layer("linear", 256);
  layer("relu");
  layer("linear", 256);
  layer("relu");
  layer("linear", 10);
  s.job.optimizer.type = "sgd";
  s.job.optimizer.lr = 0.01f;
  s.job.optimizer.momentum = 0.9f;
  Rng rng(1);
  const optim::OptimizerConfig opt = s.job.optimizer;
  s.strategy = std::make_unique<strategy::LocalStrategy>(
      train::build_model(s.job.model, rng),
      [opt](std::vector<Variable> p) { return nn::make_optimizer(opt, std::move(p)); });
  Tensor x = Tensor::empty({32, 1, 28, 28});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(rng.uniform());
  std::vector<int64_t> y(32);
  for (int64_t i = 0; i < 32; ++i) y[static_cast<size_t>(i)] = i % 10;
  s.strategy->train_step(x, y);
  return s;
}

io::Checkpoint checkpoint_of(const StateDict& model, const StateDict& optimizer, int64_t step) {
  io::Checkpoint c;
  c.step = step;
  c.metadata["batch_in_epoch"] = std::to_string(step);
  c.add_section("model", model);
  c.add_section("optimizer", optimizer);
  return c;
}

// Plain POSIX: write `bytes` to a new file, fsync, close, remove.
double posix_write_seconds(const std::string& path, const std::string& bytes) {
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) throw std::runtime_error("write failed on " + path);
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) throw std::runtime_error("fsync failed on " + path);
  ::close(fd);
  const double s = since(t0);
  ::unlink(path.c_str());
  return s;
}

void throughput(const std::string& name, const StateDict& model, const StateDict& optimizer,
                const std::string& dir, int reps) {
  io::CheckpointDirectory ckpts(dir, 2, io::default_file_system(), Logger::null());
  const std::string bytes = io::encode_checkpoint(checkpoint_of(model, optimizer, 0));
  std::vector<double> ckpt_s, disk_s;
  for (int r = 0; r < reps; ++r) {
    const io::Checkpoint c = checkpoint_of(model, optimizer, r + 1);
    auto t0 = Clock::now();
    ckpts.write(c);
    ckpt_s.push_back(since(t0));
    disk_s.push_back(posix_write_seconds(dir + "/posix.bin", bytes));
  }
  const double mb = double(bytes.size()) / 1e6;
  const double ckpt = mb / median(ckpt_s), disk = mb / median(disk_s);
  std::printf(
      "{\"state\": \"%s\", \"bytes\": %zu, \"checkpoint_mb_per_s\": %.1f, "
      "\"posix_write_fsync_mb_per_s\": %.1f, \"ratio\": %.3f, \"reps\": %d}\n",
      name.c_str(), bytes.size(), ckpt, disk, ckpt / disk, reps);
}

void stall(const std::string& name, const StateDict& model, const StateDict& optimizer,
           const std::string& dir, int reps) {
  std::vector<double> sync_s, background_s;
  {
    io::CheckpointDirectory ckpts(dir + "/sync", 2, io::default_file_system(), Logger::null());
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      ckpts.write(checkpoint_of(model, optimizer, r + 1));
      sync_s.push_back(since(t0));
    }
  }
  {
    train::CheckpointWriter writer(dir + "/background", 2, io::default_file_system(),
                                   Logger::null());
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      writer.submit(checkpoint_of(model.clone(), optimizer.clone(), r + 1));
      background_s.push_back(since(t0));
      writer.wait();  // training between checkpoints outlasts a write
    }
  }
  const double sync_ms = 1e3 * median(sync_s), background_ms = 1e3 * median(background_s);
  std::printf(
      "{\"state\": \"%s\", \"stall_sync_ms\": %.3f, \"stall_background_ms\": %.3f, "
      "\"speedup\": %.1f, \"reps\": %d}\n",
      name.c_str(), sync_ms, background_ms, sync_ms / background_ms, reps);
}

}  // namespace

int main(int argc, char** argv) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string root = argc > 1 ? argv[1] : std::string(tmp ? tmp : "/tmp");
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  const std::string dir = root + "/dtrain-checkpoint-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  try {
    const MlpState mlp = mnist_mlp();
    const StateDict mlp_model = mlp.strategy->model().state_dict();
    const StateDict mlp_optimizer = mlp.strategy->optimizer().state_dict();

    StateDict big, empty;
    Rng rng(2);
    for (int t = 0; t < 16; ++t) {  // 16 x 4 MiB
      Tensor w = Tensor::empty({1024, 1024});
      for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(rng.uniform());
      big.insert("w" + std::to_string(t), std::move(w));
    }
    throughput("mnist_mlp", mlp_model, mlp_optimizer, dir + "/mlp", reps);
    throughput("64MiB", big, empty, dir + "/big", reps);
    stall("mnist_mlp", mlp_model, mlp_optimizer, dir + "/mlp", reps);
    stall("64MiB", big, empty, dir + "/big", reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "checkpoint_bench: %s\n", e.what());
    std::filesystem::remove_all(dir);
    return 1;
  }
  std::filesystem::remove_all(dir);
  return 0;
}
