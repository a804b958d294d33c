#include "comm/transport/tcp_lane.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace dtrain::comm {

namespace {

using std::chrono::milliseconds;

// Longest wait of the sender thread between looks at its stop token.
constexpr milliseconds kSenderSlice{100};

std::string errno_text(const char* call) {
  return fmt::format("{}: {}", call, std::strerror(errno));
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void set_nodelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int poll_ms(milliseconds wait) {
  return static_cast<int>(std::clamp<long long>(wait.count(), 0, 1 << 30));
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list != nullptr) freeaddrinfo(list);
  }
};

}  // namespace

// ---------------------------------------------------------------- TcpLane

TcpLane::TcpLane(int fd, int peer, int socket_buffer_bytes) : fd_(fd), peer_(peer) {
  set_nonblocking(fd_);
  set_nodelay(fd_);
  if (socket_buffer_bytes > 0) {
    setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &socket_buffer_bytes, sizeof socket_buffer_bytes);
    setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &socket_buffer_bytes, sizeof socket_buffer_bytes);
  }
}

TcpLane::~TcpLane() { close(fd_); }

TcpLane::SendResult TcpLane::send(const HeaderMaker& make_header, std::span<const std::byte> head,
                                  std::span<const std::byte> body, OwnedBuffer* owned) {
  std::lock_guard lock(mutex_);
  if (problem_) return {problem_, false};
  Queued q;
  q.header = make_header(next_sequence_++);
  const size_t payload_bytes = head.size() + body.size();
  if (queue_.empty()) {
    // One sendmsg of header and payload straight from the caller's bytes.
    std::array<iovec, 3> iov{};
    size_t count = 0;
    iov[count++] = iovec{q.header.data(), q.header.size()};
    if (!head.empty()) iov[count++] = iovec{const_cast<std::byte*>(head.data()), head.size()};
    if (!body.empty()) iov[count++] = iovec{const_cast<std::byte*>(body.data()), body.size()};
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = count;
    const ssize_t n = sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      problem_ = fmt::format("tcp lane write failed ({})", std::strerror(errno));
      return {problem_, false};
    }
    q.offset = n > 0 ? static_cast<size_t>(n) : 0;
    if (q.offset == q.header.size() + payload_bytes) return {std::nullopt, false};
  }
  if (owned != nullptr) {
    q.payload = std::move(*owned);
  } else {
    // Only the part not yet written is copied; offsets stay those of the frame.
    const size_t written = q.offset > q.header.size() ? q.offset - q.header.size() : 0;
    const size_t from_head = std::min(written, head.size());
    q.payload = OwnedBuffer::join(head.subspan(from_head), body.subspan(written - from_head));
    q.offset -= written;
  }
  queue_.push_back(std::move(q));
  return {std::nullopt, true};
}

bool TcpLane::write_queued(Queued& q) {
  const size_t total = q.header.size() + q.payload.size;
  while (q.offset < total) {
    std::array<iovec, 2> iov{};
    int count = 0;
    if (q.offset < q.header.size()) {
      iov[count++] = iovec{q.header.data() + q.offset, q.header.size() - q.offset};
      if (q.payload.size > 0) iov[count++] = iovec{q.payload.data.get(), q.payload.size};
    } else {
      const size_t at = q.offset - q.header.size();
      iov[count++] = iovec{q.payload.data.get() + at, q.payload.size - at};
    }
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      problem_ = fmt::format("tcp lane write failed ({})", std::strerror(errno));
      return false;
    }
    q.offset += static_cast<size_t>(n);
  }
  return true;
}

std::optional<std::string> TcpLane::flush() {
  std::lock_guard lock(mutex_);
  if (problem_) return problem_;
  while (!queue_.empty()) {
    Queued& q = queue_.front();
    if (!write_queued(q)) return problem_;
    if (q.offset < q.header.size() + q.payload.size) return std::nullopt;  // socket full
    queue_.pop_front();
  }
  return std::nullopt;
}

bool TcpLane::pending() {
  std::lock_guard lock(mutex_);
  return !queue_.empty() && !problem_;
}

bool TcpLane::readable(milliseconds wait) const {
  pollfd item{fd_, POLLIN, 0};
  return poll(&item, 1, poll_ms(wait)) > 0;
}

bool TcpLane::spin_readable(std::chrono::microseconds budget) const {
  if (budget.count() <= 0) return false;
  const auto until = std::chrono::steady_clock::now() + budget;
  std::byte byte{};
  while (true) {
    const ssize_t n = recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n >= 0) return true;  // a byte, or the connection's end
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;  // read says why
    if (std::chrono::steady_clock::now() >= until) return false;
    sched_yield();
  }
}

TcpLane::ReadStatus TcpLane::read_exact(std::span<std::byte> out, const Wait& wait, size_t* got,
                                        std::string* problem) {
  *got = 0;
  while (*got < out.size()) {
    size_t n = 0;
    const ReadStatus status = read_some(out.subspan(*got), wait, &n, problem);
    *got += n;
    if (status != ReadStatus::kDone) return status;
  }
  return ReadStatus::kDone;
}

TcpLane::ReadStatus TcpLane::read_some(std::span<std::byte> out, const Wait& wait, size_t* got,
                                       std::string* problem) {
  *got = 0;
  while (!out.empty()) {
    const ssize_t n = recv(fd_, out.data(), out.size(), MSG_DONTWAIT);
    if (n > 0) {
      *got = static_cast<size_t>(n);
      return ReadStatus::kDone;
    }
    if (n == 0) return ReadStatus::kClosed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      *problem = fmt::format("tcp lane read failed ({})", std::strerror(errno));
      return ReadStatus::kFailed;
    }
    if (!wait()) return ReadStatus::kStopped;
  }
  return ReadStatus::kDone;
}

std::optional<std::string> TcpLane::read_problem(ReadStatus status, const std::string& problem,
                                                 size_t got, uint64_t expected) {
  if (status == ReadStatus::kStopped) return std::nullopt;
  if (status == ReadStatus::kFailed) return problem;
  return fmt::format("closed its tcp lane mid-frame ({} of {} payload bytes)", got, expected);
}

void TcpLane::finish() {
  shutdown(fd_, SHUT_WR);
  std::array<std::byte, 4096> sink{};
  while (recv(fd_, sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
  }
}

// ---------------------------------------------------------------- TcpLanes

TcpLanes::TcpLanes(int world_size, int socket_buffer_bytes, FailureHandler on_failure)
    : world_size_(static_cast<size_t>(world_size)),
      socket_buffer_bytes_(socket_buffer_bytes),
      lanes_(std::make_unique<std::atomic<TcpLane*>[]>(world_size_)),
      on_failure_(std::move(on_failure)) {
  for (size_t p = 0; p < world_size_; ++p) lanes_[p].store(nullptr);
}

TcpLanes::~TcpLanes() {
  if (sender_.joinable()) {
    sender_.request_stop();
    wake();
    sender_.join();
  }
  for (size_t p = 0; p < world_size_; ++p) lanes_[p].store(nullptr);
  owned_.clear();
  stop_listening();
  if (wake_fd_ >= 0) close(wake_fd_);
}

int TcpLanes::listen(const std::string& host) {
  const bool any = host.empty() || host == "*" || host == "0.0.0.0" || host == "::";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  AddrInfo info;
  if (const int rc = getaddrinfo(any ? nullptr : host.c_str(), "0", &hints, &info.list); rc != 0) {
    throw CommError(-1, "tcp lane",
                    fmt::format("cannot resolve listen host '{}': {}", host, gai_strerror(rc)));
  }
  for (addrinfo* a = info.list; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      listen_fd_ = fd;
      set_nonblocking(listen_fd_);
      return addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    }
    close(fd);
  }
  throw CommError(-1, "tcp lane",
                  fmt::format("cannot listen on '{}': {}", host, errno_text("bind")));
}

int TcpLanes::accept_one(Deadline deadline) {
  while (true) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      return -1;
    }
    if (deadline.expired()) return -1;
    pollfd item{listen_fd_, POLLIN, 0};
    poll(&item, 1, poll_ms(std::min(deadline.remaining(), kSenderSlice)));
  }
}

int TcpLanes::connect_to(int peer, const std::string& host, int port, Deadline deadline,
                         const std::stop_token& stop) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  AddrInfo info;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &info.list); rc != 0) {
    throw CommError(peer, "tcp lane",
                    fmt::format("cannot resolve '{}': {}", host, gai_strerror(rc)));
  }
  std::string problem = "no address";
  for (addrinfo* a = info.list; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) return fd;
    if (errno == EINPROGRESS) {
      pollfd item{fd, POLLOUT, 0};
      int ready = 0;
      while (ready == 0 && !deadline.expired() && !stop.stop_requested()) {
        ready = poll(&item, 1, poll_ms(std::min(deadline.remaining(), kSenderSlice)));
      }
      int error = 0;
      socklen_t len = sizeof error;
      if (ready > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0) {
        return fd;
      }
      problem = error != 0 ? std::strerror(error) : "timed out or stopped";
    } else {
      problem = std::strerror(errno);
    }
    close(fd);
  }
  throw CommError(peer, "tcp lane",
                  fmt::format("cannot connect to rank {} at {}:{}: {}", peer, host, port, problem));
}

void TcpLanes::stop_listening() {
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
}

void TcpLanes::add(int peer, int fd) {
  auto lane = std::make_unique<TcpLane>(fd, peer, socket_buffer_bytes_);
  TcpLane* raw = lane.get();
  {
    std::lock_guard lock(owned_mutex_);
    owned_.push_back(std::move(lane));
  }
  lanes_[static_cast<size_t>(peer)].store(raw, std::memory_order_release);
}

void TcpLanes::start() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw CommError(-1, "tcp lane", errno_text("eventfd"));
  sender_ = std::jthread([this](std::stop_token stop) { run_sender(std::move(stop)); });
}

void TcpLanes::wake() {
  if (wake_fd_ < 0) return;
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof one);
}

std::optional<std::string> TcpLanes::send(int peer, const TcpLane::HeaderMaker& make_header,
                                          std::span<const std::byte> head,
                                          std::span<const std::byte> body, OwnedBuffer* owned) {
  const TcpLane::SendResult result = lane(peer)->send(make_header, head, body, owned);
  if (result.queued) wake();
  return result.problem;
}

void TcpLanes::run_sender(std::stop_token stop) {
  while (!stop.stop_requested()) {
    if (poll_with_writers(pollfd{wake_fd_, POLLIN, 0}, kSenderSlice) & POLLIN) {
      uint64_t count = 0;
      [[maybe_unused]] const ssize_t n = read(wake_fd_, &count, sizeof count);
    }
  }
}

short TcpLanes::poll_with_writers(pollfd first, milliseconds wait) {
  std::vector<pollfd> items{first};
  std::vector<TcpLane*> item_lane{nullptr};
  for (size_t p = 0; p < world_size_; ++p) {
    TcpLane* l = lanes_[p].load(std::memory_order_acquire);
    if (l != nullptr && l->pending()) {
      items.push_back(pollfd{l->fd(), POLLOUT, 0});
      item_lane.push_back(l);
    }
  }
  if (poll(items.data(), items.size(), poll_ms(wait)) <= 0) return 0;
  for (size_t i = 1; i < items.size(); ++i) {
    if (items[i].revents == 0) continue;
    if (const auto problem = item_lane[i]->flush()) on_failure_(item_lane[i]->peer(), *problem);
  }
  return items[0].revents;
}

bool TcpLanes::wait_readable(int peer, milliseconds wait) {
  return poll_with_writers(pollfd{lane(peer)->fd(), POLLIN, 0}, wait) != 0;
}

void TcpLanes::drain_and_finish(Deadline deadline) {
  for (size_t p = 0; p < world_size_; ++p) {
    TcpLane* lane = lanes_[p].load(std::memory_order_acquire);
    if (lane == nullptr) continue;
    while (lane->pending() && !deadline.expired()) {
      if (lane->flush()) break;
      pollfd item{lane->fd(), POLLOUT, 0};
      poll(&item, 1, poll_ms(std::min(deadline.remaining(), kSenderSlice)));
    }
    lane->finish();
  }
}

}  // namespace dtrain::comm
