#include "comm/collectives/clock_offset.h"

#include <fmt/format.h>

#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/trace.h"

namespace dtrain::comm {
namespace {

std::vector<std::byte> encode(int64_t value) {
  std::vector<std::byte> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  return bytes;
}

int64_t decode(const std::vector<std::byte>& bytes, int peer) {
  if (bytes.size() != sizeof(int64_t)) {
    throw CommError(peer, "clock alignment",
                    fmt::format("expected an 8-byte time stamp, got {} bytes", bytes.size()));
  }
  int64_t value = 0;
  std::memcpy(&value, bytes.data(), sizeof value);
  return value;
}

}  // namespace

ClockOffset measure_clock_offset(Communicator& comm, int rounds) {
  if (rounds < 1) throw UsageError(fmt::format("clock alignment: rounds {} < 1", rounds));
  const int rank = comm.rank();
  if (rank == 0) {
    for (int peer = 1; peer < comm.size(); ++peer) {
      for (int i = 0; i < rounds; ++i) {
        decode(comm.recv_bytes(peer, kClockTag), peer);
        comm.send_bytes(peer, encode(trace_now_us()), kClockTag);
      }
    }
    return {};
  }
  CristianEstimate estimate;
  for (int i = 0; i < rounds; ++i) {
    const int64_t t0 = trace_now_us();
    comm.send_bytes(0, encode(t0), kClockTag);
    const int64_t reference = decode(comm.recv_bytes(0, kClockTag), 0);
    estimate.add(t0, reference, trace_now_us());
  }
  return {estimate.offset_us(), estimate.rtt_us()};
}

}  // namespace dtrain::comm
