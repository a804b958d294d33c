#include "comm/transport/owned_buffer.h"

#include <cstring>
#include <map>
#include <mutex>

namespace dtrain::comm {

namespace {

class BufferPool {
 public:
  // A pooled buffer of at least `bytes` and at most twice that, or null.
  std::pair<std::byte*, size_t> take(size_t bytes) {
    std::lock_guard lock(mutex_);
    const auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > 2 * bytes) return {nullptr, 0};
    const std::pair<std::byte*, size_t> found{it->second, it->first};
    held_ -= it->first;
    free_.erase(it);
    return found;
  }
  // Keeps `data` unless the pool is full; false when the caller frees it.
  bool keep(std::byte* data, size_t capacity) {
    std::lock_guard lock(mutex_);
    if (held_ + capacity > kPoolBytes) return false;
    free_.emplace(capacity, data);
    held_ += capacity;
    return true;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, std::byte*> free_;  // capacity -> buffer
  size_t held_ = 0;
};

// Never destroyed: ZeroMQ's I/O threads may still release buffers while
// static objects are torn down at exit.
BufferPool& pool() {
  static BufferPool* const instance = new BufferPool;
  return *instance;
}

}  // namespace

void release_owned_buffer(std::byte* data, size_t capacity) noexcept {
  if (data == nullptr) return;
  if (capacity >= kPooledMinBytes && pool().keep(data, capacity)) return;
  delete[] data;
}

OwnedBuffer OwnedBuffer::allocate(size_t bytes) {
  if (bytes >= kPooledMinBytes) {
    if (const auto [data, capacity] = pool().take(bytes); data != nullptr) {
      return {std::unique_ptr<std::byte[], Release>(data, Release{capacity}), bytes};
    }
  }
  return {std::unique_ptr<std::byte[], Release>(new std::byte[bytes], Release{bytes}), bytes};
}

OwnedBuffer OwnedBuffer::join(std::span<const std::byte> head, std::span<const std::byte> body) {
  OwnedBuffer out = allocate(head.size() + body.size());
  if (!head.empty()) std::memcpy(out.data.get(), head.data(), head.size());
  if (!body.empty()) std::memcpy(out.data.get() + head.size(), body.data(), body.size());
  return out;
}

}  // namespace dtrain::comm
