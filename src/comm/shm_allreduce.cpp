#include "comm/shm_allreduce.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "comm/collective_protocol.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

// Control block at the start of each segment; every word on its own cache
// line so that flag writes of one rank do not bounce another's.
constexpr size_t kLine = 64;
constexpr size_t kMagicOffset = 0 * kLine;      // u64 kSegmentMagic once initialised
constexpr size_t kPidOffset = 0 * kLine + 8;    // u64 owner pid
constexpr size_t kCapacityOffset = 0 * kLine + 16;
constexpr size_t kAttachedOffset = 1 * kLine;   // u64 1 once the owner mapped all peers
constexpr size_t kArrivedOffset = 2 * kLine;    // u64 seq whose input is in the data area
constexpr size_t kCountOffset = 3 * kLine;      // descriptor of the piece `arrived` names:
constexpr size_t kReduceOffset = 3 * kLine + 8; //   total count, reduction, seq
constexpr size_t kDescSeqOffset = 3 * kLine + 16;
constexpr size_t kReducedOffset = 4 * kLine;    // u64 seq whose own share is reduced
constexpr size_t kDoneOffset = 5 * kLine;       // u64 seq after which peers' areas are free
constexpr size_t kAbandonedOffset = 6 * kLine;  // u64 1 once the owner failed
constexpr size_t kDataOffset = 8 * kLine;
constexpr uint64_t kSegmentMagic = 0x314d48534e525444ull;  // "DTRNSHM1"

std::atomic_ref<uint64_t> word_at(std::byte* base, size_t offset) {
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(base + offset));
}

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

std::chrono::milliseconds since(Deadline::Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Deadline::Clock::now() - start);
}

}  // namespace

ShmAllreduce::ShmAllreduce(int rank, int size, ShmAllreduceOptions options, Deadline deadline)
    : rank_(rank),
      size_(size),
      options_(std::move(options)),
      segment_bytes_(kDataOffset + ((options_.capacity_bytes + kLine - 1) / kLine) * kLine),
      peers_(static_cast<size_t>(size)) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw UsageError(fmt::format("ShmAllreduce: rank {} outside world of size {}", rank, size));
  }
  if (options_.job_id.empty() || options_.job_id.find('/') != std::string::npos) {
    throw UsageError(fmt::format("ShmAllreduce: job id '{}' must be non-empty without '/'",
                                 options_.job_id));
  }
  if (options_.capacity_bytes < sizeof(float) * static_cast<size_t>(size)) {
    throw UsageError(fmt::format("ShmAllreduce: capacity {} bytes is below one float per rank",
                                 options_.capacity_bytes));
  }
  for (int r = 0; r < size; ++r) names_.push_back(fmt::format("/dtrain-{}-r{}", options_.job_id, r));
  try {
    map_segments(deadline);
    await_attached(deadline);
  } catch (...) {
    unmap_all();
    throw;
  }
}

ShmAllreduce::~ShmAllreduce() { unmap_all(); }

void ShmAllreduce::unmap_all() noexcept {
  for (Peer& peer : peers_) {
    if (peer.base != nullptr) munmap(peer.base, segment_bytes_);
    if (peer.pidfd >= 0) close(peer.pidfd);
    peer = Peer{};
  }
  if (!unlinked_) {
    shm_unlink(names_[static_cast<size_t>(rank_)].c_str());
    unlinked_ = true;
  }
}

void ShmAllreduce::map_segments(Deadline deadline) {
  const std::string what = "shm allreduce setup";
  const std::string& own_name = names_[static_cast<size_t>(rank_)];
  // A segment left by a crashed job with the same id would confuse peers.
  shm_unlink(own_name.c_str());
  const int own_fd = shm_open(own_name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (own_fd < 0) {
    throw CommError(rank_, what, fmt::format("shm_open({}) failed: {}", own_name, std::strerror(errno)));
  }
  if (ftruncate(own_fd, static_cast<off_t>(segment_bytes_)) != 0) {
    const int err = errno;
    close(own_fd);
    throw CommError(rank_, what, fmt::format("ftruncate({}, {} bytes) failed: {}", own_name,
                                             segment_bytes_, std::strerror(err)));
  }
  void* own = mmap(nullptr, segment_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, own_fd, 0);
  close(own_fd);
  if (own == MAP_FAILED) {
    throw CommError(rank_, what, fmt::format("mmap({}) failed: {}", own_name, std::strerror(errno)));
  }
  Peer& self = peers_[static_cast<size_t>(rank_)];
  self.base = static_cast<std::byte*>(own);
  self.pid = getpid();
  word_at(self.base, kPidOffset).store(static_cast<uint64_t>(self.pid));
  word_at(self.base, kCapacityOffset).store(options_.capacity_bytes);
  word_at(self.base, kMagicOffset).store(kSegmentMagic, std::memory_order_release);

  const auto started = Deadline::Clock::now();
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    Peer& peer = peers_[static_cast<size_t>(q)];
    const std::string& name = names_[static_cast<size_t>(q)];
    for (;;) {
      const int fd = shm_open(name.c_str(), O_RDWR, 0600);
      struct stat st {};
      if (fd >= 0 && fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) == segment_bytes_) {
        void* base = mmap(nullptr, segment_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (base == MAP_FAILED) {
          throw CommError(q, what, fmt::format("mmap({}) failed: {}", name, std::strerror(errno)));
        }
        if (word_at(static_cast<std::byte*>(base), kMagicOffset).load(std::memory_order_acquire) ==
            kSegmentMagic) {
          peer.base = static_cast<std::byte*>(base);
          break;
        }
        munmap(base, segment_bytes_);
      } else if (fd >= 0) {
        close(fd);
      }
      if (deadline.expired()) {
        throw TimeoutError(q, what, since(started),
                           fmt::format("shared-memory segment {} of rank {}", name, q));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    peer.pid = static_cast<int>(word_at(peer.base, kPidOffset).load());
    if (peer.pid != getpid()) {
      peer.pidfd = static_cast<int>(syscall(SYS_pidfd_open, peer.pid, 0));
    }
  }
  word_at(self.base, kAttachedOffset).store(1, std::memory_order_release);
}

void ShmAllreduce::await_attached(Deadline deadline) {
  const std::string what = "shm allreduce setup";
  const auto started = Deadline::Clock::now();
  for (int q = 0; q < size_; ++q) {
    const Peer& peer = peers_[static_cast<size_t>(q)];
    while (word_at(peer.base, kAttachedOffset).load(std::memory_order_acquire) == 0) {
      if (!peer_alive(peer)) throw CommError(q, what, fmt::format("rank {} (pid {}) died", q, peer.pid));
      if (deadline.expired()) {
        throw TimeoutError(q, what, since(started),
                           fmt::format("rank {} to map every shared-memory segment", q));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  // Every rank has mapped every segment: the names are no longer needed.
  shm_unlink(names_[static_cast<size_t>(rank_)].c_str());
  unlinked_ = true;
}

bool ShmAllreduce::peer_alive(const Peer& peer) const {
  if (peer.pid == getpid()) return true;
  if (peer.pidfd >= 0) {
    // A pidfd becomes readable when the process exits, zombie or not.
    pollfd pfd{peer.pidfd, POLLIN, 0};
    return poll(&pfd, 1, 0) == 0;
  }
  return kill(peer.pid, 0) == 0 || errno != ESRCH;
}

uint64_t& ShmAllreduce::flag_word(int rank, Flag flag) {
  std::byte* base = peers_[static_cast<size_t>(rank)].base;
  const size_t offset = flag == Flag::kArrived   ? kArrivedOffset
                        : flag == Flag::kReduced ? kReducedOffset
                                                 : kDoneOffset;
  return *reinterpret_cast<uint64_t*>(base + offset);
}

float* ShmAllreduce::data_area(int rank) {
  return reinterpret_cast<float*>(peers_[static_cast<size_t>(rank)].base + kDataOffset);
}

void ShmAllreduce::await_all(Flag flag, uint64_t seq, Deadline deadline, const std::string& what,
                             const std::string& awaited) {
  constexpr int kSpins = 2000;
  constexpr int kYields = 20000;
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    std::atomic_ref<uint64_t> word(flag_word(q, flag));
    const auto started = Deadline::Clock::now();
    for (int round = 0; word.load(std::memory_order_acquire) < seq; ++round) {
      if (round < kSpins) {
        cpu_relax();
        continue;
      }
      const Peer& peer = peers_[static_cast<size_t>(q)];
      if (word_at(peer.base, kAbandonedOffset).load(std::memory_order_acquire) != 0) {
        throw CommError(q, what, fmt::format("rank {} abandoned the shared-memory allreduce", q));
      }
      if (!peer_alive(peer)) {
        throw CommError(q, what, fmt::format("rank {} (pid {}) died", q, peer.pid));
      }
      if (deadline.expired()) {
        throw TimeoutError(q, what, since(started), fmt::format("rank {} to {}", q, awaited));
      }
      if (round < kSpins + kYields) {
        sched_yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }
}

void ShmAllreduce::allreduce(std::span<float> data, ReduceOp op, Deadline deadline,
                             const std::string& what) {
  if (!failure_.empty()) {
    throw CommError(-1, what, fmt::format("shared-memory allreduce failed earlier: {}", failure_));
  }
  if (size_ == 1) return;
  const size_t piece = options_.capacity_bytes / sizeof(float);
  try {
    size_t offset = 0;
    do {
      const size_t n = std::min(piece, data.size() - offset);
      allreduce_piece(data.subspan(offset, n), op, deadline, what);
      offset += n;
    } while (offset < data.size());
  } catch (const CommError& e) {
    failure_ = e.what();
    word_at(peers_[static_cast<size_t>(rank_)].base, kAbandonedOffset)
        .store(1, std::memory_order_release);
    throw;
  }
}

void ShmAllreduce::allreduce_piece(std::span<float> data, ReduceOp op, Deadline deadline,
                                   const std::string& what) {
  const uint64_t seq = ++seq_;
  std::byte* own = peers_[static_cast<size_t>(rank_)].base;
  const size_t count = data.size();

  // 1. Publish the input once every peer is done reading the previous piece.
  await_all(Flag::kDone, seq - 1, deadline, what, "finish reading the previous piece");
  if (count != 0) std::memcpy(data_area(rank_), data.data(), count * sizeof(float));
  word_at(own, kCountOffset).store(count, std::memory_order_relaxed);
  word_at(own, kReduceOffset).store(static_cast<uint64_t>(op), std::memory_order_relaxed);
  word_at(own, kDescSeqOffset).store(seq, std::memory_order_relaxed);
  word_at(own, kArrivedOffset).store(seq, std::memory_order_release);

  // 2. Reduce the own share out of every rank's data area.
  await_all(Flag::kArrived, seq, deadline, what, "arrive");
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    std::byte* base = peers_[static_cast<size_t>(q)].base;
    const uint64_t their_count = word_at(base, kCountOffset).load(std::memory_order_relaxed);
    const auto their_op = static_cast<ReduceOp>(word_at(base, kReduceOffset).load(std::memory_order_relaxed));
    if (their_count != count || their_op != op) {
      throw CommError(q, what,
                      fmt::format("piece #{} ({} floats, {}) on rank {} does not match piece #{} "
                                  "({} floats, {}) from rank {}",
                                  seq, count, to_string(op), rank_,
                                  word_at(base, kDescSeqOffset).load(), their_count,
                                  to_string(their_op), q));
    }
  }
  const std::vector<size_t> offsets = block_offsets(count, static_cast<size_t>(size_));
  const size_t lo = offsets[static_cast<size_t>(rank_)];
  const size_t hi = offsets[static_cast<size_t>(rank_) + 1];
  if (hi > lo) {
    // Each share is reduced on one rank only, so every rank reads the same
    // result for it whatever order the reduction uses here.
    const std::span<float> share(data_area(rank_) + lo, hi - lo);
    for (int q = 0; q < size_; ++q) {
      if (q != rank_) reduce_into(share, std::span<const float>(data_area(q) + lo, hi - lo), op);
    }
    if (op == ReduceOp::kMean) {
      const float divisor = static_cast<float>(size_);
      for (float& x : share) x /= divisor;
    }
  }
  word_at(own, kReducedOffset).store(seq, std::memory_order_release);

  // 3. Gather every share.
  await_all(Flag::kReduced, seq, deadline, what, "reduce its share");
  for (int q = 0; q < size_; ++q) {
    const size_t qlo = offsets[static_cast<size_t>(q)];
    const size_t qhi = offsets[static_cast<size_t>(q) + 1];
    if (qhi > qlo) std::memcpy(data.data() + qlo, data_area(q) + qlo, (qhi - qlo) * sizeof(float));
  }
  word_at(own, kDoneOffset).store(seq, std::memory_order_release);
}

}  // namespace dtrain::comm
