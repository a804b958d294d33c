// A parameter server's dense apply (ps::DenseShard::apply) on one thread and
// in parallel chunks (ps/shard_store.h), the same ranges in one run.
//
// For sgd with momentum and for adam, a range of FLOATS floats (default 4M)
// is updated REPS times (default 9) by a shard with 1 thread and by one with
// default_apply_threads(); reported: the gradient bytes applied per second,
// medians over the repetitions, and the parallel / serial ratio. One JSON
// line per measurement, then a table. On a loaded machine the ratio, not the
// absolute figures, is what counts.
// Usage: apply_bench [REPS [FLOATS]]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ps/shard_store.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// GB/s of gradient applied by a shard of `threads` threads.
double apply_rate(const optim::OptimizerConfig& config, int threads, int reps, int64_t floats) {
  std::vector<float> values(static_cast<size_t>(floats), 0.5f);
  std::vector<float> grad(static_cast<size_t>(floats), 0.001f);
  ps::DenseShard shard(values, config, threads);
  shard.apply(grad, 0.01f);  // first touch of the optimizer's buffers
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    shard.apply(grad, 0.01f);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    rates.push_back(static_cast<double>(floats) * sizeof(float) / s / 1e9);
  }
  return median(rates);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  const int64_t floats = argc > 2 ? std::atoll(argv[2]) : int64_t{4} << 20;
  optim::OptimizerConfig sgd;
  sgd.momentum = 0.9f;
  optim::OptimizerConfig adam;
  adam.type = "adam";
  const int threads = ps::default_apply_threads();
  std::printf("%-14s %8s %14s %14s %8s\n", "optimizer", "threads", "serial GB/s", "parallel GB/s",
              "ratio");
  for (const auto& [name, config] : {std::pair{"sgd-momentum", sgd}, std::pair{"adam", adam}}) {
    const double serial = apply_rate(config, 1, reps, floats);
    const double parallel = apply_rate(config, threads, reps, floats);
    std::printf(
        "{\"bench\":\"ps_apply\",\"optimizer\":\"%s\",\"floats\":%lld,\"threads\":%d,"
        "\"serial_gb_per_s\":%.3f,\"parallel_gb_per_s\":%.3f}\n",
        name, static_cast<long long>(floats), threads, serial, parallel);
    std::printf("%-14s %8d %14.3f %14.3f %8.2f\n", name, threads, serial, parallel,
                parallel / serial);
  }
  return 0;
}
