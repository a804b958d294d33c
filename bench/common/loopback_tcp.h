// Plain loopback tcp for the benchmarks' raw-socket references
// (bench/comm/fold_bench.cpp, bench/ps/push_pull_bench.cpp): a connected
// pair of sockets on 127.0.0.1 and whole-buffer send and receive. Any
// failure prints the call's error and exits the benchmark (status 1).
// Blocking; one thread per socket direction.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace dtrain::bench {

// A connected loopback tcp pair: {the connecting end (TCP_NODELAY), the
// accepted end}.
inline std::pair<int, int> loopback_tcp_pair() {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("loopback listen");
    std::exit(1);
  }
  const int connecting = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(connecting, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("loopback connect");
    std::exit(1);
  }
  const int accepted = accept(listener, nullptr, nullptr);
  close(listener);
  const int one = 1;
  setsockopt(connecting, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return {connecting, accepted};
}

inline void send_exactly(int fd, const void* data, size_t n) {
  const auto* at = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = send(fd, at, n, 0);
    if (put <= 0) {
      std::perror("loopback send");
      std::exit(1);
    }
    at += put;
    n -= static_cast<size_t>(put);
  }
}

inline void recv_exactly(int fd, void* out, size_t n) {
  auto* at = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t got = recv(fd, at, n, 0);
    if (got <= 0) {
      std::perror("loopback recv");
      std::exit(1);
    }
    at += got;
    n -= static_cast<size_t>(got);
  }
}

}  // namespace dtrain::bench
