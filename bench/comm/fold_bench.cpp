// fold_bench: the receiving CPU's cost of one authenticated reduce chunk over
// loopback tcp, read and checked whole then reduced (what a lane did before
// recv_fold) against read, MACed and reduced piece by piece as it arrives
// (recv_fold, docs/collectives.md "One pass over received bytes").
//
//   fold_bench [CHUNK_BYTES] [CHUNKS] [ROUNDS]   (default 262144 64 15)
//
// A writer thread sends CHUNKS frames of CHUNK_BYTES floats (88-byte wire
// header with the job's MAC, AES-256-GCM through GcmTagger where the CPU has
// it, then the payload) over one loopback tcp connection; the reader
// receives each into a pooled-size buffer and adds it into a 16 MiB float
// array, chunk after chunk (as the ring's reduce-scatter does), either
//   whole  recv() until the frame is in, wire::check_payload over it, then
//          reduce_into over it (three passes, the last two from L2), or
//   fold   recv() what the socket holds, and every 16 KiB piece through
//          wire::PayloadCheck::update and reduce_into while in L1, the MAC
//          finished at the end (the transport's constants).
// Time is the reader thread's CPU time (CLOCK_THREAD_CPUTIME_ID: its recv()
// copies included, a loaded machine's waits for a core not), per chunk; the
// two modes alternate ROUNDS times in one run and it prints each mode's
// median and fold's median ratio to whole of the same round:
//   "mode=<m> chunk_bytes=<b> median_us_cpu=<t> gbs_cpu=<g>"
//   "fold/whole median_ratio=<r> rounds=<n>"  (< 1: fold cheaper).
// DTRAIN_BENCH_FOLD_READ_BYTES (a cap on one recv(); default none) and
// DTRAIN_BENCH_FOLD_PIECE_BYTES set fold's read and piece sizes (multiples
// of 16).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "../common/loopback_tcp.h"
#include "comm/collectives/collective_protocol.h"
#include "comm/wire/auth.h"
#include "comm/wire/wire.h"

namespace {

using namespace dtrain;
using namespace dtrain::comm;

// The transport's constants (zmq_transport_fold.cpp); DTRAIN_BENCH_FOLD_READ_BYTES
// and DTRAIN_BENCH_FOLD_PIECE_BYTES override them here, for tuning them.
size_t env_bytes(const char* name, size_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::strtoull(value, nullptr, 10) : fallback;
}
const size_t kReadBytes = env_bytes("DTRAIN_BENCH_FOLD_READ_BYTES", ~size_t{0});
const size_t kPieceBytes = env_bytes("DTRAIN_BENCH_FOLD_PIECE_BYTES", size_t{16} << 10);
constexpr size_t kArrayFloats = size_t{4} << 20;  // 16 MiB

double thread_cpu_us() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_nsec) / 1e3;
}

struct Reader {
  const JobAuth& auth;
  const wire::FrameLimits limits;
  std::vector<std::byte> buffer;
  std::vector<float> array = std::vector<float>(kArrayFloats, 0.0f);
  size_t at = 0;  // next float of the array to add into

  std::span<float> next_target(size_t floats) {
    if (at + floats > array.size()) at = 0;
    const std::span<float> out(array.data() + at, floats);
    at += floats;
    return out;
  }

  void whole(int fd, size_t chunk) {
    wire::HeaderBytes header{};
    bench::recv_exactly(fd, header.data(), header.size());
    const wire::FrameHeader h = wire::decode_header(header, limits, auth);
    bench::recv_exactly(fd, buffer.data(), chunk);
    wire::check_payload(h, header, std::span<const std::byte>(buffer.data(), chunk), auth);
    reduce_into(next_target(chunk / sizeof(float)),
                std::span<const float>(reinterpret_cast<const float*>(buffer.data()),
                                       chunk / sizeof(float)),
                ReduceOp::kSum);
  }

  void fold(int fd, size_t chunk) {
    wire::HeaderBytes header{};
    bench::recv_exactly(fd, header.data(), header.size());
    const wire::FrameHeader h = wire::decode_header(header, limits, auth);
    std::optional<wire::PayloadCheck> check = wire::PayloadCheck::begin(h, header, auth);
    const std::span<float> target = next_target(chunk / sizeof(float));
    size_t have = 0;
    size_t used = 0;
    while (used < chunk) {
      if (have < chunk) {
        const ssize_t got = recv(fd, buffer.data() + have, std::min(kReadBytes, chunk - have), 0);
        if (got <= 0) {
          std::perror("recv");
          std::exit(1);
        }
        have += static_cast<size_t>(got);
      }
      while (used < have) {
        size_t piece = std::min(kPieceBytes, have - used);
        if (have < chunk) piece -= piece % 16;
        if (piece == 0) break;
        const std::span<const std::byte> bytes(buffer.data() + used, piece);
        check->update(bytes);
        reduce_into(target.subspan(used / sizeof(float), piece / sizeof(float)),
                    std::span<const float>(reinterpret_cast<const float*>(bytes.data()),
                                           piece / sizeof(float)),
                    ReduceOp::kSum);
        used += piece;
      }
    }
    check->finish();
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const size_t chunk = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : size_t{256} << 10;
  const int chunks = argc > 2 ? std::atoi(argv[2]) : 64;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 15;
  if (chunk == 0 || chunk % sizeof(float) != 0 || chunk > kArrayFloats * sizeof(float)) {
    std::fprintf(stderr, "CHUNK_BYTES: a multiple of 4 up to 16 MiB\n");
    return 2;
  }
  const JobAuth auth("fold-bench", "bench secret");
  const auto [writer_fd, reader_fd] = bench::loopback_tcp_pair();
  // The writer sends 2 * rounds * chunks frames, each MACed.
  std::thread writer([&, writer_fd = writer_fd] {
    std::vector<std::byte> payload(chunk);
    for (size_t i = 0; i < chunk; ++i) payload[i] = static_cast<std::byte>(i * 7 + 1);
    wire::FrameHeader h;
    h.sender = 0;
    h.receiver = 1;
    h.job_id = auth.job_id();
    for (long f = 0; f < 2L * rounds * chunks; ++f) {
      h.sequence = static_cast<uint64_t>(f + 1);
      const wire::HeaderBytes header = wire::encode_header(h, payload, auth, false);
      if (send(writer_fd, header.data(), header.size(), MSG_NOSIGNAL) !=
              static_cast<ssize_t>(header.size()) ||
          send(writer_fd, payload.data(), payload.size(), MSG_NOSIGNAL) !=
              static_cast<ssize_t>(payload.size())) {
        std::perror("send");
        std::exit(1);
      }
    }
  });
  Reader reader{auth, wire::FrameLimits{auth.job_id(), 2, 1, uint64_t{1} << 30},
                std::vector<std::byte>(chunk)};
  std::vector<double> whole_us, fold_us, ratios;
  for (int r = 0; r < rounds; ++r) {
    double t = thread_cpu_us();
    for (int c = 0; c < chunks; ++c) reader.whole(reader_fd, chunk);
    whole_us.push_back((thread_cpu_us() - t) / chunks);
    t = thread_cpu_us();
    for (int c = 0; c < chunks; ++c) reader.fold(reader_fd, chunk);
    fold_us.push_back((thread_cpu_us() - t) / chunks);
    ratios.push_back(fold_us.back() / whole_us.back());
  }
  writer.join();
  close(writer_fd);
  close(reader_fd);
  for (const auto& [mode, us] : {std::pair{"whole", &whole_us}, std::pair{"fold", &fold_us}}) {
    const double m = median(*us);
    std::printf("mode=%s chunk_bytes=%zu median_us_cpu=%.2f gbs_cpu=%.2f\n", mode, chunk, m,
                static_cast<double>(chunk) / m / 1e3);
  }
  std::printf("fold/whole median_ratio=%.3f rounds=%d\n", median(ratios), rounds);
  return 0;
}
