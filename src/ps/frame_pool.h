// Reused payload buffers for a parameter-server endpoint's outgoing frames
// (docs/parameter-server.md "Sparse rows", ninth round). A frame's payload is
// encoded into a buffer taken from the pool and handed to ZeroMQ shared
// (comm::wire::FramedSocket::send's shared_ptr overload); when the last
// holder lets go (ZeroMQ once the frame is on the wire, a client's kept push
// once settled) the buffer goes back to the pool with its capacity, so the
// next frame of that size writes into pages already mapped instead of a
// fresh allocation's (page faults, and munmap when glibc mmaps it).
//
// take(bytes) returns the smallest free buffer of at least `bytes` capacity
// (else the largest, to grow, else a new one), cleared. A returned buffer is
// kept while the pool holds fewer than kMaxBuffers and its kept capacity
// stays under kMaxBytes; otherwise it is freed. The pool lives as long as
// any buffer it shared (the release holds a reference).
//
// Thread safety: every member may be called from any thread (buffers come
// back on ZeroMQ's I/O thread); one mutex. Never blocks otherwise.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace dtrain::ps {

struct Message;

class FramePool : public std::enable_shared_from_this<FramePool> {
 public:
  static constexpr size_t kMaxBuffers = 16;
  static constexpr size_t kMaxBytes = size_t{64} << 20;

  static std::shared_ptr<FramePool> create() { return std::shared_ptr<FramePool>(new FramePool); }

  std::vector<std::byte> take(size_t bytes);
  // `payload`, shared: back into this pool when the last reference goes.
  std::shared_ptr<const std::vector<std::byte>> share(std::vector<std::byte> payload);

  // Buffers held now and their capacity in bytes (tests).
  size_t buffers() const;
  size_t bytes() const;

 private:
  FramePool() = default;
  void give_back(std::vector<std::byte>&& buffer);

  mutable std::mutex mutex_;
  std::vector<std::vector<std::byte>> free_;
  size_t free_bytes_ = 0;
};

// `message`'s payload (encode_message) written into one of `pool`'s
// buffers and shared from it: what every ps endpoint sends.
std::shared_ptr<const std::vector<std::byte>> encode_pooled(FramePool& pool,
                                                            const Message& message);

}  // namespace dtrain::ps
