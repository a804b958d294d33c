// FramePool: reused payload buffers (frame_pool.h holds the contract).
#include "ps/frame_pool.h"

#include <utility>

#include "ps/messages.h"

namespace dtrain::ps {

std::vector<std::byte> FramePool::take(size_t bytes) {
  std::lock_guard lock(mutex_);
  if (free_.empty()) return {};
  size_t best = 0;
  for (size_t i = 1; i < free_.size(); ++i) {
    const size_t have = free_[i].capacity(), chosen = free_[best].capacity();
    const bool fits = have >= bytes, chosen_fits = chosen >= bytes;
    // The smallest that fits; while none fits, the largest.
    if ((fits && (!chosen_fits || have < chosen)) || (!fits && !chosen_fits && have > chosen)) {
      best = i;
    }
  }
  std::vector<std::byte> buffer = std::move(free_[best]);
  free_[best] = std::move(free_.back());
  free_.pop_back();
  free_bytes_ -= buffer.capacity();
  buffer.clear();
  return buffer;
}

std::shared_ptr<const std::vector<std::byte>> FramePool::share(std::vector<std::byte> payload) {
  auto* owned = new std::vector<std::byte>(std::move(payload));
  return std::shared_ptr<const std::vector<std::byte>>(
      owned, [pool = shared_from_this()](const std::vector<std::byte>* buffer) {
        std::unique_ptr<std::vector<std::byte>> back(const_cast<std::vector<std::byte>*>(buffer));
        pool->give_back(std::move(*back));
      });
}

void FramePool::give_back(std::vector<std::byte>&& buffer) {
  std::lock_guard lock(mutex_);
  if (free_.size() >= kMaxBuffers || free_bytes_ + buffer.capacity() > kMaxBytes) return;
  free_bytes_ += buffer.capacity();
  free_.push_back(std::move(buffer));
}

size_t FramePool::buffers() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

size_t FramePool::bytes() const {
  std::lock_guard lock(mutex_);
  return free_bytes_;
}

std::shared_ptr<const std::vector<std::byte>> encode_pooled(FramePool& pool,
                                                            const Message& message) {
  return pool.share(encode_message(message, pool.take(encoded_size_bound(message))));
}

}  // namespace dtrain::ps
