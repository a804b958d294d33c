// Broadcast and barrier, the collectives that move no reduction. Internal to
// comm.
// - broadcast: a binomial tree rooted at `root` (Thakur, Rabenseifner & Gropp
//   2005, section 4.1): ceil(log2 n) levels; each non-root rank receives the
//   buffer once from its parent and forwards it to its children, chunk by
//   chunk, so deeper levels start before the root has sent everything. The
//   root sends bytes * (number of its children); others at most as many.
// - barrier: dissemination (Hensgen, Finkel & Manber 1988): in round k every
//   rank sends an empty message to r + 2^k and waits for one from r - 2^k;
//   ceil(log2 n) rounds, header-only messages.
// Blocking and errors: as CollectiveChannel.
#pragma once

#include <span>

#include "comm/collectives/collective_protocol.h"

namespace dtrain::comm {

void binomial_broadcast(CollectiveChannel& channel, std::span<std::byte> data, int root,
                        size_t chunk_bytes);

void dissemination_barrier(CollectiveChannel& channel);

}  // namespace dtrain::comm
