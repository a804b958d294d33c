#include "privacy/secagg.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"
#include "privacy/secagg_graph.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_round.h"

namespace dtrain::privacy {
namespace {

Key32 entropy_of(uint32_t id) {
  Key32 key{};
  key[0] = static_cast<uint8_t>(id);
  key[1] = static_cast<uint8_t>(id >> 8);
  key[31] = 0x5a;
  return key;
}

std::vector<std::vector<float>> random_inputs(uint32_t n, size_t length, uint64_t seed,
                                              float range = 1.0F) {
  Rng rng(seed);
  std::vector<std::vector<float>> inputs(n, std::vector<float>(length));
  for (auto& input : inputs) {
    for (float& v : input) v = rng.uniform(-range, range);
  }
  return inputs;
}

// The plain sum of the clipped inputs of `included`.
std::vector<double> plain_sum(const std::vector<std::vector<float>>& inputs,
                              const std::vector<uint32_t>& included, float clip) {
  std::vector<double> sum(inputs[0].size(), 0.0);
  for (uint32_t u : included) {
    for (size_t i = 0; i < sum.size(); ++i) {
      sum[i] += std::clamp(inputs[u][i], -clip, clip);
    }
  }
  return sum;
}

void expect_close_sum(const SecAggRoundResult& result,
                      const std::vector<std::vector<float>>& inputs, uint32_t n, float clip) {
  ASSERT_TRUE(result.ok) << result.failure;
  const std::vector<double> expected = plain_sum(inputs, result.included, clip);
  const double bound =
      FixedPointCode(clip, n).sum_error_bound(static_cast<uint32_t>(result.included.size())) +
      1e-6 * result.included.size() * clip;
  ASSERT_EQ(result.sum.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_NEAR(result.sum[i], expected[i], bound) << "entry " << i;
  }
}

// A round driven by hand, to look at and tamper with the messages.
struct ManualRound {
  explicit ManualRound(SecAggConfig c) : config(c), server(c) {
    for (uint32_t u = 0; u < config.clients; ++u) clients.emplace_back(config, u, entropy_of(u));
  }
  void phase0() {
    for (auto& c : clients) server.receive_advertise(c.id(), c.advertise_keys());
    directories = server.finish_advertise();
  }
  void phase1() {
    for (auto& c : clients) {
      share_keys.push_back(c.share_keys(directories.at(c.id())));
      server.receive_share_keys(c.id(), share_keys.back());
    }
    bundles = server.finish_share_keys();
  }
  void phase2(const std::vector<std::vector<float>>& inputs) {
    for (auto& c : clients) {
      masked.push_back(c.masked_input(bundles.at(c.id()), inputs[c.id()]));
      server.receive_masked_input(c.id(), masked.back());
    }
    requests = server.finish_masked_input();
  }
  // The y vector inside a MaskedInput message.
  static std::vector<uint32_t> words_of(const SecAggMessage& message) {
    ByteReader reader(message, "test");
    reader.read_bytes(10, "header");
    const uint64_t length = reader.read_u64("length");
    std::vector<uint32_t> y(length);
    for (auto& w : y) w = reader.read_u32("y");
    return y;
  }

  SecAggConfig config;
  SecAggServer server;
  std::vector<SecAggClient> clients;
  std::map<uint32_t, SecAggMessage> directories, bundles, requests;
  std::vector<SecAggMessage> share_keys, masked;
};

SecAggConfig small_config(uint32_t n, uint32_t t, size_t length) {
  SecAggConfig config;
  config.round = 7;
  config.clients = n;
  config.threshold = t;
  config.vector_length = length;
  config.clip = 1.0F;
  return config;
}

SecAggMessage unmask_request(uint32_t round, const std::vector<uint32_t>& survivors,
                             const std::vector<uint32_t>& dropped) {
  ByteWriter writer;
  writer.write_u8(kSecAggVersion);
  writer.write_u8(static_cast<uint8_t>(SecAggMessageType::kUnmaskRequest));
  writer.write_u32(round);
  writer.write_u32(kSecAggServerId);
  writer.write_u32(static_cast<uint32_t>(survivors.size()));
  for (uint32_t v : survivors) writer.write_u32(v);
  writer.write_u32(static_cast<uint32_t>(dropped.size()));
  for (uint32_t v : dropped) writer.write_u32(v);
  return writer.take();
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ------------------------------------------------------------ quantisation

TEST(SecAggQuantizeTest, SumOfClippedValuesWithinTheBoundAndNoWrap) {
  for (uint32_t n : {1U, 2U, 3U, 50U, 1000U}) {
    const FixedPointCode code(1.5F, n);
    EXPECT_LT(static_cast<uint64_t>(n) * code.max_level(), uint64_t{1} << 31);
    Rng rng(n);
    const size_t length = 257;
    std::vector<uint32_t> sum(length, 0);
    std::vector<double> expected(length, 0.0);
    std::vector<uint32_t> q(length);
    for (uint32_t u = 0; u < n; ++u) {
      std::vector<float> x(length);
      for (size_t i = 0; i < length; ++i) {
        // Values beyond the clip, and the extremes, which must not wrap.
        x[i] = i < 2 ? (i == 0 ? 5.0F : -5.0F) : rng.uniform(-2.0F, 2.0F);
        expected[i] += std::clamp(x[i], -1.5F, 1.5F);
      }
      code.quantize(x, rng, q);
      for (size_t i = 0; i < length; ++i) sum[i] += q[i];
    }
    std::vector<float> out(length);
    code.dequantize_sum(sum, out);
    const double bound = code.sum_error_bound(n) + 1e-6 * n * 1.5;
    for (size_t i = 0; i < length; ++i) ASSERT_NEAR(out[i], expected[i], bound) << n << " " << i;
  }
}

TEST(SecAggQuantizeTest, StochasticRoundingIsUnbiased) {
  const FixedPointCode code(1.0F, 4);
  // A value a quarter of the way between two levels.
  const float x = static_cast<float>((1000.25) / code.scale());
  const double level = static_cast<double>(x) * code.scale();
  const int draws = 200000;
  std::vector<float> xs(draws, x);
  std::vector<uint32_t> q(draws);
  Rng rng(11);
  code.quantize(xs, rng, q);
  double mean = 0;
  for (uint32_t w : q) mean += static_cast<int32_t>(w);
  mean /= draws;
  // Standard error 0.001; 0.01 is ten of them.
  EXPECT_NEAR(mean, level, 0.01);
}

TEST(SecAggQuantizeTest, BadArguments) {
  EXPECT_THROW(FixedPointCode(0.0F, 3), UsageError);
  EXPECT_THROW(FixedPointCode(NAN, 3), UsageError);
  EXPECT_THROW(FixedPointCode(1.0F, 0), UsageError);
}

// ------------------------------------------------------------ graph

TEST(SecAggGraphTest, HararyDegreeSymmetryAndConnectivity) {
  for (uint32_t n : {5U, 20U, 50U, 1000U}) {
    const uint32_t k = std::min(recommended_degree(n), n % 2 == 0 ? n - 2 : n - 3);
    const auto graph = secagg_neighbours(SecAggGraphKind::kHarary, n, k, 42 + n);
    for (uint32_t u = 0; u < n; ++u) {
      ASSERT_EQ(graph[u].size(), k) << "n " << n << " client " << u;
      for (uint32_t v : graph[u]) {
        ASSERT_NE(v, u);
        ASSERT_TRUE(std::binary_search(graph[v].begin(), graph[v].end(), u));
      }
    }
    // k-connected: still connected after removing k - 1 clients.
    Rng rng(n);
    std::set<uint32_t> removed;
    while (removed.size() + 1 < k) removed.insert(static_cast<uint32_t>(rng.below(n)));
    std::vector<bool> seen(n, false);
    uint32_t start = 0;
    while (removed.count(start) != 0) ++start;
    std::queue<uint32_t> queue;
    queue.push(start);
    seen[start] = true;
    size_t reached = 1;
    while (!queue.empty()) {
      const uint32_t u = queue.front();
      queue.pop();
      for (uint32_t v : graph[u]) {
        if (!seen[v] && removed.count(v) == 0) {
          seen[v] = true;
          ++reached;
          queue.push(v);
        }
      }
    }
    EXPECT_EQ(reached, n - removed.size()) << "n " << n;
  }
  const auto a = secagg_neighbours(SecAggGraphKind::kHarary, 50, 8, 1);
  const auto b = secagg_neighbours(SecAggGraphKind::kHarary, 50, 8, 2);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, secagg_neighbours(SecAggGraphKind::kHarary, 50, 8, 1));
  EXPECT_EQ(recommended_degree(1000), 20U);
}

TEST(SecAggGraphTest, FullGraphAndBadDegree) {
  const auto full = secagg_neighbours(SecAggGraphKind::kFull, 6, 0, 0);
  for (uint32_t u = 0; u < 6; ++u) EXPECT_EQ(full[u].size(), 5U);
  EXPECT_THROW(secagg_neighbours(SecAggGraphKind::kHarary, 20, 3, 0), UsageError);
  // A degree of n - 1 or more is the full graph.
  EXPECT_EQ(secagg_neighbours(SecAggGraphKind::kHarary, 6, 6, 0), full);
}

// ------------------------------------------------------------ masks

// Inputs of -clip, 0 and +clip quantise exactly (no rounding randomness), so
// the modular sums can be compared word for word.
TEST(SecAggTest, MasksCancelInTheSum) {
  const uint32_t n = 6;
  const size_t length = 1000;
  ManualRound round(small_config(n, 4, length));
  Rng rng(3);
  std::vector<std::vector<float>> inputs(n, std::vector<float>(length));
  const FixedPointCode code(1.0F, n);
  std::vector<uint32_t> x_sum(length, 0);
  for (auto& input : inputs) {
    for (size_t i = 0; i < length; ++i) {
      const int level = static_cast<int>(rng.below(3)) - 1;
      input[i] = static_cast<float>(level);
      x_sum[i] += static_cast<uint32_t>(level * code.max_level());
    }
  }
  round.phase0();
  round.phase1();
  round.phase2(inputs);
  std::vector<uint32_t> y_sum(length, 0);
  for (const auto& message : round.masked) {
    const auto y = ManualRound::words_of(message);
    for (size_t i = 0; i < length; ++i) y_sum[i] += y[i];
  }
  EXPECT_NE(y_sum, x_sum);  // the self masks are still in
  // Remove the self masks (b_u comes from the entropy, as the client derives it).
  for (uint32_t u = 0; u < n; ++u) {
    add_mask(derive_secret(entropy_of(u), "secagg self mask"), 7, MaskPurpose::kSelfMask, -1,
             y_sum);
  }
  EXPECT_EQ(y_sum, x_sum);  // the pairwise masks cancelled
  // And the server's unmasked sum is exact.
  for (auto& c : round.clients) {
    round.server.receive_unmasking(c.id(), c.unmask(round.requests.at(c.id())));
  }
  const SecAggResult result = round.server.finish();
  std::vector<uint32_t> got(length);
  for (size_t i = 0; i < length; ++i) {
    got[i] = static_cast<uint32_t>(std::lround(result.sum[i] * code.scale()));
  }
  EXPECT_EQ(got, x_sum);
  EXPECT_EQ(result.included.size(), n);
}

// A client's masked vector: bucket its words by their top 8 bits; chi-square
// with 255 degrees of freedom has mean 255 and deviation 22.6; 400 is over six
// deviations (and the seeds are fixed). The control, the unmasked quantised
// vector, is far from uniform and fails.
TEST(SecAggTest, MaskedVectorLooksUniform) {
  const uint32_t n = 3;
  const size_t length = 1 << 16;
  ManualRound round(small_config(n, 2, length));
  std::vector<std::vector<float>> inputs(n, std::vector<float>(length, 0.01F));
  round.phase0();
  round.phase1();
  round.phase2(inputs);
  auto chi_square = [](const std::vector<uint32_t>& words) {
    std::vector<double> counts(256, 0.0);
    for (uint32_t w : words) counts[w >> 24] += 1;
    const double expected = static_cast<double>(words.size()) / 256;
    double chi = 0;
    for (double c : counts) chi += (c - expected) * (c - expected) / expected;
    return chi;
  };
  for (const auto& message : round.masked) {
    EXPECT_LT(chi_square(ManualRound::words_of(message)), 400.0);
  }
  std::vector<uint32_t> plain(length);
  Rng rng(1);
  FixedPointCode(1.0F, n).quantize(inputs[0], rng, plain);
  EXPECT_GT(chi_square(plain), 400.0);
}

// ------------------------------------------------------------ whole rounds

TEST(SecAggTest, NoDropsSumWithinQuantisationError) {
  for (uint32_t n : {1U, 2U, 5U, 17U}) {
    const auto inputs = random_inputs(n, 301, n, 1.2F);
    SecAggRoundOptions options;
    options.threshold = n / 2 + 1;
    options.seed = 100 + n;
    const auto result = run_secagg_round(inputs, options, {});
    expect_close_sum(result, inputs, n, 1.0F);
    EXPECT_EQ(result.included.size(), n);
  }
}

struct DropCase {
  SecAggDrop drop;
  bool included;  // whether the dropped clients' inputs are still in the sum
};

TEST(SecAggTest, RecoversFromUpToNMinusTDropsAtEachPhase) {
  const uint32_t n = 12;
  const uint32_t t = 7;
  const auto inputs = random_inputs(n, 200, 5);
  for (const DropCase c :
       {DropCase{SecAggDrop::kBeforeAdvertise, false}, DropCase{SecAggDrop::kAfterAdvertise, false},
        DropCase{SecAggDrop::kAfterShareKeys, false}, DropCase{SecAggDrop::kAfterMaskedInput, true},
        DropCase{SecAggDrop::kDuringUnmasking, true}}) {
    std::map<uint32_t, SecAggDrop> drops;
    for (uint32_t u : {1U, 4U, 5U, 8U, 11U}) drops[u] = c.drop;  // n - t = 5
    SecAggRoundOptions options;
    options.threshold = t;
    options.seed = 9;
    const auto result = run_secagg_round(inputs, options, drops);
    SCOPED_TRACE("drop point " + std::to_string(static_cast<int>(c.drop)));
    expect_close_sum(result, inputs, n, 1.0F);
    EXPECT_EQ(result.included.size(), c.included ? n : n - 5);
    EXPECT_EQ(std::count(result.included.begin(), result.included.end(), 4U), c.included ? 1 : 0);
  }
}

TEST(SecAggTest, MixedDropsFullAndSecAggPlus) {
  const uint32_t n = 40;
  const auto inputs = random_inputs(n, 150, 6, 0.8F);
  std::map<uint32_t, SecAggDrop> drops{{3, SecAggDrop::kAfterAdvertise},
                                       {17, SecAggDrop::kAfterShareKeys},
                                       {29, SecAggDrop::kAfterMaskedInput},
                                       {35, SecAggDrop::kDuringUnmasking}};
  SecAggRoundOptions full;
  full.threshold = 21;
  full.seed = 1;
  const auto a = run_secagg_round(inputs, full, drops);
  expect_close_sum(a, inputs, n, 1.0F);
  EXPECT_EQ(a.included.size(), n - 2);

  SecAggRoundOptions plus;
  plus.graph = SecAggGraphKind::kHarary;
  plus.degree = 8;     // holders 9 per client
  plus.threshold = 5;  // 4 drops leave at least 5 holders of every secret
  plus.seed = 2;
  const auto b = run_secagg_round(inputs, plus, drops);
  expect_close_sum(b, inputs, n, 1.0F);
  EXPECT_EQ(b.included.size(), n - 2);
  // SecAgg+ sends less than the full graph.
  EXPECT_LT(b.stats.client_bytes_sent[0], a.stats.client_bytes_sent[0]);
}

TEST(SecAggTest, MoreThanNMinusTDropsFailCleanly) {
  const uint32_t n = 10;
  const uint32_t t = 6;
  const auto inputs = random_inputs(n, 50, 7);
  const std::vector<std::pair<SecAggDrop, std::string>> cases{
      {SecAggDrop::kBeforeAdvertise, "phase 0"},
      {SecAggDrop::kAfterAdvertise, "phase 1"},
      {SecAggDrop::kAfterShareKeys, "phase 2"},
      {SecAggDrop::kAfterMaskedInput, "phase 3"},
      {SecAggDrop::kDuringUnmasking, "phase 3"}};
  for (const auto& [drop, phase] : cases) {
    std::map<uint32_t, SecAggDrop> drops;
    for (uint32_t u = 0; u < n - t + 1; ++u) drops[u] = drop;
    SecAggRoundOptions options;
    options.threshold = t;
    const auto result = run_secagg_round(inputs, options, drops);
    EXPECT_FALSE(result.ok);
    EXPECT_TRUE(result.sum.empty());
    EXPECT_NE(result.failure.find(phase), std::string::npos) << result.failure;
    EXPECT_NE(result.failure.find("5 of 10 clients answered"), std::string::npos) << result.failure;
    EXPECT_NE(result.failure.find("at least 6"), std::string::npos) << result.failure;
  }
}

// SecAgg+: the threshold is per neighbourhood. Losing the answers of enough
// of one client's holders fails the round at phase 3, naming that client,
// even though many clients answered overall.
TEST(SecAggTest, SecAggPlusFailsWhenOneNeighbourhoodLosesItsThreshold) {
  const uint32_t n = 20;
  const auto inputs = random_inputs(n, 30, 8);
  SecAggRoundOptions options;
  options.graph = SecAggGraphKind::kHarary;
  options.degree = 4;     // 5 holders
  options.threshold = 4;  // one lost holder is fine, two are not
  options.seed = 3;
  const auto graph = secagg_neighbours(SecAggGraphKind::kHarary, n, 4, options.seed);
  std::map<uint32_t, SecAggDrop> drops{{graph[0][0], SecAggDrop::kDuringUnmasking}};
  const auto fine = run_secagg_round(inputs, options, drops);
  expect_close_sum(fine, inputs, n, 1.0F);
  drops[graph[0][1]] = SecAggDrop::kDuringUnmasking;
  const auto failed = run_secagg_round(inputs, options, drops);
  EXPECT_FALSE(failed.ok);
  EXPECT_TRUE(failed.sum.empty());
  EXPECT_NE(failed.failure.find("phase 3"), std::string::npos) << failed.failure;
  EXPECT_NE(failed.failure.find("3 shares of client 0's self-mask seed"), std::string::npos)
      << failed.failure;
}

// ------------------------------------------------------------ refusals and malformed input

TEST(SecAggTest, ClientRefusesToRevealBothSharesOfAClient) {
  const uint32_t n = 4;
  ManualRound round(small_config(n, 3, 8));
  round.phase0();
  round.phase1();
  round.phase2(random_inputs(n, 8, 1));
  auto& client = round.clients[0];
  const std::string both = error_of([&] { client.unmask(unmask_request(7, {0, 1, 2, 3}, {2})); });
  EXPECT_NE(both.find("both"), std::string::npos) << both;
  EXPECT_NE(both.find("client 2"), std::string::npos) << both;
  EXPECT_NE(both.find("phase 3"), std::string::npos) << both;
  // Not the holders it knows, or itself listed as dropped.
  EXPECT_THROW(client.unmask(unmask_request(7, {0, 1, 2}, {})), DataError);
  EXPECT_THROW(client.unmask(unmask_request(7, {1, 2, 3}, {0})), DataError);
  EXPECT_THROW(client.unmask(unmask_request(7, {0, 1, 2, 3, 9}, {})), DataError);
  // The honest request still works after the refusals.
  EXPECT_NO_THROW(client.unmask(round.requests.at(0)));
}

TEST(SecAggTest, MalformedMessagesAreDataErrorsNamingSenderAndPhase) {
  const uint32_t n = 4;
  ManualRound round(small_config(n, 3, 8));
  auto advertise = round.clients[2].advertise_keys();
  // Truncated at every length.
  for (size_t cut = 0; cut < advertise.size(); ++cut) {
    const std::string e =
        error_of([&] { round.server.receive_advertise(2, std::span(advertise).first(cut)); });
    ASSERT_NE(e.find("client 2"), std::string::npos) << e;
    ASSERT_NE(e.find("phase 0"), std::string::npos) << e;
  }
  // Claimed by another sender, and from an unknown client.
  EXPECT_THROW(round.server.receive_advertise(1, advertise), DataError);
  EXPECT_THROW(round.server.receive_advertise(9, advertise), DataError);
  auto wrong_round = advertise;
  wrong_round[2] ^= std::byte{1};
  EXPECT_THROW(round.server.receive_advertise(2, wrong_round), DataError);
  round.server.receive_advertise(2, advertise);
  EXPECT_THROW(round.server.receive_advertise(2, advertise), DataError);  // twice
  for (uint32_t u : {0U, 1U, 3U}) {
    round.server.receive_advertise(u, round.clients[u].advertise_keys());
  }
  round.directories = round.server.finish_advertise();
  round.phase1();
  // A flipped byte in an encrypted share fails authentication at the recipient.
  auto bundle = round.bundles.at(1);
  bundle[10 + 4 + 4 + 20] ^= std::byte{0x40};
  const std::string tampered =
      error_of([&] { round.clients[1].masked_input(bundle, std::vector<float>(8, 0.0F)); });
  EXPECT_NE(tampered.find("authentication"), std::string::npos) << tampered;
  EXPECT_NE(tampered.find("client 1"), std::string::npos) << tampered;
  // Masked input of the wrong length.
  auto& c0 = round.clients[0];
  auto y = c0.masked_input(round.bundles.at(0), std::vector<float>(8, 0.5F));
  auto short_y = y;
  short_y[10] = std::byte{7};  // the length field says 7
  const std::string length_error = error_of([&] { round.server.receive_masked_input(0, short_y); });
  EXPECT_NE(length_error.find("phase 2"), std::string::npos) << length_error;
  EXPECT_NE(length_error.find("client 0"), std::string::npos) << length_error;
  for (size_t cut = 0; cut < y.size(); cut += 7) {
    EXPECT_THROW(round.server.receive_masked_input(0, std::span(y).first(cut)), DataError);
  }
  round.server.receive_masked_input(0, y);
  // Out of order: the server is in phase 2, a client cannot unmask yet.
  EXPECT_THROW(round.server.receive_unmasking(0, y), UsageError);
  EXPECT_THROW(round.clients[3].unmask(unmask_request(7, {3}, {})), UsageError);
}

// Every truncation of every server-to-client message is a DataError naming
// the client and the phase, and leaves the client able to take the intact one.
TEST(SecAggTest, TruncatedServerMessagesAreRejectedWithoutSideEffects) {
  const uint32_t n = 4;
  const size_t length = 6;
  ManualRound round(small_config(n, 3, length));
  round.phase0();
  auto& client = round.clients[1];
  const auto& directory = round.directories.at(1);
  for (size_t cut = 0; cut < directory.size(); ++cut) {
    const std::string e = error_of([&] { client.share_keys(std::span(directory).first(cut)); });
    ASSERT_NE(e.find("client 1"), std::string::npos) << e;
    ASSERT_NE(e.find("phase 0"), std::string::npos) << e;
  }
  round.phase1();  // the clients, client 1 included, take the intact directories
  const auto inputs = random_inputs(n, length, 4);
  const auto& bundle = round.bundles.at(1);
  for (size_t cut = 0; cut < bundle.size(); ++cut) {
    ASSERT_THROW(client.masked_input(std::span(bundle).first(cut), inputs[1]), DataError) << cut;
  }
  round.phase2(inputs);
  const auto& request = round.requests.at(1);
  for (size_t cut = 0; cut < request.size(); ++cut) {
    ASSERT_THROW(client.unmask(std::span(request).first(cut)), DataError) << cut;
  }
  for (auto& c : round.clients) {
    round.server.receive_unmasking(c.id(), c.unmask(round.requests.at(c.id())));
  }
  EXPECT_EQ(round.server.finish().included.size(), n);
}

TEST(SecAggTest, ServerRejectsUnaskedShares) {
  const uint32_t n = 5;
  ManualRound round(small_config(n, 3, 4));
  round.phase0();
  round.phase1();
  round.phase2(random_inputs(n, 4, 2));
  auto reply = round.clients[0].unmask(round.requests.at(0));
  // The first entry's kind byte (after the header and the count, the owner id):
  // a self-mask share turned into a key share the request did not ask for.
  reply[10 + 4 + 4] = std::byte{2};
  const std::string e = error_of([&] { round.server.receive_unmasking(0, reply); });
  EXPECT_NE(e.find("did not ask for"), std::string::npos) << e;
}

TEST(SecAggTest, ConfigValidation) {
  SecAggConfig config = small_config(5, 6, 3);
  EXPECT_THROW(validate(config), UsageError);  // t > n
  config.threshold = 0;
  EXPECT_THROW(validate(config), UsageError);
  config = small_config(50, 10, 3);
  config.graph = SecAggGraphKind::kHarary;
  config.degree = 8;  // 9 holders
  EXPECT_THROW(validate(config), UsageError);
  config.threshold = 5;
  EXPECT_NO_THROW(validate(config));
  config.degree = 7;
  EXPECT_THROW(validate(config), UsageError);
}

}  // namespace
}  // namespace dtrain::privacy
