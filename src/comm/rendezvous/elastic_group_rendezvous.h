// The interface an elastic worker (strategy/elastic_allreduce.h) forms its
// generations through, with two implementations: ElasticRendezvousClient
// (comm/rendezvous/elastic_rendezvous.h: the coordinator hosted by the local
// launcher) and EtcdElasticRendezvous (comm/rendezvous/etcd_rendezvous.h:
// the job's state in etcd, so that no host is special). Both form a
// sequence of GENERATIONS in two rounds, membership then endpoints, with the
// semantics written down in docs/elastic.md.
//
// Ownership: an implementation owns its connection (and, for etcd, its
// lease). Thread safety: one thread at a time. Errors: join() and
// exchange_endpoints() throw TimeoutError naming what they waited for when
// their deadline passes, LeftOutError when the group went on without this
// member, CommError when refused, DataError for malformed replies.
// Blocking: join() and exchange_endpoints() until their answer or their
// deadline; poll() never blocks.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "comm/rendezvous/rendezvous.h"
#include "core/deadline.h"
#include "core/error.h"

namespace dtrain::comm {

// The answer to a member the group went on without (it was silent past the
// heartbeat timeout, or its lease expired): the message says which
// generation.
class LeftOutError : public CommError {
 public:
  using CommError::CommError;
};

// The result of the membership round: generation and slots by rank.
struct ElasticGeneration {
  uint32_t generation = 0;
  std::vector<int> slots;  // slots[rank]
  // This worker's rank in the generation.
  int rank = 0;
  int world_size() const { return static_cast<int>(slots.size()); }
};

class ElasticGroupRendezvous {
 public:
  virtual ~ElasticGroupRendezvous() = default;

  // This worker's slot: its id in the job, unique among the running workers.
  virtual int slot() const = 0;
  // Joins the next generation as a member of `member_of` (nullopt: a new
  // worker), reporting `suspects` (slots found silent; the round does not
  // wait for them). nullopt when the job finished training; LeftOutError
  // when the group went on without this member.
  virtual std::optional<ElasticGeneration> join(std::optional<uint32_t> member_of,
                                                Deadline deadline,
                                                const std::vector<int>& suspects = {}) = 0;
  // Registers this member's endpoint (its `rank` field = its rank) for
  // `generation`; returns the table indexed by rank. CommError when the
  // generation lost a member before every endpoint was in (join again).
  virtual std::vector<PeerEndpoint> exchange_endpoints(uint32_t generation,
                                                       const PeerEndpoint& self,
                                                       Deadline deadline) = 0;
  // Never blocks: the number of new workers waiting to join, from the
  // newest answer (0 before the first).
  virtual uint32_t poll() = 0;
};

}  // namespace dtrain::comm
