// Single-thread cost of each compressor on one gradient, beside memcpy.
//
// For each method: encode() of a ROWS x COLS gradient (error feedback on
// where the method has it), then decode_add() of the message, timed
// separately; medians over REPS repetitions after 2 warm-up ones. Reported:
// encode and decode GB/s of gradient (4 * ROWS * COLS bytes / time), the
// message bytes and the ratio to the dense size. One JSON line per method,
// then a table. No collective: reduce() adds its Group's cost on top.
// Usage: compress_bench [REPS [ROWS [COLS]]]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "compress/compressor.h"
#include "core/byte_codec.h"
#include "core/rng.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  std::string method;
  double encode_gb_per_s = 0;
  double decode_gb_per_s = 0;
  size_t message_bytes = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 9;
  const size_t rows = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 1024;
  const size_t cols = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 1024;
  const size_t n = rows * cols;
  const double gradient_bytes = 4.0 * static_cast<double>(n);
  Rng rng(1);
  std::vector<float> grad(n);
  for (float& v : grad) v = rng.normal();

  std::vector<Row> rows_out;
  {
    std::vector<float> copy(n);
    std::vector<double> times;
    for (int r = 0; r < reps + 2; ++r) {
      const auto t0 = Clock::now();
      std::memcpy(copy.data(), grad.data(), 4 * n);
      if (r >= 2) times.push_back(since(t0));
    }
    rows_out.push_back({"memcpy", gradient_bytes / median(times) / 1e9, 0, 4 * n});
  }
  for (const std::string name : {"fp16", "bf16", "topk", "randomk", "qsgd", "sign", "powersgd"}) {
    compress::Options options;
    options.method = *compress::parse_method(name);
    options.min_size = 1;
    options.density = 0.01;
    options.rank = 4;
    auto c = compress::make_compressor(options, {{rows, cols}});
    std::vector<double> encode_times;
    std::vector<double> decode_times;
    size_t bytes = 0;
    std::vector<float> out(n, 0.0f);
    for (int r = 0; r < reps + 2; ++r) {
      ByteWriter writer;
      auto t0 = Clock::now();
      c->encode(0, grad, r, 0, writer);
      const double encode_s = since(t0);
      t0 = Clock::now();
      compress::decode_add(writer.bytes(), {rows, cols}, 1.0f, out, "bench");
      const double decode_s = since(t0);
      bytes = writer.size();
      if (r >= 2) {
        encode_times.push_back(encode_s);
        decode_times.push_back(decode_s);
      }
    }
    rows_out.push_back({name, gradient_bytes / median(encode_times) / 1e9,
                        gradient_bytes / median(decode_times) / 1e9, bytes});
  }
  for (const Row& row : rows_out) {
    std::printf(
        "{\"bench\":\"compress\",\"method\":\"%s\",\"rows\":%zu,\"cols\":%zu,\"encode_gb_per_s\":%."
        "3f,"
        "\"decode_gb_per_s\":%.3f,\"message_bytes\":%zu}\n",
        row.method.c_str(), rows, cols, row.encode_gb_per_s, row.decode_gb_per_s,
        row.message_bytes);
  }
  std::printf("\n| method | encode GB/s | decode GB/s | message bytes | dense / message |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const Row& row : rows_out) {
    std::printf("| %s | %.3f | %.3f | %zu | %.1f |\n", row.method.c_str(), row.encode_gb_per_s,
                row.decode_gb_per_s, row.message_bytes,
                gradient_bytes / static_cast<double>(row.message_bytes));
  }
  return 0;
}
