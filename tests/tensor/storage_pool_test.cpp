// StoragePool: size classes, reuse, the cap, trim, and that a block still
// referenced by a view is never handed out again (single- and
// multi-threaded, through Tensor and the process pool).
#include "tensor/storage_pool.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "tensor/tensor.h"

namespace dtrain {
namespace {

TEST(StoragePool, ClassBytesCoverTheRequestWithinAQuarter) {
  size_t previous = 0;
  for (size_t bytes = 1; bytes < (size_t{1} << 22); bytes += 1 + bytes / 7) {
    const size_t size = StoragePool::class_bytes(bytes);
    EXPECT_GE(size, bytes);
    EXPECT_EQ(size % StoragePool::kAlignBytes, 0u) << bytes;
    EXPECT_GE(size, previous) << bytes;  // monotone
    if (bytes > 4096) {
      EXPECT_LE(size, bytes + bytes / 4) << bytes;
    }
    previous = size;
  }
  EXPECT_EQ(StoragePool::class_bytes(1), 64u);
  EXPECT_EQ(StoragePool::class_bytes(4096), 4096u);
  EXPECT_EQ(StoragePool::class_bytes(4097), 5120u);
  EXPECT_EQ(StoragePool::class_bytes(size_t{1} << 20), size_t{1} << 20);
  EXPECT_EQ(StoragePool::class_bytes((size_t{1} << 20) + 1), (size_t{5} << 18));
}

// release() runs in Storage's destructor: it must not throw even when a
// class's free list cannot grow (the block is then freed instead).
static_assert(noexcept(std::declval<StoragePool&>().release(nullptr, 0)));

TEST(StoragePool, ReusesAFreedBlockOfTheSameClassOnly) {
  StoragePool pool;
  void* a = pool.allocate(5000);  // class 5120
  pool.release(a, 5000);
  EXPECT_EQ(pool.stats().cached_bytes, 5120);
  void* other = pool.allocate(7000);  // class 7168: not a's
  EXPECT_NE(other, a);
  void* b = pool.allocate(5100);  // class 5120 again
  EXPECT_EQ(b, a);
  const StoragePoolStats stats = pool.stats();
  EXPECT_EQ(stats.fresh_allocations, 2);
  EXPECT_EQ(stats.cached_allocations, 1);
  EXPECT_EQ(stats.cached_bytes, 0);
  EXPECT_EQ(stats.live_bytes, 5120 + 7168);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % StoragePool::kAlignBytes, 0u);
  pool.release(b, 5100);
  pool.release(other, 7000);
  EXPECT_EQ(pool.stats().live_bytes, 0);
  EXPECT_EQ(pool.stats().cached_blocks, 2);
}

TEST(StoragePool, AtTheCapAReleasedBlockGoesToTheSystem) {
  StoragePool pool(/*max_cached_bytes=*/8192);
  void* a = pool.allocate(4096);
  void* b = pool.allocate(4096);
  void* c = pool.allocate(4096);
  void* big = pool.allocate(9000);  // larger than the cap: never cached
  pool.release(a, 4096);
  pool.release(b, 4096);
  pool.release(c, 4096);  // 8192 cached already
  pool.release(big, 9000);
  StoragePoolStats stats = pool.stats();
  EXPECT_EQ(stats.cached_bytes, 8192);
  EXPECT_EQ(stats.cached_blocks, 2);
  EXPECT_EQ(stats.system_frees, 2);

  pool.set_max_cached_bytes(4096);
  stats = pool.stats();
  EXPECT_EQ(stats.cached_bytes, 4096);
  EXPECT_EQ(stats.system_frees, 3);
  pool.trim();
  stats = pool.stats();
  EXPECT_EQ(stats.cached_bytes, 0);
  EXPECT_EQ(stats.cached_blocks, 0);
  EXPECT_EQ(stats.system_frees, 4);
  void* d = pool.allocate(4096);  // nothing cached: fresh
  EXPECT_EQ(pool.stats().fresh_allocations, 5);
  pool.release(d, 4096);
}

TEST(StoragePool, TensorStorageComesBackOnlyWithItsLastView) {
  const int64_t n = 3000;
  Tensor a = Tensor::full({n}, 1.5f);
  const Tensor view = a.narrow(10, 20);
  const float* block = a.data();
  a = Tensor();  // the view still holds the storage
  const StoragePoolStats before = storage_pool().stats();
  const Tensor b = Tensor::full({n}, -2.0f);
  EXPECT_NE(b.data(), block);
  EXPECT_EQ(storage_pool().stats().releases, before.releases);
  for (float v : view.span()) ASSERT_EQ(v, 1.5f);
  Tensor copy = view;
  copy = Tensor();  // not the last handle: `view` remains
  EXPECT_EQ(storage_pool().stats().releases, before.releases);
}

TEST(StoragePool, ALastViewGivesItsBlockToTheNextAllocation) {
  // The counterpart of the test above: the pool does reuse, so the
  // inequality there is the pool's choice, not chance.
  const int64_t n = 3000;
  const float* block = nullptr;
  {
    const Tensor a = Tensor::full({n}, 1.5f);
    block = a.data();
  }
  const StoragePoolStats before = storage_pool().stats();
  const Tensor b = Tensor::empty({n});
  EXPECT_EQ(b.data(), block);
  EXPECT_EQ(storage_pool().stats().cached_allocations, before.cached_allocations + 1);
  EXPECT_EQ(storage_pool().stats().fresh_allocations, before.fresh_allocations);
}

// Live tensors, each filled with its own value, under random allocation and
// release of a few sizes: no two live tensors overlap, none is overwritten.
struct Live {
  Tensor tensor;
  float value;
};

void check_disjoint_and_intact(const std::vector<Live>& live) {
  std::vector<std::pair<const float*, const float*>> ranges;
  for (const Live& l : live) {
    for (float v : l.tensor.span()) ASSERT_EQ(v, l.value);
    ranges.emplace_back(l.tensor.data(), l.tensor.data() + l.tensor.numel());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) ASSERT_LE(ranges[i - 1].second, ranges[i].first);
}

void churn(uint64_t seed, int rounds, std::vector<Live>& live) {
  Rng rng(seed);
  const int64_t sizes[] = {1, 17, 1000, 1024, 1100, 5000, 17000};
  float next_value = static_cast<float>(seed) * 1000.0f;
  for (int r = 0; r < rounds; ++r) {
    if (!live.empty() && rng.uniform() < 0.45f) {
      const auto k =
          static_cast<size_t>(rng.uniform() * static_cast<float>(live.size())) % live.size();
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      const int64_t n = sizes[static_cast<size_t>(rng.uniform() * 7.0f) % 7];
      next_value += 1.0f;
      live.push_back({Tensor::full({n}, next_value), next_value});
    }
    check_disjoint_and_intact(live);
  }
}

TEST(StoragePool, RandomChurnNeverHandsOutALiveBlock) {
  const StoragePoolStats before = storage_pool().stats();
  std::vector<Live> live;
  churn(7, 400, live);
  // Blocks were reused, so the check above exercised reuse.
  EXPECT_GT(storage_pool().stats().cached_allocations, before.cached_allocations + 50);
}

TEST(StoragePool, ThreadsAllocateAndReleaseEachOthersBlocks) {
  // Each thread churns its own tensors, then hands them to the next thread,
  // which checks and releases them: blocks cross threads both ways.
  constexpr int kThreads = 4;
  std::vector<std::vector<Live>> live(kThreads);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([t, &live] { churn(100 + static_cast<uint64_t>(t), 200, live[t]); });
    }
  }
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([t, &live] {
        std::vector<Live> mine = std::move(live[(t + 1) % kThreads]);
        check_disjoint_and_intact(mine);
        churn(200 + static_cast<uint64_t>(t), 200, mine);
        mine.clear();
      });
    }
  }
  const StoragePoolStats stats = storage_pool().stats();
  EXPECT_GE(stats.live_bytes, 0);
  EXPECT_GE(stats.cached_bytes, 0);
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

TEST(StoragePoolDeathTest, ReadingACachedBlockIsReportedUnderAsan) {
  if (!kAsan) GTEST_SKIP() << "needs AddressSanitizer (build-asan)";
  StoragePool pool;
  auto* data = static_cast<volatile float*>(pool.allocate(4096));
  data[3] = 1.0f;  // live: fine
  pool.release(const_cast<float*>(data), 4096);
  EXPECT_DEATH(static_cast<void>(data[3]), "use-after-poison");
  pool.trim();
}

// Reaps `pid` within `timeout`; false (after SIGKILL) if it is still running.
bool reap_within(pid_t pid, std::chrono::milliseconds timeout, int& status) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a bounded poll, not a sync
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return false;
}

TEST(StoragePool, AChildForkedWhileAnotherThreadAllocatesCanAllocate) {
  // Without the fork handlers a child forked while the churning thread holds
  // the pool's mutex would block forever on its first allocation.
  // The churner stops when `churner` goes out of scope, also when an
  // assertion below returns early.
  std::jthread churner([](const std::stop_token& stop) {
    while (!stop.stop_requested()) {
      const Tensor t = Tensor::empty({1000});
      t.data()[0] = 1.0f;
    }
  });
  for (int i = 0; i < 50; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const Tensor t = Tensor::full({1000}, 2.0f);
      _exit(t.data()[999] == 2.0f ? 0 : 1);
    }
    int status = 0;
    ASSERT_TRUE(reap_within(pid, std::chrono::seconds(20), status)) << "child " << i << " hung";
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << i;
  }
}

}  // namespace
}  // namespace dtrain
