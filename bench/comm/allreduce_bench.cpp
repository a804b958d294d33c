// allreduce_bench: times dtrain's allreduce between forked processes, through
// shared memory (ShmAllreduce) or through the ZeroMQ path (a Communicator over
// ZmqTransport with shared memory disabled: up to 64 KiB one exchange with
// two ranks and halving-doubling with more, the ring above), or single-core
// memcpy as the bandwidth ceiling.
//
//   allreduce_bench shm <ranks> <bytes> <reps> [<spin_us> <yield_us>]
//   allreduce_bench zmq <ranks> <bytes> <reps>
//   allreduce_bench memcpy 1 <bytes> <reps>
//   allreduce_bench zmq-tcp|zmq-tcp-nomac|zmq-curve <ranks> <bytes> <reps>
//
// zmq-tcp forces tcp (no ipc) with a job secret (every frame MACed, as in a
// launched job); zmq-tcp-nomac is the same without a secret (no MAC: the two
// side by side are the MAC's cost); zmq-curve adds security.encrypt (CURVE
// on every link, docs/security.md): beside zmq-tcp, encryption's cost.
// zmq-tcp and zmq-tcp-nomac time the tcp lanes (comm/transport/
// zmq_transport.h): they wait until every lane is up before the first rep.
//
// DTRAIN_BENCH_CHUNK_BYTES overrides the zmq modes' ring chunk
// (CommunicatorOptions::chunk_bytes), DTRAIN_BENCH_RING_WINDOW_BYTES the
// ring's window (ring_window_bytes), DTRAIN_BENCH_SMALL_ALLREDUCE_BYTES the
// halving-doubling limit (small_allreduce_bytes),
// DTRAIN_BENCH_PAIR_EXCHANGE_BYTES the two-rank exchange's limit
// (pair_exchange_bytes), DTRAIN_BENCH_PAIR_CHUNK_BYTES the two-rank ring's
// chunk up to 2 MiB (pair_chunk_bytes; 0: chunk_bytes),
// DTRAIN_BENCH_POW2_HD_BYTES the limit of
// halving-doubling at power-of-two worlds (pow2_halving_doubling_bytes),
// DTRAIN_BENCH_LANE_SPIN_US the lane readers' spin
// (ZmqTransportOptions::lane_spin), DTRAIN_BENCH_LANE_SOCKET_BYTES the lane
// sockets' buffers (lane_socket_buffer_bytes), DTRAIN_BENCH_LANE_FOLD=0
// turns off handing received bytes to the reduce as they are read
// (lane_fold), for tuning them; DTRAIN_BENCH_BIND=1 binds rank r to CPU r
// mod CPUs (mpirun's default binding for np <= 2, to compare placement);
// DTRAIN_BENCH_BARRIER_EACH=1 (zmq modes) runs an untimed barrier before
// each call, so that every call starts with the ranks in step.
//
// Prints one line "<mode> ranks=<n> bytes=<b> median_us=<t> busbw_gbs=<g>"
// with bus bandwidth 2(n-1)/n * bytes / time (for memcpy: bytes / time).
// The optional shm arguments override ShmWaitPolicy (for tuning it).
// Rank 0 reports; every iteration is timed between two allreduces, so the
// median includes waiting for the slowest rank.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/collectives/shm_allreduce.h"
#include "comm/transport/zmq_transport.h"
#include "core/error.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void report(const char* mode, int ranks, size_t bytes, double seconds) {
  const double factor = ranks > 1 ? 2.0 * (ranks - 1) / ranks : 1.0;
  std::printf("%s ranks=%d bytes=%zu median_us=%.2f busbw_gbs=%.3f\n", mode, ranks, bytes,
              seconds * 1e6, factor * static_cast<double>(bytes) / seconds / 1e9);
}

int run_memcpy(size_t bytes, int reps) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> times;
  for (int i = 0; i < reps + 2; ++i) {
    const auto start = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    a[static_cast<size_t>(i) % bytes] = b[0];  // keep the copy observable
    if (i >= 2) times.push_back(t);
  }
  report("memcpy", 1, bytes, median(times));
  return 0;
}

// Times `allreduce` on this rank; rank 0 reports the median as `mode`.
// `before` (may be empty) runs before each call, outside the timed part.
void time_rank(const char* mode, int rank, int ranks, size_t bytes, int reps,
               const std::function<void(std::vector<float>&)>& allreduce,
               const std::function<void()>& before = {}) {
  std::vector<float> data(bytes / sizeof(float), 1.0f);
  std::vector<double> times;
  const int warmup = 5;
  for (int i = 0; i < reps + warmup; ++i) {
    if (before) before();
    const auto start = Clock::now();
    allreduce(data);
    if (i >= warmup) times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    std::fill(data.begin(), data.end(), 1.0f);
  }
  if (rank == 0) report(mode, ranks, bytes, median(times));
}

dtrain::comm::ShmWaitPolicy wait_policy;  // set by main() before forking

int run_shm_rank(int rank, int ranks, size_t bytes, int reps, const std::string& job,
                 int /*port*/) {
  using namespace dtrain;
  comm::ShmAllreduceOptions options;
  options.job_id = job;
  options.capacity_bytes = std::max<size_t>(bytes, 4096);
  options.wait_policy = wait_policy;
  comm::ShmAllreduce shm(rank, ranks, options, Deadline::after(std::chrono::seconds(60)));
  time_rank("dtrain-shm", rank, ranks, bytes, reps, [&](std::vector<float>& data) {
    shm.allreduce(data, comm::ReduceOp::kSum, Deadline::after(std::chrono::seconds(60)));
  });
  return 0;
}

// Set by the zmq-tcp, zmq-tcp-nomac and zmq-curve modes.
bool tcp_only = false;
bool with_secret = true;
bool curve = false;

int run_zmq_rank(int rank, int ranks, size_t bytes, int reps, const std::string& job, int port) {
  using namespace dtrain;
  comm::ZmqTransportOptions options;
  options.rank = rank;
  options.world_size = ranks;
  if (tcp_only) options.prefer_ipc = false;
  if (const char* spin = std::getenv("DTRAIN_BENCH_LANE_SPIN_US")) {
    options.lane_spin = std::chrono::microseconds(std::strtoll(spin, nullptr, 10));
  }
  if (const char* buffer = std::getenv("DTRAIN_BENCH_LANE_SOCKET_BYTES")) {
    options.lane_socket_buffer_bytes = std::atoi(buffer);
  }
  if (const char* fold = std::getenv("DTRAIN_BENCH_LANE_FOLD")) {
    options.lane_fold = std::atoi(fold) != 0;
  }
  const comm::JobAuth auth(job, tcp_only && with_secret ? "bench secret" : "", curve);
  auto transport =
      comm::connect_zmq_transport(options, auth, "127.0.0.1:" + std::to_string(port), rank == 0,
                                  Deadline::after(std::chrono::seconds(60)), Logger::null());
  // Times the lanes (zmq_transport.h), not the ZeroMQ path data takes
  // while they come up.
  if (tcp_only && !curve &&
      !transport->wait_for_lanes(ranks - 1, Deadline::after(std::chrono::seconds(30)))) {
    std::fprintf(stderr, "rank %d: tcp lanes did not come up; timing ZeroMQ\n", rank);
  }
  comm::CommunicatorOptions comm_options;
  comm_options.shm_allreduce = false;
  comm_options.timeout = std::chrono::seconds(60);
  if (const char* chunk = std::getenv("DTRAIN_BENCH_CHUNK_BYTES")) {
    comm_options.chunk_bytes = std::strtoull(chunk, nullptr, 10);
  }
  if (const char* window = std::getenv("DTRAIN_BENCH_RING_WINDOW_BYTES")) {
    comm_options.ring_window_bytes = std::strtoull(window, nullptr, 10);
  }
  if (const char* small = std::getenv("DTRAIN_BENCH_SMALL_ALLREDUCE_BYTES")) {
    comm_options.small_allreduce_bytes = std::strtoull(small, nullptr, 10);
  }
  if (const char* pow2 = std::getenv("DTRAIN_BENCH_POW2_HD_BYTES")) {
    comm_options.pow2_halving_doubling_bytes = std::strtoull(pow2, nullptr, 10);
  }
  if (const char* pair = std::getenv("DTRAIN_BENCH_PAIR_EXCHANGE_BYTES")) {
    comm_options.pair_exchange_bytes = std::strtoull(pair, nullptr, 10);
  }
  if (const char* pair = std::getenv("DTRAIN_BENCH_PAIR_CHUNK_BYTES")) {
    comm_options.pair_chunk_bytes = std::strtoull(pair, nullptr, 10);
  }
  comm::Communicator comm(*transport, comm_options);
  const char* barrier_env = std::getenv("DTRAIN_BENCH_BARRIER_EACH");
  const bool barrier_each = barrier_env != nullptr && std::string(barrier_env) == "1";
  time_rank(
      curve                      ? "dtrain-zmq-curve"
      : tcp_only && !with_secret ? "dtrain-zmq-tcp-nomac"
      : tcp_only                 ? "dtrain-zmq-tcp"
                                 : "dtrain-zmq",
      rank, ranks, bytes, reps,
      [&](std::vector<float>& data) { comm.allreduce(data, comm::ReduceOp::kSum); },
      barrier_each ? std::function<void()>([&] { comm.barrier(); }) : nullptr);
  comm.barrier();  // nobody closes its transport while a peer still needs it
  return 0;
}

// A loopback port that was free a moment ago, for the rendezvous coordinator.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    throw std::runtime_error("cannot find a free port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

using RankMain = int (*)(int, int, size_t, int, const std::string&, int);

// DTRAIN_BENCH_BIND=1: rank r runs on CPU r mod (CPUs), as mpirun binds
// each rank to a core by default when it starts at most 2.
void bind_rank(int rank) {
  const char* bind = std::getenv("DTRAIN_BENCH_BIND");
  if (bind == nullptr || std::string(bind) != "1") return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(rank % static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)), &set);
  sched_setaffinity(0, sizeof set, &set);
}

// Forks ranks 1..n-1 (before any thread exists), runs rank 0 here.
int run_forked(RankMain rank_main, int ranks, size_t bytes, int reps) {
  const std::string job = "bench-" + std::to_string(getpid());
  const int port = free_port();
  std::vector<pid_t> children;
  for (int r = 1; r < ranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      bind_rank(r);
      int code = 1;
      try {
        code = rank_main(r, ranks, bytes, reps, job, port);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      _exit(code);
    }
    children.push_back(pid);
  }
  bind_rank(0);
  int code = rank_main(0, ranks, bytes, reps, job, port);
  for (const pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) code = 1;
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 7) {
    std::fprintf(stderr, "usage: %s shm|zmq|memcpy <ranks> <bytes> <reps> [<spin_us> <yield_us>]\n",
                 argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const int ranks = std::atoi(argv[2]);
  const size_t bytes = std::strtoull(argv[3], nullptr, 10);
  const int reps = std::atoi(argv[4]);
  if (argc == 7) {
    wait_policy = dtrain::comm::ShmWaitPolicy{std::chrono::microseconds(std::atoi(argv[5])),
                                              std::chrono::microseconds(std::atoi(argv[6]))};
  }
  try {
    if (mode == "memcpy") return run_memcpy(bytes, reps);
    if (mode == "shm") return run_forked(run_shm_rank, ranks, bytes, reps);
    if (mode == "zmq") return run_forked(run_zmq_rank, ranks, bytes, reps);
    if (mode == "zmq-tcp" || mode == "zmq-tcp-nomac" || mode == "zmq-curve") {
      tcp_only = true;
      with_secret = mode != "zmq-tcp-nomac";
      curve = mode == "zmq-curve";
      return run_forked(run_zmq_rank, ranks, bytes, reps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "allreduce_bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "allreduce_bench: unknown mode '%s'\n", mode.c_str());
  return 2;
}
