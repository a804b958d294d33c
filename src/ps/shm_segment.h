// ps::ShmSegment: the shared-memory segment of one (worker, server) link on
// one host, through which the bulk floats of a dense push and of its pull
// reply travel instead of the socket (docs/parameter-server.md "Shared
// memory for same-host links"). Only on private-ipc links: the segment is a
// file "shm-w<W>-s<S>" in the same private folder (mode 0700, owned by this
// user) as the servers' ipc sockets; the folder check is the socket's
// (comm/wire/framed_socket.h) and the file's own is here.
//
// Layout (bytes, the host's order: both ends are on this host):
//   0 u64 magic "DTRNSHM1" | 8 u32 layout (1) | 12 u32 worker | 16 u32 server |
//   20 u32 reserved | 24 u64 capacity (floats per region) | 32 u64 segment id
//   (random, per creation) | 64 u64 push sequence | 128 u64 pull sequence |
//   256 the push region, capacity floats rounded up to 64 bytes | then the
//   pull region, as large.
// Each region is written under a sequence lock: its writer makes the
// sequence odd, writes, then makes it even (the new value). A descriptor
// (ShmFloats, messages.h) names the even value its data was written under,
// so a reader can tell stale or rewritten data from the data meant.
//
// The worker creates the segment (mode 0600, O_EXCL after unlinking a
// previous incarnation's file; it unlinks it when destroyed); the server,
// a backup taking the range over or a replacement opens it by name on the
// first descriptor that worker sends and refuses a file that is missing, a
// symlink, not a regular file, owned by another user, open to group or
// others, of the wrong size, or whose header does not name this link and
// the descriptor's segment id.
//
// Ownership: owns its file descriptor and mapping (closed and unmapped by
// the destructor); move-only. Thread safety: one thread per process uses
// an object; the other process writes only the other region's side of the
// protocol (the worker the push region, the server the pull region).
// Errors: create() throws CommError naming the path and errno; open()
// throws DataError naming the path and what does not match (the server
// refuses the request with it). Nothing here blocks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ps/messages.h"

namespace dtrain::ps {

class ShmSegment {
 public:
  // The segment's file for (worker, server) in `folder`.
  static std::string path(const std::string& folder, uint32_t worker, uint32_t server);
  // The worker's side: a new segment of `capacity` floats per region.
  static ShmSegment create(const std::string& folder, uint32_t worker, uint32_t server,
                           uint64_t capacity);
  // The server's side: the worker's segment, which must carry `segment_id`.
  static ShmSegment open(const std::string& folder, uint32_t worker, uint32_t server,
                         uint64_t segment_id);

  ShmSegment(ShmSegment&& other) noexcept;
  ShmSegment& operator=(ShmSegment&& other) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();

  uint64_t id() const { return id_; }
  uint64_t capacity() const { return capacity_; }
  std::span<std::byte> push_region() const;
  std::span<std::byte> pull_region() const;

  // The sequence lock of a region (push or pull): begin_write() makes it odd
  // and returns the even value end_write() will publish; reads check a
  // descriptor's value before and after (stable()).
  enum class Region : uint8_t { kPush, kPull };
  uint64_t begin_write(Region region);
  void end_write(Region region, uint64_t sequence);
  // Whether `region`'s data is (still) the data published under `sequence`.
  bool stable(Region region, uint64_t sequence) const;

 private:
  ShmSegment() = default;
  std::atomic_ref<uint64_t> sequence(Region region) const;
  void release();

  std::string path_;
  int fd_ = -1;
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
  uint64_t capacity_ = 0;
  uint64_t id_ = 0;
  bool owner_ = false;  // the creator unlinks the file
};

// The folder of a private-ipc endpoint ("ipc://FOLDER/NAME"), where its
// link's segments live; empty for any other endpoint (tcp, inproc).
std::string shm_folder(std::string_view endpoint);

// Writes `parts` one after the other at the start of `region` under its
// sequence lock: the one copy of the sender. Returns their descriptor.
// UsageError when they do not fit the region.
ShmFloats write_floats(ShmSegment& segment, ShmSegment::Region region,
                       const std::vector<std::span<const std::byte>>& parts);

// The bytes `floats` names in `region`, checked: the segment id, the
// offset (whole floats) and count within the region, and the region's
// sequence still the one named (else stale: rewritten or never written).
// DataError naming the difference.
std::span<const std::byte> view_floats(const ShmSegment& segment, ShmSegment::Region region,
                                       const ShmFloats& floats);

}  // namespace dtrain::ps
