// Parameter-server push+pull throughput on loopback, beside memcpy.
//
// Servers (S in {1, 2}) run Server::run on threads; workers (N in {2, 4})
// are threads, each with its own Client, all started together. Every
// repetition each worker does `iters` rounds of
//   dense:  push(4M-float gradient) then pull(4M floats) in one round trip
//           (push_and_pull, as a worker's step does; async: no barrier)
//   sparse: pull_rows then push_rows of 4096 random keys (D = 16) from 2^20
// and the repetition's time is that of the slowest worker. Reported, as
// medians over repetitions: dense GB/s = bytes pushed + pulled by all workers
// / time; sparse rows/s = rows pulled + pushed / time; and the ratio of the
// dense figure to memcpy bandwidth (bytes copied / s, one thread, 64 MiB)
// measured in the same run; and the sparse part's CPU per row (the whole
// process's CPU time, every thread, from the repetition's start until every
// worker is done, over the rows: on a loaded host the figure that moves
// least). One JSON line per measurement, then a table.
// Frames carry CRC-32C; rows marked mac=1 also carry the job-secret MAC.
// Links: tcp loopback; ipc (sockets in a private folder) with the MAC and the
// CRC, as a one-host job sent every frame before; ipc-private, the same
// folder without MAC and CRC (ServerOptions/ClientOptions::private_ipc), as
// `dtrain train` now runs a one-host ps job.
// The tcp cells' ceiling, measured in the same run: raw loopback tcp (plain
// POSIX sockets, bench/common/loopback_tcp.h: no ZeroMQ, no framing, no
// CRC), one connection, 4 messages a repetition, 9 repetitions, each of the
// dense cell's size (DENSE_FLOATS floats) written by a sender thread and
// read by a receiver thread into one reused buffer: one way, and both ways
// at once (each end sending and receiving, as a push_and_pull's push and
// pull cross): GB/s = bytes received / time, medians. Each tcp cell's
// dense GB/s is also printed over the both-ways figure ("/tcp"). Skipped
// (0) when PART or LINK runs no dense tcp cell.
// Usage: push_pull_bench [REPS [DENSE_FLOATS [PART [LINK]]]]; PART dense or
// sparse runs only that half (for a profile; the other reads 0), LINK tcp,
// ipc or ipc-private only the rows over that link.
#include <unistd.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "../common/loopback_tcp.h"
#include "core/log.h"
#include "core/rng.h"
#include "ps/client.h"
#include "ps/server.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double memcpy_gb_per_s(int reps) {
  const size_t bytes = size_t{64} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    rates.push_back(static_cast<double>(bytes) / since(t0) / 1e9);
    a[static_cast<size_t>(r)] = b[static_cast<size_t>(r) + 1];
  }
  return median(rates);
}

// Raw loopback tcp GB/s (bytes received / time, median of `reps`), `count`
// messages of `bytes` each per repetition: one way, or both ways at once.
double loopback_tcp_gb_per_s(size_t bytes, int reps, bool both_ways) {
  const auto [a, b] = bench::loopback_tcp_pair();
  const int count = 4;
  const std::vector<char> out(bytes, 1);
  std::vector<char> in_b(bytes), in_a(bytes);
  std::vector<double> rates;
  for (int r = 0; r < reps + 1; ++r) {  // the first repetition warms up
    const auto t0 = Clock::now();
    {
      std::vector<std::jthread> threads;
      auto pump = [&](int from, int to, std::vector<char>& in) {
        threads.emplace_back([&, from] {
          for (int i = 0; i < count; ++i) bench::send_exactly(from, out.data(), bytes);
        });
        threads.emplace_back([&, to] {
          for (int i = 0; i < count; ++i) bench::recv_exactly(to, in.data(), bytes);
        });
      };
      pump(a, b, in_b);
      if (both_ways) pump(b, a, in_a);
    }  // joins
    const double received = (both_ways ? 2.0 : 1.0) * count * static_cast<double>(bytes);
    if (r > 0) rates.push_back(received / since(t0) / 1e9);
  }
  close(a);
  close(b);
  return median(rates);
}

// CPU seconds of the whole process (every thread: workers, servers, ZeroMQ's).
double process_cpu_s() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

struct Result {
  double dense_gb_per_s = 0;
  double sparse_rows_per_s = 0;
  double sparse_cpu_ns_per_row = 0;  // process CPU over rows pulled + pushed
};

enum class Link { kTcp, kIpc, kPrivateIpc };
const char* link_name(Link link) {
  return link == Link::kTcp ? "tcp" : link == Link::kIpc ? "ipc" : "ipc-private";
}

// A private folder (mkdtemp: mode 0700) for the ipc sockets, removed after.
struct SocketFolder {
  SocketFolder() {
    std::string pattern = "/tmp/dtrain-ppb-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    path = pattern;
  }
  ~SocketFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

struct Parts {
  bool dense = true, sparse = true;
};

Result run(int servers, int workers, bool mac, Link link, int reps, int64_t dense_floats,
           Parts parts) {
  const comm::JobAuth auth("ps-bench", mac ? "bench secret" : "");
  const SocketFolder folder;
  std::vector<std::unique_ptr<ps::Server>> server_list;
  std::vector<std::string> endpoints;
  for (int s = 0; s < servers; ++s) {
    ps::ServerOptions o;
    if (link != Link::kTcp)
      o.bind_endpoint = "ipc://" + folder.path + "/server-" + std::to_string(s);
    o.private_ipc = link == Link::kPrivateIpc;
    o.server = s;
    o.num_servers = servers;
    o.num_workers = workers;
    o.consistency = ps::Consistency::kAsync;
    o.optimizer.type = "sgd";
    o.optimizer.lr = 1e-6f;
    o.heartbeat_timeout = std::chrono::milliseconds(60000);
    server_list.push_back(std::make_unique<ps::Server>(o, auth, Logger::null()));
    endpoints.push_back(server_list.back()->endpoint());
  }
  std::vector<std::jthread> server_threads;
  for (auto& server : server_list) {
    server_threads.emplace_back([&server](std::stop_token stop) { server->run(stop); });
  }
  const int iters = 4;
  const int64_t batch = 4096, dim = 16;
  std::vector<std::vector<double>> dense_times(static_cast<size_t>(workers)),
      sparse_times(static_cast<size_t>(workers));
  std::vector<double> sparse_cpu;  // per repetition, written by worker 0
  std::barrier sync(workers);
  std::vector<std::jthread> worker_threads;
  for (int w = 0; w < workers; ++w) {
    worker_threads.emplace_back([&, w] {
      ps::ClientOptions o;
      o.worker = w;
      o.num_workers = workers;
      o.server_endpoints = endpoints;
      o.private_ipc = link == Link::kPrivateIpc;
      o.timeout = std::chrono::milliseconds(120000);
      ps::Client client(o, auth, Logger::null());
      StateDict model;
      model.insert("w", Tensor::zeros({dense_floats}));
      client.init(model, {{"emb", dim, 0.01f}});
      const std::vector<Tensor> grad{Tensor::full({dense_floats}, 1e-3f)};
      const std::vector<Tensor> params{Tensor::zeros({dense_floats})};
      Rng rng(static_cast<uint64_t>(w) + 1);
      std::vector<uint64_t> keys(static_cast<size_t>(batch));
      Tensor rows = Tensor::zeros({batch, dim});
      for (int r = 0; r < reps + 1; ++r) {  // the first repetition warms up
        sync.arrive_and_wait();
        auto t0 = Clock::now();
        for (int i = 0; i < iters && parts.dense; ++i) {
          ps::DensePush push;
          push.samples = 1;
          push.lr = 1e-6f;
          client.push_and_pull(grad, push, params, 0);
        }
        const double dense = since(t0);
        sync.arrive_and_wait();
        const double cpu0 = process_cpu_s();
        t0 = Clock::now();
        for (int i = 0; i < iters && parts.sparse; ++i) {
          for (auto& k : keys) k = rng.below(uint64_t{1} << 20);
          client.pull_rows(0, keys, rows);
          client.push_rows(0, keys, rows, 1e-6f);
        }
        const double sparse = since(t0);
        sync.arrive_and_wait();  // every worker's rows done: the CPU they cost
        if (w == 0 && r > 0) sparse_cpu.push_back(process_cpu_s() - cpu0);
        if (r > 0) {
          dense_times[static_cast<size_t>(w)].push_back(dense);
          sparse_times[static_cast<size_t>(w)].push_back(sparse);
        }
      }
      sync.arrive_and_wait();
      client.finish();
    });
  }
  worker_threads.clear();  // joins
  server_threads.clear();
  std::vector<double> dense_rate, sparse_rate, sparse_cpu_per_row;
  for (int r = 0; r < reps; ++r) {
    double dense = 0, sparse = 0;
    for (int w = 0; w < workers; ++w) {
      dense = std::max(dense, dense_times[static_cast<size_t>(w)][static_cast<size_t>(r)]);
      sparse = std::max(sparse, sparse_times[static_cast<size_t>(w)][static_cast<size_t>(r)]);
    }
    dense_rate.push_back(parts.dense ? 2.0 * workers * iters * static_cast<double>(dense_floats) *
                                           4 / dense / 1e9
                                     : 0.0);
    const double rows = 2.0 * workers * iters * static_cast<double>(batch);
    sparse_rate.push_back(parts.sparse ? rows / sparse : 0.0);
    sparse_cpu_per_row.push_back(parts.sparse ? sparse_cpu[static_cast<size_t>(r)] / rows * 1e9
                                              : 0.0);
  }
  return {median(dense_rate), median(sparse_rate), median(sparse_cpu_per_row)};
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t dense_floats = argc > 2 ? std::atoll(argv[2]) : int64_t{4} << 20;
  const double memcpy_rate = memcpy_gb_per_s(9);
  std::printf("{\"bench\":\"memcpy\",\"gb_per_s\":%.2f}\n", memcpy_rate);
  struct Row {
    int servers, workers;
    bool mac;
    Link link;
    Result r;
  };
  Parts parts;
  const std::string part = argc > 3 ? argv[3] : "all";
  parts.dense = part != "sparse";
  parts.sparse = part != "dense";
  const std::string only_link = argc > 4 ? argv[4] : "";
  const auto message_bytes = static_cast<size_t>(dense_floats) * sizeof(float);
  // Skipped (0) when no dense tcp cell runs.
  const bool tcp_reference = parts.dense && (only_link.empty() || only_link == "tcp");
  const double tcp_one_way = tcp_reference ? loopback_tcp_gb_per_s(message_bytes, 9, false) : 0;
  const double tcp_both_ways = tcp_reference ? loopback_tcp_gb_per_s(message_bytes, 9, true) : 0;
  std::printf(
      "{\"bench\":\"loopback_tcp\",\"message_bytes\":%zu,\"one_way_gb_per_s\":%.3f,"
      "\"both_ways_gb_per_s\":%.3f,\"both_ways_memcpy_ratio\":%.3f}\n",
      message_bytes, tcp_one_way, tcp_both_ways, tcp_both_ways / memcpy_rate);
  std::vector<Row> rows;
  auto add = [&](int servers, int workers, bool mac, Link link) {
    if (!only_link.empty() && only_link != link_name(link)) return;
    rows.push_back(
        {servers, workers, mac, link, run(servers, workers, mac, link, reps, dense_floats, parts)});
  };
  for (int servers : {1, 2}) {
    for (int workers : {2, 4}) add(servers, workers, false, Link::kTcp);
  }
  add(2, 2, true, Link::kTcp);
  add(2, 2, true, Link::kIpc);
  add(2, 2, true, Link::kPrivateIpc);
  // A tcp cell's dense GB/s over raw loopback tcp both ways (0: not tcp).
  auto tcp_ratio = [&](const Row& row) {
    return row.link == Link::kTcp && tcp_both_ways > 0 ? row.r.dense_gb_per_s / tcp_both_ways : 0.0;
  };
  for (const Row& row : rows) {
    std::printf(
        "{\"bench\":\"ps_push_pull\",\"servers\":%d,\"workers\":%d,\"mac\":%d,\"link\":\"%s\","
        "\"dense_floats\":%lld,\"dense_gb_per_s\":%.3f,\"memcpy_ratio\":%.3f,"
        "\"tcp_ratio\":%.3f,\"sparse_rows_per_s\":%.0f,\"sparse_cpu_ns_per_row\":%.0f}\n",
        row.servers, row.workers, row.mac ? 1 : 0, link_name(row.link),
        static_cast<long long>(dense_floats), row.r.dense_gb_per_s,
        row.r.dense_gb_per_s / memcpy_rate, tcp_ratio(row), row.r.sparse_rows_per_s,
        row.r.sparse_cpu_ns_per_row);
  }
  std::printf("\n%-8s %-8s %-4s %-12s %14s %10s %8s %16s %12s\n", "servers", "workers", "mac",
              "link", "dense GB/s", "/memcpy", "/tcp", "sparse rows/s", "CPU ns/row");
  for (const Row& row : rows) {
    const double over_tcp = tcp_ratio(row);
    char tcp_cell[16] = "-";  // not a tcp cell
    if (over_tcp > 0) std::snprintf(tcp_cell, sizeof tcp_cell, "%.3f", over_tcp);
    std::printf("%-8d %-8d %-4d %-12s %14.3f %10.3f %8s %16.0f %12.0f\n", row.servers, row.workers,
                row.mac ? 1 : 0, link_name(row.link), row.r.dense_gb_per_s,
                row.r.dense_gb_per_s / memcpy_rate, tcp_cell, row.r.sparse_rows_per_s,
                row.r.sparse_cpu_ns_per_row);
  }
  std::printf("memcpy: %.2f GB/s (one thread, 64 MiB)\n", memcpy_rate);
  std::printf(
      "loopback tcp (raw sockets, %zu-byte messages): %.2f GB/s one way, %.2f GB/s both "
      "ways at once (%.3f of memcpy)\n",
      message_bytes, tcp_one_way, tcp_both_ways, tcp_both_ways / memcpy_rate);
  return 0;
}
