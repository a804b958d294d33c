// OwnedBuffer: a message buffer whose ownership passes to
// Transport::send_owned, so that the transport can hand it to the wire
// without a copy and without making the caller wait until the bytes have
// left (transport.h).
//
// Buffers of at least kPooledMinBytes are recycled through one process-wide
// pool: the ring sends one such buffer per chunk and ZeroMQ frees it from
// its I/O thread moments later, and a fresh allocation of that size comes
// from mmap and faults in (and zeroes) every page again, which cost about a
// tenth of the CPU of a 1 MiB allreduce over tcp. The pool keeps at most
// kPoolBytes of freed buffers and hands out the smallest one that fits
// (but not one more than twice the size asked for); smaller buffers come
// from and go back to the allocator directly.
//
// Ownership: move-only; the buffer goes back to the pool when `data` is
// reset, or through release_owned_buffer() once a transport has released
// it from `data`. Thread safety: allocate() and release_owned_buffer() may
// run on any threads at once (one mutex). Never throws but std::bad_alloc.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

namespace dtrain::comm {

inline constexpr size_t kPooledMinBytes = size_t{64} << 10;
inline constexpr size_t kPoolBytes = size_t{64} << 20;

// Returns a buffer of `capacity` bytes that OwnedBuffer::allocate made
// (to the pool, or to the allocator). `data` may be null.
void release_owned_buffer(std::byte* data, size_t capacity) noexcept;

struct OwnedBuffer {
  struct Release {
    size_t capacity = 0;
    void operator()(std::byte* data) const noexcept { release_owned_buffer(data, capacity); }
  };

  std::unique_ptr<std::byte[], Release> data;
  size_t size = 0;

  // At least `bytes` uninitialised bytes (the caller fills them); size() is
  // `bytes`, the capacity is data.get_deleter().capacity.
  static OwnedBuffer allocate(size_t bytes);
  // A buffer holding head ‖ body.
  static OwnedBuffer join(std::span<const std::byte> head, std::span<const std::byte> body);

  size_t capacity() const { return data.get_deleter().capacity; }
  std::span<std::byte> bytes() { return {data.get(), size}; }
  std::span<const std::byte> bytes() const { return {data.get(), size}; }
};

}  // namespace dtrain::comm
