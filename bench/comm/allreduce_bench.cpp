// allreduce_bench: times dtrain's shared-memory allreduce between forked
// processes, or single-core memcpy as the bandwidth ceiling.
//
//   allreduce_bench shm <ranks> <bytes> <reps>
//   allreduce_bench memcpy 1 <bytes> <reps>
//
// Prints one line "<mode> ranks=<n> bytes=<b> median_us=<t> busbw_gbs=<g>"
// with bus bandwidth 2(n-1)/n * bytes / time (for memcpy: bytes / time).
// Rank 0 reports; every iteration is timed between two allreduces, so the
// median includes waiting for the slowest rank.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/shm_allreduce.h"
#include "core/error.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void report(const char* mode, int ranks, size_t bytes, double seconds) {
  const double factor = ranks > 1 ? 2.0 * (ranks - 1) / ranks : 1.0;
  std::printf("%s ranks=%d bytes=%zu median_us=%.2f busbw_gbs=%.3f\n", mode, ranks, bytes,
              seconds * 1e6, factor * static_cast<double>(bytes) / seconds / 1e9);
}

int run_memcpy(size_t bytes, int reps) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> times;
  for (int i = 0; i < reps + 2; ++i) {
    const auto start = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    a[static_cast<size_t>(i) % bytes] = b[0];  // keep the copy observable
    if (i >= 2) times.push_back(t);
  }
  report("memcpy", 1, bytes, median(times));
  return 0;
}

int run_shm_rank(int rank, int ranks, size_t bytes, int reps, const std::string& job) {
  using namespace dtrain;
  comm::ShmAllreduceOptions options;
  options.job_id = job;
  options.capacity_bytes = std::max<size_t>(bytes, 4096);
  comm::ShmAllreduce shm(rank, ranks, options, Deadline::after(std::chrono::seconds(60)));
  std::vector<float> data(bytes / sizeof(float), 1.0f);
  std::vector<double> times;
  const int warmup = 5;
  for (int i = 0; i < reps + warmup; ++i) {
    const auto start = Clock::now();
    shm.allreduce(data, comm::ReduceOp::kSum, Deadline::after(std::chrono::seconds(60)));
    if (i >= warmup) times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    std::fill(data.begin(), data.end(), 1.0f);
  }
  if (rank == 0) report("dtrain-shm", ranks, bytes, median(times));
  return 0;
}

int run_shm(int ranks, size_t bytes, int reps) {
  const std::string job = "bench-" + std::to_string(getpid());
  std::vector<pid_t> children;
  for (int r = 1; r < ranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 1;
      try {
        code = run_shm_rank(r, ranks, bytes, reps, job);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      _exit(code);
    }
    children.push_back(pid);
  }
  int code = run_shm_rank(0, ranks, bytes, reps, job);
  for (const pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) code = 1;
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s shm|memcpy <ranks> <bytes> <reps>\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const int ranks = std::atoi(argv[2]);
  const size_t bytes = std::strtoull(argv[3], nullptr, 10);
  const int reps = std::atoi(argv[4]);
  try {
    if (mode == "memcpy") return run_memcpy(bytes, reps);
    if (mode == "shm") return run_shm(ranks, bytes, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "allreduce_bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "allreduce_bench: unknown mode '%s'\n", mode.c_str());
  return 2;
}
