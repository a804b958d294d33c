// Cost of one secure-aggregation round (src/privacy/secagg.h): bytes each
// client sends against plain FedAvg's 4 bytes per entry, and the seconds a
// client and the server spend in each phase, for n clients, a LENGTH-entry
// vector, the full graph (Bonawitz et al. 2017) and SecAgg+ (Harary graph,
// k = recommended_degree(n)), with no drops and with 5% of the clients
// dropping after sharing keys (the server then also removes their pairwise
// masks).
//
// Every round runs in this one thread through run_secagg_round; per-client
// times are medians over the clients, then medians over REPS repetitions;
// server times are medians over repetitions. Bytes are exact.
//
// The full graph at n = 1000 and LENGTH entries takes n^2 mask expansions
// of LENGTH words (about a second per client, a quarter of an hour for the
// round on one shared core), so that row runs the whole protocol at
// SMALL_LENGTH entries (exact bytes and the L-independent times there), and
// its phase-2 client, phase-2 server and phase-3 server times at LENGTH are
// the small-L measurements plus the measured cost of the extra words, timed
// on their own: a representative client's quantisation and 1 + (n - 1) mask
// expansions; the server's decoding and summing of the survivors' vectors;
// its mask expansions (one per survivor, plus one per survivor neighbour of
// each dropped client). Marked "est" in the table.
//
// Usage: secagg_bench [REPS [LENGTH [MAX_CLIENTS [SMALL_LENGTH]]]]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "core/byte_codec.h"
#include "core/rng.h"
#include "privacy/secagg_crypto.h"
#include "privacy/secagg_graph.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_round.h"

using namespace dtrain;
using namespace dtrain::privacy;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  uint32_t n = 0;
  std::string graph;
  uint32_t degree = 0;
  uint32_t threshold = 0;
  double drop_fraction = 0;
  uint64_t length = 0;
  double sent_per_client = 0;      // median bytes
  double received_per_client = 0;  // median bytes
  double server_received = 0;
  double client_s[4] = {0, 0, 0, 0};
  double server_s[4] = {0, 0, 0, 0};
  bool estimated = false;
  bool ok = true;
};

// Time of the L-dependent part of one client's phase 2: quantisation, the
// self mask and `pairs` pairwise masks (key agreement included).
double mask_seconds(uint32_t n, uint32_t pairs, uint64_t length, int reps) {
  std::vector<float> x(length, 0.25F);
  std::vector<uint32_t> y(length);
  const X25519KeyPair me = keypair_from_seed(derive_secret(Key32{}, "me"));
  std::vector<X25519KeyPair> others;
  for (uint32_t v = 0; v < pairs; ++v) {
    Key32 seed{};
    seed[0] = static_cast<uint8_t>(v);
    seed[1] = static_cast<uint8_t>(v >> 8);
    others.push_back(keypair_from_seed(seed));
  }
  const FixedPointCode code(1.0F, n);
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    Rng rng(1);
    code.quantize(x, rng, y);
    add_mask(me.secret_key, 0, MaskPurpose::kSelfMask, +1, y);
    for (const auto& other : others) {
      const Key32 s =
          agree(me.secret_key, me.public_key, other.public_key, KeyPurpose::kPairMask, "bench");
      add_mask(s, 0, MaskPurpose::kPairMask, +1, y);
    }
    times.push_back(since(t0));
  }
  return median(times);
}

// The server's phase-2 work per masked input of `length` words: decoding the
// little-endian words and adding them to the running sum (what
// SecAggServer::receive_masked_input does after its checks).
double server_sum_seconds(uint32_t inputs, uint64_t length) {
  std::vector<std::byte> message(4 * length, std::byte{0x5a});
  std::vector<uint32_t> sum(length, 0);
  std::vector<uint32_t> y(length);
  const auto t0 = Clock::now();
  for (uint32_t i = 0; i < inputs; ++i) {
    ByteReader reader(message, "bench");
    for (uint32_t& word : y) word = reader.read_u32("y");
    for (size_t j = 0; j < length; ++j) sum[j] += y[j];
  }
  const double seconds = since(t0);
  if (sum[0] == 1) std::fprintf(stderr, "unlikely\n");  // keeps the loop
  return seconds;
}

// The server's L-dependent unmasking work: `expansions` masks of `length`.
double server_mask_seconds(uint32_t expansions, uint64_t length, int reps) {
  std::vector<uint32_t> sum(length, 0);
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    for (uint32_t e = 0; e < expansions; ++e) {
      Key32 seed{};
      seed[0] = static_cast<uint8_t>(e);
      add_mask(seed, 0, MaskPurpose::kSelfMask, -1, sum);
    }
    times.push_back(since(t0));
  }
  return median(times);
}

Row run_row(uint32_t n, SecAggGraphKind graph, double drop_fraction, uint64_t length, int reps,
            const std::vector<float>& buffer) {
  Row row;
  row.n = n;
  row.graph = graph == SecAggGraphKind::kFull ? "full" : "secagg+";
  row.degree = graph == SecAggGraphKind::kFull ? n - 1 : recommended_degree(n);
  if (row.degree + 1 >= n) row.degree = n - 1;
  const uint32_t holders = row.degree + 1;
  row.threshold = holders / 2 + 1;
  row.drop_fraction = drop_fraction;
  row.length = length;
  std::vector<std::span<const float>> inputs(n, std::span<const float>(buffer.data(), length));
  SecAggRoundOptions options;
  options.threshold = row.threshold;
  options.graph = graph;
  options.degree = graph == SecAggGraphKind::kFull ? 0 : recommended_degree(n);
  options.min_survivors = std::min(n, row.threshold);
  std::map<uint32_t, SecAggDrop> drops;
  const auto dropped = static_cast<uint32_t>(drop_fraction * n);
  for (uint32_t i = 0; i < dropped; ++i)
    drops[i * (n / std::max(dropped, 1U))] = SecAggDrop::kAfterShareKeys;
  std::vector<double> sent, received, server_in;
  std::vector<double> client_s[4], server_s[4];
  for (int r = 0; r < reps; ++r) {
    options.seed = 1000 + r;
    const SecAggRoundResult result = run_secagg_round(inputs, options, drops);
    if (!result.ok) {
      std::fprintf(stderr, "round failed: %s\n", result.failure.c_str());
      row.ok = false;
      return row;
    }
    std::vector<double> s, rcv;
    for (uint32_t u = 0; u < n; ++u) {
      if (drops.count(u) != 0) continue;
      s.push_back(static_cast<double>(result.stats.client_bytes_sent[u]));
      rcv.push_back(static_cast<double>(result.stats.client_bytes_received[u]));
    }
    sent.push_back(median(s));
    received.push_back(median(rcv));
    server_in.push_back(static_cast<double>(result.stats.server_bytes_received));
    for (int p = 0; p < 4; ++p) {
      client_s[p].push_back(median(result.stats.client_seconds[p]));
      server_s[p].push_back(result.stats.server_seconds[p]);
    }
  }
  row.sent_per_client = median(sent);
  row.received_per_client = median(received);
  row.server_received = median(server_in);
  for (int p = 0; p < 4; ++p) {
    row.client_s[p] = median(client_s[p]);
    row.server_s[p] = median(server_s[p]);
  }
  return row;
}

void print_json(const Row& r) {
  const double plain = 4.0 * static_cast<double>(r.length);
  std::printf(
      "{\"n\":%u,\"graph\":\"%s\",\"degree\":%u,\"threshold\":%u,\"drop_fraction\":%.2f,"
      "\"length\":%llu,\"client_sent_bytes\":%.0f,\"expansion\":%.4f,\"client_received_bytes\":"
      "%.0f,\"server_received_bytes\":%.0f,\"client_s\":[%.6f,%.6f,%.6f,%.6f],\"server_s\":[%.6f,"
      "%.6f,%.6f,%.6f],\"estimated\":%s,\"ok\":%s}\n",
      r.n, r.graph.c_str(), r.degree, r.threshold, r.drop_fraction,
      static_cast<unsigned long long>(r.length), r.sent_per_client, r.sent_per_client / plain,
      r.received_per_client, r.server_received, r.client_s[0], r.client_s[1], r.client_s[2],
      r.client_s[3], r.server_s[0], r.server_s[1], r.server_s[2], r.server_s[3],
      r.estimated ? "true" : "false", r.ok ? "true" : "false");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 3;
  const uint64_t length = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200000;
  const uint32_t max_clients = argc > 3 ? static_cast<uint32_t>(std::atoi(argv[3])) : 1000;
  const uint64_t small_length = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 2000;
  ensure_sodium();
  std::vector<float> buffer(std::max(length, small_length));
  Rng rng(7);
  for (float& v : buffer) v = rng.uniform(-1.0F, 1.0F);

  std::vector<Row> rows;
  for (uint32_t n : {10U, 100U, 1000U}) {
    if (n > max_clients) break;
    const int row_reps = n >= 1000 ? 1 : reps;
    for (SecAggGraphKind graph : {SecAggGraphKind::kFull, SecAggGraphKind::kHarary}) {
      if (graph == SecAggGraphKind::kHarary && recommended_degree(n) + 1 >= n) continue;
      for (double drop : {0.0, 0.05}) {
        if (n < 20 && drop > 0) continue;
        Row row;
        if (graph == SecAggGraphKind::kFull && n >= 1000) {
          row = run_row(n, graph, drop, small_length, row_reps, buffer);
          // The L-dependent work, measured at both lengths on its own.
          const auto survivors = n - static_cast<uint32_t>(drop * n);
          const double client_extra =
              mask_seconds(n, n - 1, length, 3) - mask_seconds(n, n - 1, small_length, 3);
          const uint32_t server_expansions =
              survivors + static_cast<uint32_t>(drop * n) * survivors;
          const double server_extra = server_mask_seconds(server_expansions, length, 1) -
                                      server_mask_seconds(server_expansions, small_length, 1);
          row.client_s[2] += client_extra;
          row.server_s[2] +=
              server_sum_seconds(survivors, length) - server_sum_seconds(survivors, small_length);
          row.server_s[3] += server_extra;
          // Bytes: only the masked input (4 bytes per entry) grows with L.
          const double extra_bytes = 4.0 * static_cast<double>(length - small_length);
          row.sent_per_client += extra_bytes;
          row.server_received += extra_bytes * survivors;
          row.length = length;
          row.estimated = true;
        } else {
          row = run_row(n, graph, drop, length, row_reps, buffer);
        }
        print_json(row);
        rows.push_back(row);
      }
    }
  }
  std::printf("\n%6s %8s %4s %4s %5s %9s %12s %7s | %-31s | %-31s\n", "n", "graph", "k", "t",
              "drop", "entries", "sent/client", "expand", "client s: ph0 ph1 ph2 ph3",
              "server s: ph0 ph1 ph2 ph3");
  for (const Row& r : rows) {
    std::printf(
        "%6u %8s %4u %4u %4.0f%% %9llu %12.0f %6.3fx | %7.4f %7.4f %7.4f %7.4f | %7.4f "
        "%7.4f %7.4f %7.4f%s\n",
        r.n, r.graph.c_str(), r.degree, r.threshold, 100 * r.drop_fraction,
        static_cast<unsigned long long>(r.length), r.sent_per_client,
        r.sent_per_client / (4.0 * static_cast<double>(r.length)), r.client_s[0], r.client_s[1],
        r.client_s[2], r.client_s[3], r.server_s[0], r.server_s[1], r.server_s[2], r.server_s[3],
        r.estimated ? " est" : "");
  }
  return 0;
}
