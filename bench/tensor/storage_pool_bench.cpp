// The storage pool's mutex against per-thread caches: nanoseconds per
// allocation (allocate + release) of a training step's pattern, for the
// designs tensor/storage_pool.h weighed.
//
//   pool:   StoragePool, one mutex over the free lists (what Storage uses)
//   local:  a per-thread cache without a lock (thread_local free lists,
//           the design the pool replaced), the peer of the ratio
//   system: ::operator new / delete, 64-byte aligned (glibc malloc)
//
// Pattern per round: allocate 24 blocks of a LeNet-5 step's sizes (256 B to
// 2.4 MiB), then release them in reverse order. Each thread runs its own
// rounds on its own blocks (threads = 1 or 2: both threads contend for the
// pool's mutex). The local cache is given the easy case (every block is
// freed on the thread that allocated it); in a training step with the
// intra-op team that is not so, which is why the pool is shared.
// Prints one line per (design, threads): the median ns per allocation over
// REPS repetitions, and pool/local, system/local ratios.
// Usage: storage_pool_bench [ROUNDS] [REPS]
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "tensor/storage_pool.h"

namespace {

// Bytes of a LeNet-5 step's tensors at batch 128 (activations, masks,
// gradients, parameters' gradients), in allocation order.
constexpr std::array<size_t, 24> kSizes = {
    2408448, 2408448, 602112, 602112, 819200, 204800, 204800,  204800, 61440, 43008, 5120, 10752,
    43008,   5120,    61440,  204800, 819200, 602112, 2408448, 9600,   480,   38400, 256,  2400};

class LocalCache {
 public:
  ~LocalCache() {
    for (auto& [bytes, list] : lists_) {
      for (void* p : list) ::operator delete(p, std::align_val_t(64));
    }
  }
  void* allocate(size_t bytes) {
    for (auto& [b, list] : lists_) {
      if (b == bytes && !list.empty()) {
        void* p = list.back();
        list.pop_back();
        return p;
      }
    }
    return ::operator new(bytes, std::align_val_t(64));
  }
  void release(void* p, size_t bytes) {
    for (auto& [b, list] : lists_) {
      if (b == bytes) {
        list.push_back(p);
        return;
      }
    }
    lists_.push_back({bytes, {p}});
  }

 private:
  std::vector<std::pair<size_t, std::vector<void*>>> lists_;
};

enum class Design { kPool, kLocal, kSystem };

double run_rounds(Design design, dtrain::StoragePool& pool, int rounds) {
  thread_local LocalCache local;
  std::array<void*, kSizes.size()> blocks{};
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < kSizes.size(); ++i) {
      switch (design) {
        case Design::kPool:
          blocks[i] = pool.allocate(kSizes[i]);
          break;
        case Design::kLocal:
          blocks[i] = local.allocate(kSizes[i]);
          break;
        case Design::kSystem:
          blocks[i] = ::operator new(kSizes[i], std::align_val_t(64));
          break;
      }
      static_cast<char*>(blocks[i])[0] = static_cast<char>(r);  // touch it
    }
    for (size_t i = kSizes.size(); i-- > 0;) {
      switch (design) {
        case Design::kPool:
          pool.release(blocks[i], kSizes[i]);
          break;
        case Design::kLocal:
          local.release(blocks[i], kSizes[i]);
          break;
        case Design::kSystem:
          ::operator delete(blocks[i], std::align_val_t(64));
          break;
      }
    }
  }
  const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / (static_cast<double>(rounds) * kSizes.size());
}

// Median ns per allocation, each of `threads` threads running `rounds`.
double measure(Design design, int threads, int rounds, int reps) {
  dtrain::StoragePool pool;
  std::vector<double> samples;
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<double> per_thread(static_cast<size_t>(threads));
    {
      std::vector<std::jthread> team;
      for (int t = 0; t < threads; ++t) {
        team.emplace_back([&, t] { per_thread[t] = run_rounds(design, pool, rounds); });
      }
    }
    samples.push_back(*std::max_element(per_thread.begin(), per_thread.end()));
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 20000;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  std::printf("%-8s %7s %12s %12s %12s %11s %12s\n", "pattern", "threads", "pool_ns", "local_ns",
              "system_ns", "pool/local", "system/local");
  for (int threads : {1, 2}) {
    // The system design runs a tenth of the rounds: each large block is a fresh mmap.
    const double local = measure(Design::kLocal, threads, rounds, reps);
    const double pool = measure(Design::kPool, threads, rounds, reps);
    const double system = measure(Design::kSystem, threads, rounds / 10, reps);
    std::printf("%-8s %7d %12.1f %12.1f %12.1f %11.2f %12.2f\n", "lenet5", threads, pool, local,
                system, pool / local, system / local);
  }
  return 0;
}
