// StoragePool: a caching allocator for tensor storage (the CPU counterpart of
// PyTorch's CUDA caching allocator). A training step frees and re-allocates
// the same activation and gradient sizes every iteration; the pool keeps the
// freed blocks and hands them to the next allocation of the same size class,
// so that a steady-state step takes nothing from the system: no malloc, no
// mmap, no page faults on fresh pages (measured before the pool, with
// train.threads = 2: 10.5% of an MLP step in the kernel's clear_page_erms).
//
// Size classes: requests are rounded up to 64 bytes; up to 4 KiB every
// multiple of 64 is a class, above it four classes per power of two (5/4,
// 6/4, 7/4 and 8/4 of it), so a block is at most 25% larger than its
// request. Each class has a LIFO free list (the most recently freed block,
// the one still in cache, goes out first). Blocks are 64-byte aligned.
//
// Ownership: allocate() hands out a block owned by the caller until it gives
// it back with release() (same pool, same requested bytes); the pool owns
// the cached blocks and frees them on trim(), on set_max_cached_bytes() below
// what it holds, and in its destructor. Storage (tensor.h) is the only
// client in the library: a block goes back when the last view of its
// storage is destroyed, never earlier, so a block still referenced cannot
// be handed out again.
// The cap: at most max_cached_bytes of free blocks are kept (default
// 512 MiB); a block released while the cache is full, or larger than the
// cap, goes straight back to the system. Live blocks are not bounded.
// Zeroing: never. A block comes back with whatever its last user wrote;
// Tensor::zeros() and friends fill, Tensor::empty() promises nothing.
// Thread safety: every member may be called from any thread; one mutex
// guards the free lists and counters (measured against per-thread caches in
// bench/tensor/storage_pool_bench.cpp: uncontended it costs tens of
// nanoseconds per allocation, a few microseconds per training step, and it
// lets a block freed on one thread serve an allocation on another, which the
// intra-op team and the strategies' threads do every step; per-thread caches
// strand those blocks and were the cause of the page faults above).
// Fork: the process pool registers pthread_atfork handlers that hold its
// mutex across fork(), so a child forked while another thread allocates
// finds the pool consistent; the child inherits the cached blocks (copy on
// write) and its own counters.
// AddressSanitizer: cached blocks are poisoned, so a read or write through a
// dangling pointer into a cached block is reported (use-after-poison).
// Errors: std::bad_alloc when the system has no memory left (after
// trimming the cache and retrying once). Blocking: only on the mutex.
//
// Why process-wide: tensors are created deep inside kernels, autograd and
// every strategy, which carry no context to hand an allocator through (the
// same reason as the intra-op team, tensor/intra_op.h); a pool is a property
// of the process's memory, as malloc's arenas are. Tests construct their own
// StoragePool to check the pool itself.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace dtrain {

struct StoragePoolStats {
  int64_t fresh_allocations = 0;   // blocks obtained from the system
  int64_t cached_allocations = 0;  // blocks served from a free list
  int64_t releases = 0;            // blocks given back by their users
  int64_t system_frees = 0;        // blocks returned to the system (cap, trim)
  int64_t cached_bytes = 0;        // bytes held in the free lists now
  int64_t cached_blocks = 0;       // blocks held in the free lists now
  int64_t live_bytes = 0;          // bytes handed out and not yet released (class sizes)
};

class StoragePool {
 public:
  static constexpr size_t kAlignBytes = 64;
  static constexpr size_t kDefaultMaxCachedBytes = size_t{512} << 20;

  explicit StoragePool(size_t max_cached_bytes = kDefaultMaxCachedBytes);
  ~StoragePool();
  StoragePool(const StoragePool&) = delete;
  StoragePool& operator=(const StoragePool&) = delete;

  // A block of at least `bytes` (>= 1) bytes, 64-byte aligned, uninitialised.
  void* allocate(size_t bytes);
  // Gives back a block from allocate(bytes) of this pool. Never throws (it
  // runs in destructors): a block the cache cannot take is freed.
  void release(void* data, size_t bytes) noexcept;
  // Frees every cached block.
  void trim();
  // The cap on cached bytes; lowering it frees cached blocks down to it.
  void set_max_cached_bytes(size_t bytes);
  size_t max_cached_bytes() const;
  StoragePoolStats stats() const;

  // The size of the class a request of `bytes` falls in (what is allocated).
  static size_t class_bytes(size_t bytes);

  // For the fork handlers: hold the mutex across fork().
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

 private:
  // 64 classes up to 4 KiB, then 4 per power of two up to 2^48 bytes.
  static constexpr size_t kClasses = 64 + 4 * 36;
  // A request's class: its index (kUncached beyond the largest class) and
  // the bytes allocated for it.
  struct SizeClass {
    size_t index;
    size_t bytes;
  };
  static SizeClass size_class(size_t bytes);
  // The block size of class `index`.
  static size_t index_bytes(size_t index);
  // Frees cached blocks, largest classes first, until at most `keep` bytes
  // stay cached. Caller holds mutex_.
  void free_cached_down_to(size_t keep);

  mutable std::mutex mutex_;
  std::array<std::vector<void*>, kClasses> free_;
  size_t max_cached_bytes_;
  StoragePoolStats stats_;
};

// The process's pool, which Storage allocates from.
StoragePool& storage_pool();

// Storage's entry points: storage_pool().allocate() and release(), or the
// system directly once the process pool has been destroyed at exit.
void* allocate_storage(size_t bytes);
void release_storage(void* data, size_t bytes);

}  // namespace dtrain
