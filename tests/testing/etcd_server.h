// A real etcd (Debian's etcd-server, installed by scripts/setup.sh) for
// tests: one member on free loopback ports, SIGKILLed (and its folders
// removed) when the EtcdServer goes or kill() is called. The constructor
// returns once etcd answers: a port taken between free_loopback_port() and
// etcd's bind (another test's connection can take it) makes etcd exit, and it
// is started again on new ports, up to four times. The data folder sits in
// /dev/shm where it can, so that a loaded disk's fsyncs cannot push etcd's
// answers past a test's deadlines. Header-only: only the comm tests, which
// link dtrain_comm, use it.
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
    for (int attempt = 1;; ++attempt) {
      if (start_and_wait_ready()) return;
      if (attempt == 4 || log().find("address already in use") == std::string::npos) {
        ADD_FAILURE() << "etcd did not start (attempt " << attempt << "):\n" << log();
        return;
      }
    }
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
  // Starts etcd on fresh ports; true once it answers a read, false when it
  // exited first (or never answered within 30 s).
  bool start_and_wait_ready() {
    using namespace std::chrono_literals;
    const std::string client = fmt::format("http://127.0.0.1:{}", free_loopback_port());
    const std::string peer = fmt::format("http://127.0.0.1:{}", free_loopback_port());
    endpoint_ = client.substr(7);
    if (access("/dev/shm", W_OK | X_OK) == 0) {
      data_.emplace("/dev/shm");
    } else {
      data_.emplace();
    }
    process_.emplace(ChildProcess::spawn(
        {"/bin/sh", "-c", "exec \"$0\" \"$@\" >\"$ETCD_TEST_LOG\" 2>&1", kEtcdBinary, "--data-dir",
         data_->file("data"), "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster",
         "default=" + peer},
        {{"ETCD_TEST_LOG", dir_.file("etcd.log")}}));
    comm::EtcdClient probe(endpoint_);
    const Deadline ready = Deadline::after(30s);
    while (!ready.expired()) {
      try {
        probe.get("ready?", Deadline::after(1s));
        return true;
      } catch (const CommError&) {
        // Not answering yet: still electing itself, or gone.
      }
      if (process_->wait(Deadline::after(100ms))) {
        process_.reset();
        return false;
      }
    }
    kill();
    return false;
  }

  TempDir dir_;                  // the log
  std::optional<TempDir> data_;  // etcd's data folder
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
