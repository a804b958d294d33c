// The pipelined ring over real processes on loopback tcp (no ipc, no shared
// memory) with a job secret, the path of a job spread over hosts, once the
// tcp lanes are up (every data frame on a lane, zmq_transport.h): chunks of
// at least 64 KiB, which the channel sends as header and payload parts
// written straight from the caller's memory (Transport::send_parts; over 1
// KiB, so GcmTagger's MAC where the CPU has it), and receives reduce
// piece by piece as the lane reads them (Transport::recv_fold: MACed and
// reduced while in cache, the MAC checked whole at the end).
// - odd sizes, sizes smaller than the number of chunks and of ranks, against
//   the serial reference (with two ranks also through the pair exchange,
//   recursive_doubling.h), at 2, 3 and 4 ranks, through the ring and through
//   pipelined halving-doubling (halving_doubling.h; with 3 ranks its fold)
//   and, with two ranks, the ring in its default pair chunks
//   (CommunicatorOptions::pair_chunk_bytes);
// - a collective mismatch in the middle of a pipelined allreduce still fails
//   every rank naming both calls;
// - a rank SIGKILLed while the others stream chunks: every survivor fails
//   naming it and the operation, well within the collective's timeout
//   (the ring at 3 ranks, halving-doubling at 4).
// The test process hosts the rendezvous coordinator and spawns its own
// binary once per rank (RingOverTcp.DISABLED_Rank, DTRAIN_TEST_* variables).
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "collective_test_util.h"
#include "comm/collectives/communicator.h"
#include "comm/transport/zmq_transport.h"
#include "core/error.h"
#include "multiprocess_job.h"
#include "victim_allreduce.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;
using testing::rank_input;
using testing::serial_reduce;

constexpr auto kChildDeadline = 120s;
// Far longer than failure detection (heartbeat timeout 1 s): a survivor that
// fails well before it proves the failure was detected, not waited out.
constexpr auto kTimeout = 20s;
constexpr size_t kChunkBytes = 64 << 10;  // ZmqTransportOptions' zero-copy threshold

test::ProcessJob make_job(const std::string& test, int world) {
  return test::ProcessJob("RingOverTcp.DISABLED_Rank", "ring-tcp-" + test, world, "ring secret");
}

void expect_all_ok(test::ProcessJob& job) {
  for (int r = 0; r < job.world; ++r) {
    test::expect_exit_ok(job.children[static_cast<size_t>(r)], fmt::format("rank {}", r),
                         kChildDeadline);
  }
}

class RingOverTcpWorlds : public ::testing::TestWithParam<int> {};

TEST_P(RingOverTcpWorlds, PipelinedAllreduceMatchesTheSerialReference) {
  test::ProcessJob job = make_job("sizes", GetParam());
  job.spawn_all("sizes");
  expect_all_ok(job);
}

INSTANTIATE_TEST_SUITE_P(Ranks, RingOverTcpWorlds, ::testing::Values(2, 3, 4));

TEST(RingOverTcp, MismatchInThePipelineFailsEveryRank) {
  test::ProcessJob job = make_job("mismatch", 3);
  job.spawn_all("mismatch");
  expect_all_ok(job);
}

TEST(RingOverTcp, RankKilledMidPipelineIsNamedWithTheOperation) {
  test::ProcessJob job = make_job("killed", 3);
  test::run_victim_test(job, "killed", SIGKILL, kChildDeadline);
}

TEST(RingOverTcp, RankKilledMidHalvingDoublingIsNamedWithTheOperation) {
  test::ProcessJob job = make_job("killed-hd", 4);
  test::run_victim_test(job, "killed-hd", SIGKILL, kChildDeadline);
}

// ------------------------------------------------------------ child side

CommunicatorOptions ring_options() {
  CommunicatorOptions o;
  o.timeout = kTimeout;
  o.shm_allreduce = false;
  o.small_allreduce_bytes = 0;        // always the ring
  o.pair_exchange_bytes = 0;          // keep the chosen algorithm with two ranks too
  o.pow2_halving_doubling_bytes = 0;  // and with four
  o.chunk_bytes = kChunkBytes;
  o.pair_chunk_bytes = 0;  // chunk_bytes with two ranks too
  return o;
}

// Halving-doubling at every size (pipelined in kChunkBytes), whatever the
// world size.
CommunicatorOptions halving_options() {
  CommunicatorOptions o = ring_options();
  o.small_allreduce_bytes = ~size_t{0};
  o.pow2_halving_doubling_bytes = ~size_t{0};
  return o;
}

void sizes_scenario(Transport& transport) {
  CommunicatorOptions pair = ring_options();
  pair.pair_exchange_bytes = ~size_t{0};  // two ranks: the exchange at every size
  pair.group_id = 2;
  CommunicatorOptions halving = halving_options();
  halving.group_id = 3;
  // The two-rank ring in the default pair chunks (512 KiB up to 2 MiB): at
  // 1 MiB + 4 bytes one whole chunk and a 4-byte one per block.
  CommunicatorOptions paired = ring_options();
  paired.pair_chunk_bytes = CommunicatorOptions{}.pair_chunk_bytes;
  paired.group_id = 4;
  Communicator ring(transport, ring_options());
  Communicator exchange(transport, pair);
  Communicator halving_doubling(transport, halving);
  Communicator pair_chunks(transport, paired);
  const int n = ring.size();
  const size_t chunk = kChunkBytes / sizeof(float);
  std::vector<Communicator*> comms{&ring, &exchange, &halving_doubling};
  if (n == 2) comms.push_back(&pair_chunks);
  // Fewer floats than ranks, odd, one float over a chunk, several chunks per
  // block with a ragged last one (the zero-copy path), 1 MiB + 4 bytes.
  for (Communicator* comm : comms) {
    for (const size_t count : {size_t{1}, static_cast<size_t>(n - 1), size_t{7}, chunk + 1,
                               3 * chunk * static_cast<size_t>(n) + 5, size_t{262145}}) {
      for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax}) {
        std::vector<float> data = rank_input(comm->rank(), count);
        comm->allreduce(data, op);
        EXPECT_EQ(data, serial_reduce(n, count, op))
            << count << " floats, " << to_string(op)
            << (comm == &ring               ? ", ring"
                : comm == &exchange         ? ", exchange"
                : comm == &halving_doubling ? ", halving-doubling"
                                            : ", ring in pair chunks");
      }
    }
  }
  ring.barrier();
}

void mismatch_scenario(Transport& transport) {
  Communicator comm(transport, ring_options());
  const size_t count = 5 * (kChunkBytes / sizeof(float)) * 3;
  std::vector<float> data(comm.rank() == 1 ? count + 1 : count, 1.0f);
  try {
    comm.allreduce(data, ReduceOp::kSum);
    ADD_FAILURE() << "rank " << comm.rank() << ": the mismatched allreduce succeeded";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("does not match"), std::string::npos) << what;
    EXPECT_NE(what.find(fmt::format("allreduce #1 ({} floats, sum)", count)), std::string::npos)
        << what;
    EXPECT_NE(what.find(fmt::format("allreduce #1 ({} floats, sum)", count + 1)), std::string::npos)
        << what;
  }
}

void killed_scenario(Transport& transport, const CommunicatorOptions& options) {
  Communicator comm(transport, options);
  // 4 MiB: about 21 chunks per block with 3 ranks, so the kill lands
  // mid-pipeline.
  test::allreduce_until_victim_fails(comm, size_t{1} << 20, /*killed=*/true, kTimeout);
}

TEST(RingOverTcp, DISABLED_Rank) {
  const int rank = std::stoi(test::env_or("DTRAIN_TEST_RANK", "-1"));
  const std::string scenario = test::env_or("DTRAIN_TEST_SCENARIO", "");
  const std::string job = test::env_or("DTRAIN_TEST_JOB", "");
  ASSERT_GE(rank, 0) << "run by the multi-process tests only";
  std::printf("%s rank %d scenario %s\n", test::kStarted, rank, scenario.c_str());
  std::fflush(stdout);

  ZmqTransportOptions options;
  options.rank = rank;
  options.world_size = std::stoi(test::env_or("DTRAIN_TEST_WORLD", "0"));
  options.prefer_ipc = false;  // loopback tcp, as between hosts
  options.heartbeat_interval = 100ms;
  options.heartbeat_timeout = scenario.starts_with("killed") ? 1000ms : 10000ms;
  auto transport = connect_zmq_transport(
      options, JobAuth(job, test::env_or("DTRAIN_TEST_SECRET", "")),
      test::env_or("DTRAIN_TEST_COORDINATOR", ""), false, Deadline::after(60s), Logger::null());
  // Every scenario runs over the tcp lanes (zmq_transport.h), not ZeroMQ.
  ASSERT_TRUE(transport->wait_for_lanes(options.world_size - 1, Deadline::after(60s)));
  if (scenario == "sizes")
    sizes_scenario(*transport);
  else if (scenario == "mismatch")
    mismatch_scenario(*transport);
  else if (scenario == "killed")
    killed_scenario(*transport, ring_options());
  else if (scenario == "killed-hd")
    killed_scenario(*transport, halving_options());
  else
    FAIL() << "unknown scenario " << scenario;
}

}  // namespace
}  // namespace dtrain::comm
