#include "tensor/intra_op.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dtrain::tensor {
namespace {

std::atomic<int> g_threads{1};

}  // namespace

void set_intra_op_threads(int threads) { g_threads.store(std::max(1, threads)); }

int intra_op_threads() { return g_threads.load(); }

void parallel_for_range(int64_t n,
                        const std::function<void(int64_t begin, int64_t end, int part)>& fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(intra_op_threads(), n);
  const int64_t base = n / parts, extra = n % parts;
  auto begin_of = [&](int64_t part) { return part * base + std::min(part, extra); };
  if (parts == 1) {
    fn(0, n, 0);
    return;
  }
  std::mutex error_mutex;
  std::exception_ptr error;
  auto run = [&](int64_t part) {
    try {
      fn(begin_of(part), begin_of(part + 1), static_cast<int>(part));
    } catch (...) {
      const std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  {
    std::vector<std::jthread> workers;
    workers.reserve(static_cast<size_t>(parts - 1));
    for (int64_t part = 1; part < parts; ++part) workers.emplace_back(run, part);
    run(0);
  }  // joined here
  if (error) std::rethrow_exception(error);
}

}  // namespace dtrain::tensor
