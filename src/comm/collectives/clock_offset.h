// Clock alignment for timelines: each rank's system clock minus rank 0's,
// measured right after a group forms, so that the ranks' trace files can be
// merged onto one clock (obs/trace_file.h).
//
// Algorithm (Cristian 1989): rank r sends a ping to rank 0 and notes its own
// send time t0 and receive time t1; rank 0 answers with its clock T at the
// moment it replies. Assuming the reply is half-way, T corresponds to
// (t0 + t1) / 2 on rank r, so offset = (t0 + t1) / 2 - T with an error of at
// most RTT / 2. Of `rounds` pings the one with the smallest RTT is kept (the
// least queueing). Rank 0 serves ranks 1..W-1 one after another.
//
// Collective: every rank of `comm` calls it. Point-to-point messages on tag
// kClockTag, outside the collective sequence. Errors: CommError/TimeoutError
// from the communicator (its timeout bounds every message). Blocks for
// rounds x (W - 1) round trips on rank 0.
#pragma once

#include <cstdint>

#include "comm/collectives/communicator.h"

namespace dtrain::comm {

struct ClockOffset {
  int64_t offset_us = 0;  // this rank's clock minus rank 0's (0 on rank 0)
  int64_t rtt_us = 0;     // round trip of the sample kept (0 on rank 0)
};

inline constexpr uint32_t kClockTag = 0x7c10c;

ClockOffset measure_clock_offset(Communicator& comm, int rounds = 8);

}  // namespace dtrain::comm
