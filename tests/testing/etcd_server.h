// A real etcd (Debian's etcd-server, installed by scripts/setup.sh) for
// tests: one member on free loopback ports with a temporary data folder,
// SIGKILLed (and its folder removed) when the EtcdServer goes or kill() is
// called. Header-only: only the comm tests, which link dtrain_comm, use it.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "comm/rendezvous/etcd_client.h"
#include "core/error.h"
#include "testing/fault_fs.h"
#include "testing/ports.h"
#include "testing/process.h"

namespace dtrain::testing {

inline constexpr const char* kEtcdBinary = "/usr/bin/etcd";

inline bool etcd_installed() { return access(kEtcdBinary, X_OK) == 0; }

class EtcdServer {
 public:
  EtcdServer() {
    const std::string client = fmt::format("http://127.0.0.1:{}", free_loopback_port());
    const std::string peer = fmt::format("http://127.0.0.1:{}", free_loopback_port());
    endpoint_ = client.substr(7);
    process_.emplace(ChildProcess::spawn(
        {"/bin/sh", "-c", "exec \"$0\" \"$@\" >\"$ETCD_TEST_LOG\" 2>&1", kEtcdBinary, "--data-dir",
         dir_.file("data"), "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster",
         "default=" + peer},
        {{"ETCD_TEST_LOG", dir_.file("etcd.log")}}));
  }
  const std::string& endpoint() const { return endpoint_; }
  std::string log() const {
    std::stringstream text;
    text << std::ifstream(dir_.file("etcd.log")).rdbuf();
    return text.str();
  }
  // Sends `sig` to etcd (SIGSTOP: its clients' calls time out; SIGCONT).
  void signal(int sig) {
    if (process_) process_->signal(sig);
  }
  // SIGKILLs etcd and reaps it: its clients get refused connections.
  void kill() {
    if (!process_) return;
    process_->signal(SIGKILL);
    process_->wait(Deadline::after(std::chrono::seconds(10)));
    process_.reset();
  }

 private:
  TempDir dir_;
  std::string endpoint_;
  std::optional<ChildProcess> process_;
};

// A client of `server` once it answers (etcd takes a moment to elect itself).
inline comm::EtcdClient ready_etcd_client(const EtcdServer& server) {
  using namespace std::chrono_literals;
  comm::EtcdClient client(server.endpoint());
  const Deadline ready = Deadline::after(30s);
  for (;;) {
    try {
      client.get("ready?", Deadline::after(1s));
      return client;
    } catch (const CommError& e) {
      if (ready.expired()) {
        ADD_FAILURE() << "etcd never answered: " << e.what() << "\n" << server.log();
        return client;
      }
    }
  }
}

}  // namespace dtrain::testing
