// Communicator::allreduce16 (the ring with 16-bit messages) and
// Communicator::allgather_bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <string>

#include "collective_test_util.h"
#include "comm/collectives/collective_protocol.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using testing::run_ranks;

constexpr size_t kChunkBytes = 64;  // 32 values per 16-bit message

CommunicatorOptions options() {
  CommunicatorOptions o;
  o.timeout = std::chrono::seconds(20);
  o.chunk_bytes = kChunkBytes;
  return o;
}

std::vector<float> random_input(int rank, size_t count, float magnitude) {
  std::mt19937 rng(1234u + static_cast<unsigned>(rank));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng) * magnitude;
  return v;
}

// Runs allreduce16 on n ranks; returns every rank's result.
std::vector<std::vector<float>> reduce16(int n, size_t count, bool bf16, float magnitude) {
  std::vector<std::vector<float>> results(static_cast<size_t>(n));
  run_ranks(n, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data = random_input(rank, count, magnitude);
    comm.allreduce16(data, bf16);
    results[static_cast<size_t>(rank)] = std::move(data);
  });
  return results;
}

class Allreduce16Worlds : public ::testing::TestWithParam<int> {};

TEST_P(Allreduce16Worlds, WithinToleranceOfTheExactSumAndBitIdenticalEverywhere) {
  const int n = GetParam();
  for (const bool bf16 : {false, true}) {
    for (const size_t count :
         {size_t{0}, size_t{1}, size_t{7}, static_cast<size_t>(n - 1), size_t{32 * 3 * 5 + 11}}) {
      const auto results = reduce16(n, count, bf16, 1.0f);
      // Every hop rounds a partial sum to 16 bits: relative 2^-9 (bf16), or
      // 2^-12 of the message's largest magnitude (fp16, <= the sum of the
      // ranks' magnitudes, each <= 1); n - 1 hops and the final encoding.
      const double per_rounding = bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
      for (size_t i = 0; i < count; ++i) {
        double exact = 0;
        double magnitude = 0;
        for (int r = 0; r < n; ++r) {
          const float x = random_input(r, count, 1.0f)[i];
          exact += x;
          magnitude += std::fabs(x);
        }
        const double tolerance = per_rounding * n * (bf16 ? magnitude : n);
        EXPECT_NEAR(results[0][i], exact, tolerance)
            << "n=" << n << " count=" << count << (bf16 ? " bf16" : " fp16") << " i=" << i;
      }
      for (int r = 1; r < n; ++r) {
        ASSERT_EQ(results[static_cast<size_t>(r)].size(), count);
        EXPECT_TRUE(count == 0 || 0 == std::memcmp(results[static_cast<size_t>(r)].data(),
                                                   results[0].data(), count * sizeof(float)))
            << "rank " << r << " differs from rank 0 (n=" << n << ", count=" << count << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, Allreduce16Worlds, ::testing::Values(1, 2, 3, 4, 5));

TEST(Allreduce16, Fp16NeitherOverflowsNorUnderflowsWithScaling) {
  constexpr int kRanks = 3;
  for (const float magnitude : {1e30f, 1e-30f}) {
    const auto results = reduce16(kRanks, 200, false, magnitude);
    for (size_t i = 0; i < 200; ++i) {
      double exact = 0;
      for (int r = 0; r < kRanks; ++r) exact += random_input(r, 200, magnitude)[i];
      const float got = results[0][i];
      ASSERT_TRUE(std::isfinite(got)) << "magnitude " << magnitude << " i=" << i << ": " << got;
      // Each rounding errs by at most 2^-11 of a message's largest magnitude
      // (<= kRanks * magnitude); kRanks roundings.
      EXPECT_NEAR(got, exact, std::ldexp(kRanks * kRanks * magnitude, -10))
          << "magnitude " << magnitude << " i=" << i;
      if (magnitude > 1.0f && std::fabs(exact) > 0.25 * magnitude) {
        EXPECT_LT(std::fabs(got - exact) / std::fabs(exact), 0.05) << "i=" << i;
      }
    }
  }
  // Huge and tiny values in one buffer: the tiny ones may flush to zero
  // next to the huge ones, but nothing becomes infinite or NaN.
  run_ranks(2, [&](int, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data(100);
    for (size_t i = 0; i < data.size(); ++i) data[i] = (i % 2 == 0 ? 3e38f : 1e-30f);
    comm.allreduce16(data, false);  // 3e38 + 3e38 overflows float32 itself: it may be inf
    for (size_t i = 1; i < data.size(); i += 2) {
      EXPECT_FALSE(std::isnan(data[i])) << i;
      EXPECT_TRUE(std::isfinite(data[i])) << i;
    }
  });
}

TEST(Allreduce16, SendsAboutHalfTheBytesOfTheFloatRing) {
  constexpr int kRanks = 3;
  constexpr size_t kCount = 30000;
  std::vector<uint64_t> float_bytes(kRanks);
  std::vector<uint64_t> half_bytes(kRanks);
  run_ranks(kRanks, [&](int rank, Transport& transport) {
    CommunicatorOptions o = options();
    o.chunk_bytes = 4096;
    o.small_allreduce_bytes = 0;  // the float ring
    o.pair_exchange_bytes = 0;    // keep the chosen algorithm with two ranks too
    Communicator dense(transport, o);
    o.group_id = 2;
    Communicator half(transport, o);
    std::vector<float> data = random_input(rank, kCount, 1.0f);
    dense.allreduce(data, ReduceOp::kSum);
    half.allreduce16(data, false);
    float_bytes[static_cast<size_t>(rank)] = dense.bytes_sent();
    half_bytes[static_cast<size_t>(rank)] = half.bytes_sent();
  });
  for (int r = 0; r < kRanks; ++r) {
    const double floats = static_cast<double>(float_bytes[static_cast<size_t>(r)]);
    const double halves = static_cast<double>(half_bytes[static_cast<size_t>(r)]);
    // The float ring: 2 (n-1)/n * 4 * count plus headers.
    EXPECT_GE(floats, 2.0 * (kRanks - 1) / kRanks * 4 * kCount);
    EXPECT_GT(halves, 0.45 * floats) << "rank " << r;
    EXPECT_LT(halves, 0.55 * floats) << "rank " << r;
  }
}

TEST(Allreduce16, Fp16AgainstBf16NamesBothSides) {
  std::vector<std::string> errors(2);
  run_ranks(2, [&](int rank, Transport& transport) {
    Communicator comm(transport, options());
    std::vector<float> data(100, 1.0f);
    try {
      comm.allreduce16(data, rank == 1);
    } catch (const CommError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_NE(e.find("allreduce #1 (100 fp16, sum)"), std::string::npos) << e;
    EXPECT_NE(e.find("allreduce #1 (100 bf16, sum)"), std::string::npos) << e;
  }
}

TEST(AllgatherBytes, EveryRanksMessageInRankOrder) {
  for (const int n : {1, 2, 3, 4}) {
    run_ranks(n, [&](int rank, Transport& transport) {
      Communicator comm(transport, options());
      const auto message_of = [](int r) {
        // Sizes 0, 1, 200, 3 ...: empty and multi-chunk messages.
        const size_t size = r == 0 ? 0 : r == 2 ? 200 : static_cast<size_t>(r);
        std::vector<std::byte> m(size);
        for (size_t i = 0; i < size; ++i) m[i] = static_cast<std::byte>(r * 37 + i);
        return m;
      };
      const auto gathered = comm.allgather_bytes(message_of(rank));
      ASSERT_EQ(gathered.size(), static_cast<size_t>(n));
      for (int r = 0; r < n; ++r) EXPECT_EQ(gathered[static_cast<size_t>(r)], message_of(r));
    });
  }
}

TEST(AllgatherBytes, OversizedAnnouncementFailsNamingTheRank) {
  // Rank 1 announces 2 GiB in the size exchange (a hand-made message with
  // the right header) instead of calling allgather_bytes.
  std::string error;
  run_ranks(2, [&](int rank, Transport& transport) {
    if (rank == 1) {
      OpDescriptor desc;
      desc.kind = OpKind::kAllgather;
      desc.dtype = Dtype::kBytes;
      desc.count = 2 * sizeof(uint64_t);
      desc.seq = 1;
      CollectiveChannel channel(transport, uint64_t{1} << 32, desc,
                                Deadline::after(std::chrono::seconds(20)));
      ByteWriter size(sizeof(uint64_t));
      size.write_u64(uint64_t{2} << 30);
      channel.send(0, size.bytes());
      std::vector<std::byte> theirs(sizeof(uint64_t));
      channel.recv_into(0, std::span<std::byte>(theirs));
      return;
    }
    Communicator comm(transport, options());
    const std::vector<std::byte> mine(10);
    try {
      comm.allgather_bytes(mine);
    } catch (const CommError& e) {
      error = e.what();
      EXPECT_EQ(e.peer(), 1);
    }
    EXPECT_TRUE(comm.failed());
  });
  EXPECT_NE(error.find("rank 1 announced 2147483648 bytes"), std::string::npos) << error;
}

}  // namespace
}  // namespace dtrain::comm
