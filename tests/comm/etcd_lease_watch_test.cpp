// EtcdLeaseWatch (comm/rendezvous/etcd_lease_watch.h): a lease lost while
// its holder kept trying and failing is an outage of etcd; one lost after
// the holder made no attempt for over the TTL (frozen) is not, nor is one
// lost with no failed attempt (etcd answered, the lease was just gone).
#include "comm/rendezvous/etcd_lease_watch.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

TEST(EtcdLeaseWatch, FailedAttemptsWithoutAGapAreAnOutage) {
  EtcdLeaseWatch watch(1h);
  watch.attempted();
  watch.failed();
  watch.attempted();
  EXPECT_TRUE(watch.lost_to_outage());
  // It starts over for the new lease.
  watch.attempted();
  EXPECT_FALSE(watch.lost_to_outage());
}

TEST(EtcdLeaseWatch, AGapPastTheTtlIsAFrozenHolder) {
  EtcdLeaseWatch watch(1ms);
  watch.attempted();
  watch.failed();
  std::this_thread::sleep_for(5ms);  // the holder "frozen" past the TTL
  watch.attempted();
  EXPECT_FALSE(watch.lost_to_outage());
}

TEST(EtcdLeaseWatch, ALeaseGoneWithoutAFailureIsNotAnOutage) {
  EtcdLeaseWatch watch(1h);
  watch.attempted();
  watch.failed();
  watch.attempted();
  watch.renewed();  // etcd answered: the failures are forgotten
  watch.attempted();
  EXPECT_FALSE(watch.lost_to_outage());
}

}  // namespace
}  // namespace dtrain::comm
