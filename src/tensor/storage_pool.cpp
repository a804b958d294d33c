#include "tensor/storage_pool.h"

#include <pthread.h>

#include <atomic>
#include <bit>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define DTRAIN_POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DTRAIN_POOL_ASAN 1
#endif
#endif

#if defined(DTRAIN_POOL_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace dtrain {

namespace {

constexpr size_t kSmallLimit = 4096;  // every multiple of 64 up to here is a class
constexpr int kLargestExponent = 47;  // classes end at 2^48 bytes
constexpr size_t kUncached = ~size_t{0};

void poison(void* data, size_t bytes) {
#if defined(DTRAIN_POOL_ASAN)
  ASAN_POISON_MEMORY_REGION(data, bytes);
#else
  (void)data;
  (void)bytes;
#endif
}

void unpoison(void* data, size_t bytes) {
#if defined(DTRAIN_POOL_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(data, bytes);
#else
  (void)data;
  (void)bytes;
#endif
}

void* system_allocate(size_t bytes) {
  return ::operator new(bytes, std::align_val_t(StoragePool::kAlignBytes));
}

void system_free(void* data) {
  ::operator delete(data, std::align_val_t(StoragePool::kAlignBytes));
}

// Appends `data` to a class's free list; false when the list cannot grow
// (release runs in destructors and must not throw: the block is then freed).
bool cache(std::vector<void*>& list, void* data) noexcept {
  try {
    list.push_back(data);
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

size_t round_up_64(size_t bytes) {
  return (std::max<size_t>(bytes, 1) + StoragePool::kAlignBytes - 1) / StoragePool::kAlignBytes *
         StoragePool::kAlignBytes;
}

}  // namespace

StoragePool::SizeClass StoragePool::size_class(size_t bytes) {
  const size_t b = round_up_64(bytes);
  if (b <= kSmallLimit) return {b / kAlignBytes - 1, b};
  // 2^e < b <= 2^(e+1); the classes are k * 2^(e-2) for k in 5..8.
  const int e = std::bit_width(b - 1) - 1;
  if (e > kLargestExponent) return {kUncached, b};
  const size_t step = size_t{1} << (e - 2);
  const size_t k = (b + step - 1) / step;
  return {64 + static_cast<size_t>(e - 12) * 4 + (k - 5), k * step};
}

size_t StoragePool::class_bytes(size_t bytes) { return size_class(bytes).bytes; }

StoragePool::StoragePool(size_t max_cached_bytes) : max_cached_bytes_(max_cached_bytes) {}

StoragePool::~StoragePool() { trim(); }

void* StoragePool::allocate(size_t bytes) {
  const auto [index, size] = size_class(bytes);
  {
    std::lock_guard lock(mutex_);
    stats_.live_bytes += static_cast<int64_t>(size);
    if (index != kUncached && !free_[index].empty()) {
      void* data = free_[index].back();
      free_[index].pop_back();
      ++stats_.cached_allocations;
      stats_.cached_bytes -= static_cast<int64_t>(size);
      --stats_.cached_blocks;
      unpoison(data, size);
      return data;
    }
    ++stats_.fresh_allocations;
  }
  try {
    return system_allocate(size);
  } catch (const std::bad_alloc&) {
    trim();
    try {
      return system_allocate(size);
    } catch (...) {
      std::lock_guard lock(mutex_);
      --stats_.fresh_allocations;
      stats_.live_bytes -= static_cast<int64_t>(size);
      throw;
    }
  }
}

void StoragePool::release(void* data, size_t bytes) noexcept {
  if (data == nullptr) return;
  const auto [index, size] = size_class(bytes);
  {
    std::lock_guard lock(mutex_);
    ++stats_.releases;
    stats_.live_bytes -= static_cast<int64_t>(size);
    if (index != kUncached &&
        static_cast<size_t>(stats_.cached_bytes) + size <= max_cached_bytes_ &&
        cache(free_[index], data)) {
      stats_.cached_bytes += static_cast<int64_t>(size);
      ++stats_.cached_blocks;
      poison(data, size);
      return;
    }
    ++stats_.system_frees;
  }
  system_free(data);
}

size_t StoragePool::index_bytes(size_t index) {
  if (index < 64) return (index + 1) * kAlignBytes;
  const size_t e = 12 + (index - 64) / 4;
  const size_t k = 5 + (index - 64) % 4;
  return k << (e - 2);
}

void StoragePool::free_cached_down_to(size_t keep) {
  for (size_t index = kClasses; index-- > 0 && static_cast<size_t>(stats_.cached_bytes) > keep;) {
    std::vector<void*>& list = free_[index];
    const size_t size = index_bytes(index);
    while (!list.empty() && static_cast<size_t>(stats_.cached_bytes) > keep) {
      void* data = list.back();
      list.pop_back();
      stats_.cached_bytes -= static_cast<int64_t>(size);
      --stats_.cached_blocks;
      ++stats_.system_frees;
      unpoison(data, size);
      system_free(data);
    }
  }
}

void StoragePool::trim() {
  std::lock_guard lock(mutex_);
  free_cached_down_to(0);
}

void StoragePool::set_max_cached_bytes(size_t bytes) {
  std::lock_guard lock(mutex_);
  max_cached_bytes_ = bytes;
  free_cached_down_to(bytes);
}

size_t StoragePool::max_cached_bytes() const {
  std::lock_guard lock(mutex_);
  return max_cached_bytes_;
}

StoragePoolStats StoragePool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

namespace {

// Set when the process pool is destroyed at exit: a Storage destroyed after
// it (a static Tensor assigned after the pool was built, a thread still
// running) frees its block directly. Trivially destructible, so it stays
// readable through static destruction.
constinit std::atomic<bool> process_pool_closed{false};

struct ProcessPool {
  ProcessPool() {
    // prepare holds the mutex across fork(); both sides release it.
    pthread_atfork(
        [] {
          if (!process_pool_closed.load()) storage_pool().lock_for_fork();
        },
        [] {
          if (!process_pool_closed.load()) storage_pool().unlock_after_fork();
        },
        [] {
          if (!process_pool_closed.load()) storage_pool().unlock_after_fork();
        });
  }
  ~ProcessPool() { process_pool_closed.store(true); }  // then `pool` frees its cache
  ProcessPool(const ProcessPool&) = delete;
  ProcessPool& operator=(const ProcessPool&) = delete;
  StoragePool pool;
};

}  // namespace

StoragePool& storage_pool() {
  static ProcessPool process;
  return process.pool;
}

namespace {
// The pool is built, and its fork handlers registered, before main runs,
// while the process has one thread. Built on first use instead, a thread's
// first allocation could register the handlers after a concurrent fork()
// had run the prepare handlers but before it cloned the process (glibc 2.36
// releases its atfork lock in between), and the child would inherit the
// mutex held by that thread: its first allocation would block forever.
[[maybe_unused]] const bool pool_built_before_main = (storage_pool(), true);
}  // namespace

void* allocate_storage(size_t bytes) {
  if (process_pool_closed.load(std::memory_order_relaxed)) {
    return system_allocate(StoragePool::class_bytes(bytes));
  }
  return storage_pool().allocate(bytes);
}

void release_storage(void* data, size_t bytes) {
  if (process_pool_closed.load(std::memory_order_relaxed)) {
    system_free(data);
    return;
  }
  storage_pool().release(data, bytes);
}

}  // namespace dtrain
