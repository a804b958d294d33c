#include "ps/shm_segment.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <utility>

#include "core/error.h"

namespace dtrain::ps {

namespace {

constexpr uint64_t kMagic = 0x314d48534e525444ull;  // "DTRNSHM1", little-endian
constexpr uint32_t kLayout = 1;
constexpr size_t kHeaderBytes = 256;
constexpr size_t kPushSequenceAt = 64;
constexpr size_t kPullSequenceAt = 128;

struct Header {
  uint64_t magic;
  uint32_t layout;
  uint32_t worker;
  uint32_t server;
  uint32_t reserved;
  uint64_t capacity;
  uint64_t id;
};

size_t region_bytes(uint64_t capacity) { return (capacity * sizeof(float) + 63) / 64 * 64; }
size_t segment_bytes(uint64_t capacity) { return kHeaderBytes + 2 * region_bytes(capacity); }

std::byte* map(int fd, size_t bytes, const std::string& path) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {  // the caller's segment closes fd
    const int err = errno;
    throw CommError(-1, "ps shared memory", fmt::format("mmap {}: {}", path, std::strerror(err)));
  }
  return static_cast<std::byte*>(p);
}

}  // namespace

std::string ShmSegment::path(const std::string& folder, uint32_t worker, uint32_t server) {
  return fmt::format("{}/shm-w{}-s{}", folder, worker, server);
}

ShmSegment ShmSegment::create(const std::string& folder, uint32_t worker, uint32_t server,
                              uint64_t capacity) {
  ShmSegment s;
  s.path_ = path(folder, worker, server);
  s.capacity_ = capacity;
  s.bytes_ = segment_bytes(capacity);
  ::unlink(s.path_.c_str());  // a previous incarnation's file, if any
  s.fd_ = ::open(s.path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (s.fd_ >= 0) s.owner_ = true;  // from here the destructor removes the file
  if (s.fd_ < 0 || ::ftruncate(s.fd_, static_cast<off_t>(s.bytes_)) != 0) {
    throw CommError(static_cast<int>(server), "ps shared memory",
                    fmt::format("create {}: {}", s.path_, std::strerror(errno)));
  }
  s.base_ = map(s.fd_, s.bytes_, s.path_);
  std::random_device random;
  s.id_ = (static_cast<uint64_t>(random()) << 32) ^ random();
  Header h{kMagic, kLayout, worker, server, 0, capacity, s.id_};
  std::memcpy(s.base_, &h, sizeof h);
  return s;
}

ShmSegment ShmSegment::open(const std::string& folder, uint32_t worker, uint32_t server,
                            uint64_t segment_id) {
  ShmSegment s;
  s.path_ = path(folder, worker, server);
  s.fd_ = ::open(s.path_.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (s.fd_ < 0) {
    throw DataError(
        fmt::format("shared-memory segment {}: cannot open: {}", s.path_, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(s.fd_, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & 0077) != 0 || static_cast<size_t>(st.st_size) < kHeaderBytes) {
    const unsigned mode = st.st_mode & 07777;
    ::close(s.fd_);
    s.fd_ = -1;
    throw DataError(fmt::format(
        "shared-memory segment {}: refused (owner uid {}, mode {:04o}, {} bytes; it must be a "
        "regular file of this user (uid {}) with no permission bits for group or others)",
        s.path_, st.st_uid, mode, st.st_size, ::geteuid()));
  }
  s.bytes_ = static_cast<size_t>(st.st_size);
  s.base_ = map(s.fd_, s.bytes_, s.path_);
  Header h{};
  std::memcpy(&h, s.base_, sizeof h);
  const bool fits = h.capacity < (uint64_t{1} << 40) && segment_bytes(h.capacity) == s.bytes_;
  if (h.magic != kMagic || h.layout != kLayout || h.worker != worker || h.server != server ||
      !fits || h.id != segment_id) {
    throw DataError(fmt::format(
        "shared-memory segment {}: its header (layout {}, worker {}, server {}, capacity {}, id "
        "{:#x}, {} bytes) does not name worker {}, server {}, id {:#x}",
        s.path_, h.layout, h.worker, h.server, h.capacity, h.id, s.bytes_, worker, server,
        segment_id));
  }
  s.capacity_ = h.capacity;
  s.id_ = h.id;
  return s;
}

ShmSegment::ShmSegment(ShmSegment&& other) noexcept { *this = std::move(other); }

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    base_ = std::exchange(other.base_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    capacity_ = other.capacity_;
    id_ = other.id_;
    owner_ = std::exchange(other.owner_, false);
  }
  return *this;
}

ShmSegment::~ShmSegment() { release(); }

void ShmSegment::release() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
  if (owner_ && fd_ >= 0) {
    // Only this segment's file: a newer one at the same path (a later
    // init() of the same worker) stays.
    struct stat mine {};
    struct stat there {};
    if (::fstat(fd_, &mine) == 0 && ::lstat(path_.c_str(), &there) == 0 &&
        mine.st_ino == there.st_ino && mine.st_dev == there.st_dev) {
      ::unlink(path_.c_str());
    }
  }
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  fd_ = -1;
  owner_ = false;
}

std::span<std::byte> ShmSegment::push_region() const {
  return {base_ + kHeaderBytes, static_cast<size_t>(capacity_) * sizeof(float)};
}

std::span<std::byte> ShmSegment::pull_region() const {
  return {base_ + kHeaderBytes + region_bytes(capacity_),
          static_cast<size_t>(capacity_) * sizeof(float)};
}

std::atomic_ref<uint64_t> ShmSegment::sequence(Region region) const {
  auto* word = reinterpret_cast<uint64_t*>(
      base_ + (region == Region::kPush ? kPushSequenceAt : kPullSequenceAt));
  return std::atomic_ref<uint64_t>(*word);
}

uint64_t ShmSegment::begin_write(Region region) {
  std::atomic_ref<uint64_t> seq = sequence(region);
  const uint64_t odd = (seq.load(std::memory_order_relaxed) | 1) + 2;
  // An acquire exchange, not a relaxed store and a fence: the region's
  // writes that follow cannot move before it either, and ThreadSanitizer
  // (which refuses atomic_thread_fence) understands it.
  seq.exchange(odd, std::memory_order_acquire);
  return odd + 1;
}

void ShmSegment::end_write(Region region, uint64_t sequence_value) {
  sequence(region).store(sequence_value, std::memory_order_release);
}

bool ShmSegment::stable(Region region, uint64_t sequence_value) const {
  // A read-modify-write that changes nothing, with release order: the
  // region's reads before it cannot move after it (the seqlock reader's
  // acquire fence, in a form ThreadSanitizer accepts; both sides map the
  // segment writable).
  return sequence_value % 2 == 0 &&
         sequence(region).fetch_add(0, std::memory_order_acq_rel) == sequence_value;
}

std::string shm_folder(std::string_view endpoint) {
  constexpr std::string_view kIpc = "ipc://";
  if (endpoint.substr(0, kIpc.size()) != kIpc) return {};
  const std::string_view path = endpoint.substr(kIpc.size());
  const size_t slash = path.rfind('/');
  return slash == std::string_view::npos || slash == 0 ? std::string()
                                                       : std::string(path.substr(0, slash));
}

ShmFloats write_floats(ShmSegment& segment, ShmSegment::Region region,
                       const std::vector<std::span<const std::byte>>& parts) {
  const std::span<std::byte> out =
      region == ShmSegment::Region::kPush ? segment.push_region() : segment.pull_region();
  size_t bytes = 0;
  for (const std::span<const std::byte> part : parts) bytes += part.size();
  if (bytes > out.size() || bytes % sizeof(float) != 0) {
    throw UsageError(fmt::format("ps shared memory: {} bytes do not fit a region of {} floats",
                                 bytes, segment.capacity()));
  }
  ShmFloats floats;
  floats.present = true;
  floats.count = bytes / sizeof(float);
  floats.segment_id = segment.id();
  floats.sequence = segment.begin_write(region);
  size_t at = 0;
  for (const std::span<const std::byte> part : parts) {
    if (!part.empty()) std::memcpy(out.data() + at, part.data(), part.size());
    at += part.size();
  }
  segment.end_write(region, floats.sequence);
  return floats;
}

std::span<const std::byte> view_floats(const ShmSegment& segment, ShmSegment::Region region,
                                       const ShmFloats& floats) {
  const std::span<const std::byte> in =
      region == ShmSegment::Region::kPush ? segment.push_region() : segment.pull_region();
  const char* name = region == ShmSegment::Region::kPush ? "push" : "pull";
  if (floats.segment_id != segment.id()) {
    throw DataError(fmt::format("shared memory: the descriptor names segment {:#x}, not {:#x}",
                                floats.segment_id, segment.id()));
  }
  if (floats.offset % sizeof(float) != 0 || floats.offset > in.size() ||
      floats.count > (in.size() - floats.offset) / sizeof(float)) {
    throw DataError(
        fmt::format("shared memory: {} floats at offset {} do not fit the {} region of {} floats",
                    floats.count, floats.offset, name, segment.capacity()));
  }
  if (!segment.stable(region, floats.sequence)) {
    throw DataError(fmt::format(
        "shared memory: stale {} descriptor (sequence {}): the region was written since or never",
        name, floats.sequence));
  }
  return in.subspan(static_cast<size_t>(floats.offset),
                    static_cast<size_t>(floats.count) * sizeof(float));
}

}  // namespace dtrain::ps
