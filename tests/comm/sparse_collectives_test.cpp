// Communicator::sparse_allreduce (SparCML's sparse ring): against the dense
// sum, its bytes, and malformed messages from a peer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "collective_test_util.h"
#include "comm/collectives/collective_protocol.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::run_ranks;

constexpr auto kTimeout = std::chrono::seconds(20);

CommunicatorOptions options() {
  CommunicatorOptions o;
  o.timeout = kTimeout;
  o.chunk_bytes = 256;
  o.small_allreduce_bytes = 0;
  o.pair_exchange_bytes = 0;  // keep the chosen algorithm with two ranks too
  return o;
}

struct SparseInput {
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

// Each index kept with probability `density`; small non-zero integers, so
// that every sum is exact in float32 in any order.
SparseInput random_sparse(int rank, size_t n, double density, unsigned seed) {
  std::mt19937 rng(seed * 131u + static_cast<unsigned>(rank));
  std::bernoulli_distribution keep(density);
  std::uniform_int_distribution<int> value(1, 8);
  SparseInput in;
  for (size_t i = 0; i < n; ++i) {
    if (keep(rng)) {
      in.indices.push_back(static_cast<uint32_t>(i));
      in.values.push_back(static_cast<float>(value(rng) * (i % 3 == 0 ? -1 : 1)));
    }
  }
  return in;
}

std::vector<float> dense_sum(int ranks, size_t n, double density, unsigned seed) {
  std::vector<float> sum(n, 0.0f);
  for (int r = 0; r < ranks; ++r) {
    const SparseInput in = random_sparse(r, n, density, seed);
    for (size_t i = 0; i < in.indices.size(); ++i) sum[in.indices[i]] += in.values[i];
  }
  return sum;
}

TEST(SparseAllreduce, MatchesTheDenseSumOnEveryRank) {
  for (const int ranks : {1, 2, 3, 4, 5}) {
    for (const size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
      for (const double density : {0.0, 0.01, 0.3, 1.0}) {
        run_ranks(ranks, [&](int rank, Transport& transport) {
          Communicator comm(transport, options());
          const SparseInput in = random_sparse(rank, n, density, 7);
          std::vector<float> out(n, 42.0f);
          comm.sparse_allreduce(in.indices, in.values, out);
          EXPECT_EQ(out, dense_sum(ranks, n, density, 7))
              << "ranks=" << ranks << " n=" << n << " density=" << density << " rank=" << rank;
        });
      }
    }
  }
}

TEST(SparseAllreduce, SendsFarLessThanDenseForSparseInputsAndNoMoreForDenseOnes) {
  constexpr int kRanks = 4;
  constexpr size_t kN = 40000;
  for (const double density : {0.01, 1.0}) {
    std::vector<uint64_t> sparse_bytes(kRanks);
    std::vector<uint64_t> dense_bytes(kRanks);
    run_ranks(kRanks, [&](int rank, Transport& transport) {
      CommunicatorOptions o = options();
      o.chunk_bytes = 1 << 20;
      Communicator sparse(transport, o);
      o.group_id = 2;
      Communicator dense(transport, o);
      const SparseInput in = random_sparse(rank, kN, density, 3);
      std::vector<float> out(kN);
      sparse.sparse_allreduce(in.indices, in.values, out);
      std::vector<float> expanded(kN, 0.0f);
      for (size_t i = 0; i < in.indices.size(); ++i) expanded[in.indices[i]] = in.values[i];
      dense.allreduce(expanded, ReduceOp::kSum);
      EXPECT_EQ(out, expanded);
      sparse_bytes[static_cast<size_t>(rank)] = sparse.bytes_sent();
      dense_bytes[static_cast<size_t>(rank)] = dense.bytes_sent();
    });
    for (int r = 0; r < kRanks; ++r) {
      const auto s = static_cast<double>(sparse_bytes[static_cast<size_t>(r)]);
      const auto d = static_cast<double>(dense_bytes[static_cast<size_t>(r)]);
      if (density < 0.5) {
        EXPECT_LT(s, 0.1 * d) << "density " << density << " rank " << r;
      } else {
        EXPECT_LE(s, 1.01 * d) << "density " << density << " rank " << r;
      }
    }
  }
}

TEST(SparseAllreduce, LocalArgumentErrorsAreUsageErrorsBeforeSending) {
  run_ranks(1, [](int, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> out(10, 5.0f);
    const std::vector<float> two{1.0f, 2.0f};
    EXPECT_THROW(comm.sparse_allreduce(std::vector<uint32_t>{3, 3}, two, out), UsageError);
    EXPECT_THROW(comm.sparse_allreduce(std::vector<uint32_t>{4, 2}, two, out), UsageError);
    EXPECT_THROW(comm.sparse_allreduce(std::vector<uint32_t>{4, 10}, two, out), UsageError);
    EXPECT_THROW(comm.sparse_allreduce(std::vector<uint32_t>{4}, two, out), UsageError);
    const std::vector<float> nan{std::numeric_limits<float>::quiet_NaN()};
    EXPECT_THROW(comm.sparse_allreduce(std::vector<uint32_t>{4}, nan, out), UsageError);
    EXPECT_EQ(out, std::vector<float>(10, 5.0f));
    EXPECT_FALSE(comm.failed());
  });
}

// A block message as the sparse ring sends it (sparse_collectives.h).
std::vector<std::byte> block_message(uint32_t block, uint8_t form, uint64_t count,
                                     const std::vector<uint32_t>& indices,
                                     const std::vector<float>& values) {
  ByteWriter w(64);
  w.write_u32(block);
  w.write_u8(form);
  w.write_u8(0);
  w.write_u8(0);
  w.write_u8(0);
  w.write_u64(count);
  for (const uint32_t i : indices) w.write_u32(i);
  for (const float v : values) w.write_f32(v);
  return w.take();
}

// Runs a sparse_allreduce of n elements on `ranks` ranks where rank 1,
// instead, sends `bad` as its first message (to rank 2 mod ranks) with the
// right header; returns the honest ranks' errors, checking `out` untouched.
std::vector<std::string> errors_with_bad_rank_1(int ranks, size_t n,
                                                const std::vector<std::byte>& bad) {
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  run_ranks(ranks, [&](int rank, Transport& transport) {
    if (rank == 1) {
      OpDescriptor desc;
      desc.kind = OpKind::kSparseAllreduce;
      desc.count = n;
      desc.seq = 1;
      CollectiveChannel channel(transport, uint64_t{1} << 32, desc, Deadline::after(kTimeout));
      channel.send((rank + 1) % ranks, std::span<const std::byte>(bad));
      try {
        // Waits, as a rank still in the collective would, until the abort.
        for (int s = 0; s < 2 * ranks; ++s) channel.recv_variable(0);
      } catch (const CommError&) {
      }
      return;
    }
    Communicator comm(transport, options());
    const SparseInput in = random_sparse(rank, n, 0.1, 5);
    std::vector<float> out(n, 42.0f);
    try {
      comm.sparse_allreduce(in.indices, in.values, out);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
      EXPECT_EQ(e.peer(), 1) << e.what();
    }
    EXPECT_EQ(out, std::vector<float>(n, 42.0f)) << "rank " << rank << " wrote its output";
    EXPECT_TRUE(comm.failed());
  });
  return errors;
}

TEST(SparseAllreduce, MalformedBlockFailsEveryRankNamingTheSender) {
  // 3 ranks, n = 6000: blocks [0, 2000), [2000, 4000), [4000, 6000); rank 1
  // sends block 0 first.
  const auto errors = errors_with_bad_rank_1(3, 6000, block_message(0, 0, 1, {9000}, {1.0f}));
  for (const int r : {0, 2}) {
    EXPECT_NE(errors[static_cast<size_t>(r)].find(
                  "rank 1 sent a malformed sparse block: index 9000 outside [0, 2000)"),
              std::string::npos)
        << "rank " << r << ": " << errors[static_cast<size_t>(r)];
  }
}

TEST(SparseAllreduce, EachKindOfMalformedMessageIsNamed) {
  // 2 ranks, n = 100: blocks [0, 50), [50, 100); rank 1 sends block 0 first.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<std::pair<std::vector<std::byte>, std::string>> cases = {
      {block_message(0, 0, 2, {7, 7}, {1.0f, 1.0f}), "index 7 follows index 7"},
      {block_message(0, 0, 2, {9, 3}, {1.0f, 1.0f}), "index 3 follows index 9"},
      {block_message(0, 0, 1, {50}, {1.0f}), "index 50 outside [0, 50)"},
      {block_message(0, 0, 3, {1, 2}, {1.0f, 1.0f}), "count 3 does not match its 16 bytes"},
      {block_message(0, 0, 1, {1}, {nan}), "value nan at entry 0 is not finite"},
      {block_message(1, 0, 1, {1}, {1.0f}), "block 1 where block 0 was due"},
      {block_message(0, 7, 0, {}, {}), "form 7"},
      {block_message(0, 1, 3, {}, {1.0f, 2.0f, 3.0f}), "dense 3 entries for a block of 50"},
      {std::vector<std::byte>(5), "5 bytes, shorter than its 16-byte prefix"},
  };
  for (const auto& [message, expected] : cases) {
    const auto errors = errors_with_bad_rank_1(2, 100, message);
    EXPECT_NE(errors[0].find("rank 1 sent a malformed sparse block: " + expected),
              std::string::npos)
        << errors[0];
  }
}

}  // namespace
}  // namespace dtrain::comm
