#include "comm/collectives/shm_allreduce.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <thread>

#include "comm/collectives/collective_protocol.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

// Control block at the start of each segment; every word on its own cache
// line so that flag writes of one rank do not bounce another's.
constexpr size_t kLine = 64;
constexpr size_t kMagicOffset = 0 * kLine;    // u64 kSegmentMagic once initialised
constexpr size_t kPidOffset = 0 * kLine + 8;  // u64 owner pid
constexpr size_t kCapacityOffset = 0 * kLine + 16;
constexpr size_t kAttachedOffset = 1 * kLine;    // u64 1 once the owner mapped all peers
constexpr size_t kArrivedOffset = 2 * kLine;     // u64 seq whose input is in the data area
constexpr size_t kCountOffset = 3 * kLine;       // descriptor of the piece `arrived` names:
constexpr size_t kReduceOffset = 3 * kLine + 8;  //   total count, reduction, seq
constexpr size_t kDescSeqOffset = 3 * kLine + 16;
constexpr size_t kReducedOffset = 4 * kLine;    // u64 seq whose own share is reduced
constexpr size_t kDoneOffset = 5 * kLine;       // u64 seq after which peers' areas are free
constexpr size_t kAbandonedOffset = 6 * kLine;  // u64 culprit rank + 2 once the owner failed
constexpr size_t kWaitersOffset = 7 * kLine;    // u64 peers asleep on this segment's flags
// The collective the owner's communicator executes (announce()), under a
// seqlock: version odd while being written, 0 before the first.
constexpr size_t kAnnounceOffset = 8 * kLine;
constexpr size_t kAnnounceWords = 7;  // version, kind, reduce, dtype, root, count, seq
constexpr size_t kDataOffset = 10 * kLine;
constexpr uint64_t kSegmentMagic = 0x324d48534e525444ull;  // "DTRNSHM2"

// The longest futex sleep between checks of the deadline, the peer's
// liveness and what it announced.
constexpr long kFutexSliceNs = 2'000'000;

static_assert(std::endian::native == std::endian::little,
              "the futex word is the low half of a 64-bit flag");

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

// FUTEX_WAIT/FUTEX_WAKE on the low 32 bits of a flag word. Not the
// _PRIVATE variants: the word is shared between processes.
void futex_wait(uint64_t* word, uint32_t expected, long timeout_ns) {
  const timespec timeout{0, timeout_ns};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

void futex_wake_all(uint64_t* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
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
      peers_(static_cast<size_t>(size)),
      wait_policy_(options_.wait_policy) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw UsageError(fmt::format("ShmAllreduce: rank {} outside world of size {}", rank, size));
  }
  if (options_.job_id.empty() || options_.job_id.find('/') != std::string::npos) {
    throw UsageError(
        fmt::format("ShmAllreduce: job id '{}' must be non-empty without '/'", options_.job_id));
  }
  if (options_.capacity_bytes < sizeof(float) * static_cast<size_t>(size)) {
    throw UsageError(fmt::format("ShmAllreduce: capacity {} bytes is below one float per rank",
                                 options_.capacity_bytes));
  }
  for (int r = 0; r < size; ++r)
    names_.push_back(fmt::format("/dtrain-{}-r{}", options_.job_id, r));
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
    throw CommError(rank_, what,
                    fmt::format("shm_open({}) failed: {}", own_name, std::strerror(errno)));
  }
  if (ftruncate(own_fd, static_cast<off_t>(segment_bytes_)) != 0) {
    const int err = errno;
    close(own_fd);
    throw CommError(rank_, what,
                    fmt::format("ftruncate({}, {} bytes) failed: {}", own_name, segment_bytes_,
                                std::strerror(err)));
  }
  void* own = mmap(nullptr, segment_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, own_fd, 0);
  close(own_fd);
  if (own == MAP_FAILED) {
    throw CommError(rank_, what,
                    fmt::format("mmap({}) failed: {}", own_name, std::strerror(errno)));
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
      if (!peer_alive(peer))
        throw CommError(q, what, fmt::format("rank {} (pid {}) died", q, peer.pid));
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

void ShmAllreduce::check_abandoned(const std::string& what) const {
  if (!abandoned_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(abandon_mutex_);
  throw CommError(abandoned_culprit_, what, abandoned_reason_);
}

void ShmAllreduce::await_all(Flag flag, uint64_t seq, Deadline deadline, const std::string& what,
                             const std::string& awaited) {
  check_abandoned(what);
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    uint64_t* raw = &flag_word(q, flag);
    std::atomic_ref<uint64_t> word(*raw);
    if (word.load(std::memory_order_acquire) >= seq) continue;
    // Spin while the peer may be running on another core, then yield while
    // it may be waiting for this one, then sleep.
    const auto spin_started = Deadline::Clock::now();
    while (word.load(std::memory_order_acquire) < seq) {
      const auto waited = Deadline::Clock::now() - spin_started;
      if (waited < wait_policy_.spin) {
        for (int i = 0; i < 32; ++i) cpu_relax();
      } else if (waited < wait_policy_.spin + wait_policy_.yield) {
        sched_yield();
      } else {
        break;
      }
    }
    const Peer& peer = peers_[static_cast<size_t>(q)];
    std::atomic_ref<uint64_t> waiters = word_at(peer.base, kWaitersOffset);
    const auto started = Deadline::Clock::now();
    while (word.load(std::memory_order_acquire) < seq) {
      check_abandoned(what);
      const uint64_t abandoned =
          word_at(peer.base, kAbandonedOffset).load(std::memory_order_acquire);
      if (abandoned != 0) {
        const int culprit = static_cast<int>(abandoned) - 2;
        std::string problem = fmt::format("rank {} abandoned the shared-memory allreduce", q);
        if (culprit >= 0 && culprit != q) problem += fmt::format(" because of rank {}", culprit);
        throw CommError(culprit >= 0 ? culprit : q, what, problem);
      }
      if (!peer_alive(peer)) {
        throw CommError(q, what, fmt::format("rank {} (pid {}) died", q, peer.pid));
      }
      check_announcement(q, word, seq, what);
      if (deadline.expired()) {
        throw TimeoutError(q, what, since(started), fmt::format("rank {} to {}", q, awaited));
      }
      // Registered as a waiter before the last look at the flag: a publisher
      // that stores the flag after that look sees the registration and wakes
      // us (both sides use sequentially consistent operations), and one that
      // stored it before makes FUTEX_WAIT return at once (value changed).
      waiters.fetch_add(1, std::memory_order_seq_cst);
      const uint64_t now = word.load(std::memory_order_seq_cst);
      if (now < seq) {
        const long remaining_ns = static_cast<long>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.remaining()).count());
        futex_wait(raw, static_cast<uint32_t>(now),
                   std::clamp<long>(remaining_ns, 1000, kFutexSliceNs));
      }
      waiters.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
}

void ShmAllreduce::publish(Flag flag, uint64_t seq) {
  uint64_t* raw = &flag_word(rank_, flag);
  std::atomic_ref<uint64_t>(*raw).store(seq, std::memory_order_seq_cst);
  if (word_at(peers_[static_cast<size_t>(rank_)].base, kWaitersOffset)
          .load(std::memory_order_seq_cst) != 0) {
    futex_wake_all(raw);
  }
}

void ShmAllreduce::announce(const OpDescriptor& op) {
  std::byte* own = peers_[static_cast<size_t>(rank_)].base;
  std::atomic_ref<uint64_t> version = word_at(own, kAnnounceOffset);
  // A seqlock without fences (which ThreadSanitizer cannot model), after
  // Boehm, "Can seqlocks get along with programming language memory
  // models?" (2012): the fields are stored with release, so a reader that
  // loads any new field also sees the odd version stored before it.
  const uint64_t v = version.load(std::memory_order_relaxed);
  version.store(v + 1, std::memory_order_relaxed);
  const uint64_t fields[kAnnounceWords - 1] = {static_cast<uint64_t>(op.kind),
                                               static_cast<uint64_t>(op.reduce),
                                               static_cast<uint64_t>(op.dtype),
                                               static_cast<uint64_t>(static_cast<int64_t>(op.root)),
                                               op.count,
                                               op.seq};
  for (size_t i = 0; i < kAnnounceWords - 1; ++i) {
    word_at(own, kAnnounceOffset + 8 * (i + 1)).store(fields[i], std::memory_order_release);
  }
  version.store(v + 2, std::memory_order_release);
  announced_ = op;
}

std::optional<OpDescriptor> ShmAllreduce::announced_by(int rank) {
  std::byte* base = peers_[static_cast<size_t>(rank)].base;
  std::atomic_ref<uint64_t> version = word_at(base, kAnnounceOffset);
  const uint64_t before = version.load(std::memory_order_acquire);
  if (before == 0 || before % 2 != 0) return std::nullopt;
  uint64_t fields[kAnnounceWords - 1];
  // Acquire loads of the fields (see announce()) keep the version's second
  // load after them.
  for (size_t i = 0; i < kAnnounceWords - 1; ++i) {
    fields[i] = word_at(base, kAnnounceOffset + 8 * (i + 1)).load(std::memory_order_acquire);
  }
  if (version.load(std::memory_order_relaxed) != before) return std::nullopt;
  OpDescriptor op;
  op.kind = static_cast<OpKind>(fields[0]);
  op.reduce = static_cast<ReduceOp>(fields[1]);
  op.dtype = static_cast<Dtype>(fields[2]);
  op.root = static_cast<int32_t>(static_cast<int64_t>(fields[3]));
  op.count = fields[4];
  op.seq = fields[5];
  return op;
}

void ShmAllreduce::check_announcement(int q, std::atomic_ref<uint64_t> word, uint64_t seq,
                                      const std::string& what) {
  if (!announced_) return;
  const std::optional<OpDescriptor> theirs = announced_by(q);
  if (!theirs || theirs->seq < announced_->seq) return;  // not there yet: just slow
  if (theirs->seq == announced_->seq && *theirs == *announced_) return;
  // Announcing comes after the peer's last flag of an operation: if the flag
  // is set now, the peer finished ours and moved on legitimately.
  if (word.load(std::memory_order_acquire) >= seq) return;
  if (theirs->seq == announced_->seq) {
    throw CommError(q, what,
                    fmt::format("{} on rank {} does not match {} on rank {}",
                                announced_->describe(), rank_, theirs->describe(), q));
  }
  throw CommError(q, what,
                  fmt::format("{} on rank {} does not match rank {}, which finished it without "
                              "this rank and runs {}: the ranks called different collectives",
                              announced_->describe(), rank_, q, theirs->describe()));
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
    abandon(e.peer(), e.what());
    throw;
  }
}

void ShmAllreduce::abandon(int culprit, const std::string& reason) noexcept {
  const int named = culprit >= -1 && culprit < size_ ? culprit : -1;
  try {
    std::lock_guard lock(abandon_mutex_);
    if (!abandoned_.load()) {
      abandoned_culprit_ = named;
      abandoned_reason_ = reason.empty() ? std::string("this rank gave up on the group") : reason;
    }
  } catch (...) {
    // Out of memory for the reason: the culprit alone is still recorded below.
  }
  abandoned_.store(true, std::memory_order_release);
  if (peers_.empty() || peers_[static_cast<size_t>(rank_)].base == nullptr) return;
  word_at(peers_[static_cast<size_t>(rank_)].base, kAbandonedOffset)
      .store(static_cast<uint64_t>(named + 2), std::memory_order_release);
  // Sleepers on any of this rank's flags wake up and see it.
  for (const Flag flag : {Flag::kArrived, Flag::kReduced, Flag::kDone}) {
    futex_wake_all(&flag_word(rank_, flag));
  }
}

void ShmAllreduce::allreduce_piece(std::span<float> data, ReduceOp op, Deadline deadline,
                                   const std::string& what) {
  const uint64_t seq = ++seq_;
  std::byte* own = peers_[static_cast<size_t>(rank_)].base;
  const size_t count = data.size();

  const std::vector<size_t> offsets = block_offsets(count, static_cast<size_t>(size_));
  const size_t lo = offsets[static_cast<size_t>(rank_)];
  const size_t hi = offsets[static_cast<size_t>(rank_) + 1];

  // 1. Publish the input once every peer is done reading the previous piece.
  // Only the shares other ranks reduce: this rank reads its own share of the
  // input straight from `data` in step 2.
  await_all(Flag::kDone, seq - 1, deadline, what, "finish reading the previous piece");
  float* const area = data_area(rank_);
  if (lo != 0) std::memcpy(area, data.data(), lo * sizeof(float));
  if (count != hi) std::memcpy(area + hi, data.data() + hi, (count - hi) * sizeof(float));
  word_at(own, kCountOffset).store(count, std::memory_order_relaxed);
  word_at(own, kReduceOffset).store(static_cast<uint64_t>(op), std::memory_order_relaxed);
  word_at(own, kDescSeqOffset).store(seq, std::memory_order_relaxed);
  publish(Flag::kArrived, seq);

  // 2. Reduce the own share out of every rank's data area into this rank's.
  await_all(Flag::kArrived, seq, deadline, what, "arrive");
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    std::byte* base = peers_[static_cast<size_t>(q)].base;
    const uint64_t their_count = word_at(base, kCountOffset).load(std::memory_order_relaxed);
    const auto their_op =
        static_cast<ReduceOp>(word_at(base, kReduceOffset).load(std::memory_order_relaxed));
    if (their_count != count || their_op != op) {
      throw CommError(
          q, what,
          fmt::format("piece #{} ({} floats, {}) on rank {} does not match piece #{} "
                      "({} floats, {}) from rank {}",
                      seq, count, to_string(op), rank_, word_at(base, kDescSeqOffset).load(),
                      their_count, to_string(their_op), q));
    }
  }
  if (hi > lo) {
    // Each share is reduced on one rank only, in a fixed order (own input,
    // then the peers by rank), so every rank reads the same result for it.
    const std::span<float> share(area + lo, hi - lo);
    const auto peer_share = [&](int q) {
      return std::span<const float>(data_area(q) + lo, hi - lo);
    };
    const int first = rank_ == 0 ? 1 : 0;
    reduce_pair(share, std::span<const float>(data.data() + lo, hi - lo), peer_share(first), op);
    for (int q = first + 1; q < size_; ++q) {
      if (q != rank_) reduce_into(share, peer_share(q), op);
    }
    if (op == ReduceOp::kMean) {
      const float divisor = static_cast<float>(size_);
      for (float& x : share) x /= divisor;
    }
  }
  publish(Flag::kReduced, seq);

  // 3. Gather every share.
  await_all(Flag::kReduced, seq, deadline, what, "reduce its share");
  for (int q = 0; q < size_; ++q) {
    const size_t qlo = offsets[static_cast<size_t>(q)];
    const size_t qhi = offsets[static_cast<size_t>(q) + 1];
    if (qhi > qlo) std::memcpy(data.data() + qlo, data_area(q) + qlo, (qhi - qlo) * sizeof(float));
  }
  publish(Flag::kDone, seq);
}

}  // namespace dtrain::comm
