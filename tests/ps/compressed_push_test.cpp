// Compressed dense pushes: the rule that cuts a slice into pieces (partial
// rows at either end, whole rows between), the server's checks of every
// piece (a malformed push is refused naming the worker and changes
// nothing), a compressed push applied like the dense one it encodes, the
// bytes on the wire (top-k 1% under a tenth of the dense push; PowerSGD on
// a matrix split mid-row under 0.3 of it; method none exactly the dense
// wire format).
#include "ps/compressed_push.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;
using testing::RawPeer;

TEST(PsSlicePieces, PartialRowsAtEitherEndWholeRowsBetween) {
  // w [4, 3] (12 floats), b [3], v [2, 2, 2] (8, rows of 4): T = 23.
  const std::vector<DenseSpec> specs = {{"w", {4, 3}}, {"b", {3}}, {"v", {2, 2, 2}}};
  // Per slice of server s, in order: (offset in slice, rows, cols) per piece.
  using Pieces = std::vector<std::tuple<int64_t, size_t, size_t>>;
  auto pieces = [](const ShardPlan& plan, int s) {
    std::vector<Pieces> out;
    for (const ShardSlice& slice : plan.slices(s)) {
      Pieces& slice_out = out.emplace_back();
      int64_t covered = 0;
      for (const SlicePiece& p : slice_pieces(plan, slice)) {
        EXPECT_EQ(p.offset_in_slice, covered);
        EXPECT_EQ(static_cast<size_t>(p.count), p.layout.numel());
        covered += p.count;
        slice_out.emplace_back(p.offset_in_slice, p.layout.rows, p.layout.cols);
      }
      EXPECT_EQ(covered, slice.count);
    }
    return out;
  };
  using Slices = std::vector<Pieces>;
  const ShardPlan one(specs, 1);
  EXPECT_EQ(pieces(one, 0), (Slices{{{0, 4, 3}}, {{0, 1, 3}}, {{0, 2, 4}}}));
  // S = 2: [0, 11) is w's first 3 rows and 2 floats of its last; [11, 23)
  // holds w's last element (within one row: one piece), b and v.
  const ShardPlan two(specs, 2);
  EXPECT_EQ(pieces(two, 0), (Slices{{{0, 3, 3}, {9, 1, 2}}}));
  EXPECT_EQ(pieces(two, 1), (Slices{{{0, 1, 1}}, {{0, 1, 3}}, {{0, 2, 4}}}));
  // S = 4: [0, 5), [5, 11), [11, 17), [17, 23).
  const ShardPlan four(specs, 4);
  // w [0, 5): row 0, then 2 floats of row 1.
  EXPECT_EQ(pieces(four, 0), (Slices{{{0, 1, 3}, {3, 1, 2}}}));
  // w [5, 11) starts and ends mid-row: the last float of row 1, row 2, 2
  // floats of row 3.
  EXPECT_EQ(pieces(four, 1), (Slices{{{0, 1, 1}, {1, 1, 3}, {4, 1, 2}}}));
  // w [11, 12), b, v [0, 2): within one row each.
  EXPECT_EQ(pieces(four, 2), (Slices{{{0, 1, 1}}, {{0, 1, 3}}, {{0, 1, 2}}}));
  // v [2, 8): the end of row 0, then row 1.
  EXPECT_EQ(pieces(four, 3), (Slices{{{0, 1, 2}, {2, 1, 4}}}));
  // Whole rows in the middle of a tensor: w [8, 2] over 2 servers is two
  // matrices of 4 rows; over 3 ([0, 5), [5, 10), [10, 16)) the middle slice
  // is half a row and 2 rows.
  const ShardPlan rows({{"w", {8, 2}}}, 2);
  EXPECT_EQ(pieces(rows, 0), (Slices{{{0, 4, 2}}}));
  EXPECT_EQ(pieces(rows, 1), (Slices{{{0, 4, 2}}}));
  const ShardPlan thirds({{"w", {8, 2}}}, 3);
  EXPECT_EQ(pieces(thirds, 1), (Slices{{{0, 1, 1}, {1, 2, 2}}}));
  // push_layouts(): every piece, server by server.
  const std::vector<compress::TensorLayout> layouts = push_layouts(two);
  ASSERT_EQ(layouts.size(), 5u);
  EXPECT_EQ(layouts[1].cols, 2u);
  EXPECT_EQ(layouts[4].rows, 2u);
  EXPECT_EQ(push_layouts(four).size(), 10u);
}

TEST(PsCompressedPush, DecodeChecksThePieceCountAndEveryDenseLength) {
  const ShardPlan plan({{"w", {4, 3}}, {"b", {3}}}, 1);
  std::vector<PushPiece> pieces(2);
  pieces[0].dense.assign(12, 1.0f);
  pieces[1].dense.assign(3, 2.0f);
  const std::vector<float> grad = decode_push(plan, 0, pieces, 1);
  EXPECT_EQ(grad, (std::vector<float>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2}));
  dtrain::testing::expect_error<DataError>(
      [&] { decode_push(plan, 0, std::span(pieces).first(1), 1); },
      "push from worker 1: 1 pieces; server 0 holds 2 pieces (2 slices); nothing applied");
  pieces[1].dense.pop_back();
  dtrain::testing::expect_error<DataError>(
      [&] { decode_push(plan, 0, pieces, 1); },
      "push from worker 1: piece 1 (tensor 'b' elements [0, 3)) carries 2 floats; expected 3; "
      "nothing applied");
}

TEST(PsCompressedPush, DecodePlacesEachPieceOfASliceCutMidRow) {
  // Server 1 of w [4, 3] over 4 servers holds w [5, 11): pieces [5, 6),
  // [6, 9), [9, 11).
  const ShardPlan plan({{"w", {4, 3}}, {"b", {3}}, {"v", {2, 2, 2}}}, 4);
  std::vector<PushPiece> pieces(3);
  pieces[0].dense = {1};
  pieces[1].dense = {2, 2, 2};
  pieces[2].dense = {3, 3};
  EXPECT_EQ(decode_push(plan, 1, pieces, 2), (std::vector<float>{1, 2, 2, 2, 3, 3}));
  pieces[2].dense.push_back(3);
  dtrain::testing::expect_error<DataError>(
      [&] { decode_push(plan, 1, pieces, 2); },
      "push from worker 2: piece 2 (tensor 'w' elements [9, 11)) carries 3 floats; expected 2; "
      "nothing applied");
  pieces.pop_back();
  dtrain::testing::expect_error<DataError>(
      [&] { decode_push(plan, 1, pieces, 2); },
      "push from worker 2: 2 pieces; server 1 holds 3 pieces (1 slices); nothing applied");
}

// w [64, 32] and b [32]: 2080 floats; over 2 servers w is cut at element
// 1040 (row 32, 16 columns in), so server 0 holds rows 0..31 and half a row
// (pieces 32 x 32, 1 x 16), server 1 the other half row, rows 33..63 and b
// (pieces 1 x 16, 31 x 32, 1 x 32).
StateDict wide_model() {
  Rng rng(7);
  StateDict model;
  model.insert("w", dtrain::testing::normal_tensor({64, 32}, rng));
  model.insert("b", dtrain::testing::normal_tensor({32}, rng));
  return model;
}

std::vector<Tensor> gradient_of(const StateDict& model, uint64_t seed) {
  Rng rng(seed);
  std::vector<Tensor> grads;
  for (const auto& [name, t] : model)
    grads.push_back(dtrain::testing::normal_tensor(t.shape(), rng));
  return grads;
}

std::vector<Tensor> zeros_like(const StateDict& model) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : model) out.push_back(Tensor::zeros(t.shape()));
  return out;
}

std::unique_ptr<Client> compressing_client(PsJob& job, const compress::Options& codec) {
  ClientOptions o;
  o.worker = 0;
  o.num_workers = 1;
  o.server_endpoints = job.endpoints();
  o.timeout = testing::kGenerous;
  o.heartbeat_interval = std::chrono::milliseconds(100);
  o.compression = codec;
  return std::make_unique<Client>(o, job.auth(), job.log().logger());
}

ServerOptions sgd_servers(Consistency consistency) {
  ServerOptions o;
  o.consistency = consistency;
  o.optimizer.type = "sgd";
  o.optimizer.lr = 1.0f;
  return o;
}

TEST(PsCompressedPush, AnFp16PushIsAppliedAsTheDenseGradientItEncodes) {
  PsJob job(2, 1, sgd_servers(Consistency::kSync));
  compress::Options codec;
  codec.method = compress::Method::kFp16;
  codec.min_size = 16;
  auto client = compressing_client(job, codec);
  const StateDict model = wide_model();
  client->init(model, {});
  const std::vector<Tensor> grads = gradient_of(model, 3);
  const PushResult r = client->push(grads, 4, 0.5f, 0, 0.0, 0, 0.0, {true, 0});
  EXPECT_EQ(r.servers_applied, 2);
  std::vector<Tensor> now = zeros_like(model);
  EXPECT_EQ(client->pull(now, 1), 1u);
  for (size_t t = 0; t < now.size(); ++t) {
    const Tensor& before = model.entries()[t].second;
    for (int64_t i = 0; i < before.numel(); ++i) {
      const float expected = before.data()[i] - 0.5f * grads[t].data()[i];
      EXPECT_NEAR(now[t].data()[i], expected, 2e-3f * (1.0f + std::abs(expected))) << t << " " << i;
    }
  }
}

TEST(PsCompressedPush, AMalformedPushIsRefusedNamingTheWorkerAndNothingIsApplied) {
  PsJob job(2, 1, sgd_servers(Consistency::kAsync));
  compress::Options codec;
  codec.method = compress::Method::kTopK;
  codec.density = 0.05;
  codec.min_size = 16;
  auto client = compressing_client(job, codec);
  const StateDict model = wide_model();
  client->init(model, {});
  std::vector<Tensor> before = zeros_like(model);
  client->pull(before);
  const ShardPlan& plan = client->plan();
  ASSERT_EQ(plan.slices(1).size(), 2u);  // the rest of w, then b
  ASSERT_EQ(push_pieces(plan, 1).size(), 3u);

  // A valid push to server 1, as the client would build it (top-k messages
  // for its pieces of w and for b).
  PushCompressor pc(codec, plan);
  const std::vector<Tensor> grads = gradient_of(model, 5);
  const std::vector<PushPiece> good = pc.encode(1, grads, 0, 0);
  ASSERT_EQ(good.size(), 3u);
  ASSERT_TRUE(good[1].compressed);

  // Hand-built faults in the top-k message of piece 1, w's whole rows
  // (docs/compression.md: u8 method, u32 rows, u32 cols | u32 k | k x u32
  // index | k x f32 value).
  const auto count = static_cast<uint32_t>(push_pieces(plan, 1)[1].piece.count);
  ASSERT_EQ(count, 31u * 32u);
  auto put_u32 = [](std::vector<std::byte>& bytes, size_t at, uint32_t value) {
    for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<std::byte>(value >> (8 * i));
  };
  const std::vector<std::byte>& message = good[1].message;
  uint32_t k = 0;
  for (size_t i = 0; i < 4; ++i) k |= std::to_integer<uint32_t>(message[9 + i]) << (8 * i);
  ASSERT_EQ(message.size(), 13 + 8 * size_t(k));
  Message push;
  push.kind = Kind::kPushCompressed;
  push.worker = 0;
  push.samples = 4;
  push.lr = 1.0f;
  RawPeer raw(job.endpoints()[1], job.auth());
  auto refused = [&](std::vector<PushPiece> pieces, uint64_t id, const std::string& what) {
    SCOPED_TRACE(what);
    push.pieces = std::move(pieces);
    push.request_id = id;
    raw.send(push, worker_rank(2, 0), server_rank(1));
    const Message reply = raw.receive();
    EXPECT_EQ(reply.reply_to, Kind::kPushCompressed);
    EXPECT_EQ(reply.status, ReplyStatus::kError);
    EXPECT_EQ(reply.error.rfind("push from worker 0: ", 0), 0u) << reply.error;
    EXPECT_NE(reply.error.find("nothing applied"), std::string::npos) << reply.error;
    return reply.error;
  };
  std::vector<PushPiece> bad = good;
  put_u32(bad[1].message, 13 + 4 * (size_t(k) - 1), count);  // the last index: one past the end
  const std::string out_of_range = refused(bad, 1000, "index out of range");
  EXPECT_NE(out_of_range.find("piece 1 (tensor 'w' elements [1056, 2048))"), std::string::npos)
      << out_of_range;
  bad = good;
  put_u32(bad[1].message, 9, k + 1);  // k larger than the message holds
  refused(bad, 1001, "wrong k");
  // A wrong count: a dense piece one float short, and a compressed piece
  // cut short.
  bad = good;
  bad[2].compressed = false;
  bad[2].dense.assign(31, 0.5f);
  EXPECT_EQ(refused(bad, 1002, "dense piece too short"),
            "push from worker 0: piece 2 (tensor 'b' elements [0, 32)) carries 31 floats; "
            "expected 32; nothing applied");
  bad = good;
  bad[1].message.resize(bad[1].message.size() - 4);
  refused(bad, 1003, "compressed piece cut short");
  bad = good;
  bad.pop_back();
  EXPECT_EQ(refused(bad, 1004, "a piece missing"),
            "push from worker 0: 2 pieces; server 1 holds 3 pieces (2 slices); nothing applied");
  // One piece per slice, as before the cut into rows: refused.
  bad = good;
  bad.erase(bad.begin());
  bad[0] = good[0];
  bad[0].compressed = false;
  bad[0].dense.assign(1008, 0.5f);
  EXPECT_EQ(refused(bad, 1005, "one piece per slice"),
            "push from worker 0: 2 pieces; server 1 holds 3 pieces (2 slices); nothing applied");

  std::vector<Tensor> after = zeros_like(model);
  client->pull(after);
  for (size_t t = 0; t < before.size(); ++t) EXPECT_EQ(after[t].to_vector(), before[t].to_vector());
  EXPECT_EQ(client->stats(1).requests_rejected, 6u);
  EXPECT_EQ(client->stats(1).pushes_applied, 0u);
  EXPECT_TRUE(job.log().contains("rejected compressed push from worker 0: push from worker 0"));
}

TEST(PsCompressedPush, TopKOnePercentSendsUnderATenthOfTheDenseBytes) {
  PsJob job(2, 1, sgd_servers(Consistency::kAsync));
  compress::Options codec;
  codec.method = compress::Method::kTopK;
  codec.density = 0.01;
  codec.min_size = 16;
  auto client = compressing_client(job, codec);
  Rng rng(9);
  StateDict model;
  model.insert("w", dtrain::testing::normal_tensor({256, 256}, rng));
  client->init(model, {});
  const std::vector<Tensor> grads = gradient_of(model, 4);
  const uint64_t start = client->bytes_sent();
  client->push(grads, 4, 0.1f, 0);
  const uint64_t dense = client->bytes_sent() - start;
  client->push(grads, 4, 0.1f, 0, 0.0, 0, 0.0, {true, 0});
  const uint64_t compressed = client->bytes_sent() - start - dense;
  EXPECT_LT(compressed * 10, dense) << compressed << " vs " << dense;
}

TEST(PsCompressedPush, PowerSgdCompressesAMatrixSplitMidRowBetweenServers) {
  // fc1.weight [256, 64], fc1.bias [256], fc2.weight [10, 256], fc2.bias
  // [10]: T = 19210, cut at 9605 = row 150 + 5 floats of fc1.weight. Each
  // half is a rank-2 matrix (150 x 64, 105 x 64) and a partial row; only
  // the partial rows, the biases (330 floats) and nothing else go dense.
  PsJob job(2, 1, sgd_servers(Consistency::kAsync));
  compress::Options codec;
  codec.method = compress::Method::kPowerSgd;
  codec.rank = 2;
  codec.min_size = 0;
  auto client = compressing_client(job, codec);
  Rng rng(11);
  StateDict model;
  model.insert("fc1.weight", dtrain::testing::normal_tensor({256, 64}, rng));
  model.insert("fc1.bias", dtrain::testing::normal_tensor({256}, rng));
  model.insert("fc2.weight", dtrain::testing::normal_tensor({10, 256}, rng));
  model.insert("fc2.bias", dtrain::testing::normal_tensor({10}, rng));
  client->init(model, {});
  const ShardPlan& plan = client->plan();
  ASSERT_EQ(plan.slices(0).size(), 1u);
  ASSERT_EQ(push_pieces(plan, 0).size(), 2u);
  ASSERT_EQ(push_pieces(plan, 1).size(), 5u);
  const std::vector<Tensor> grads = gradient_of(model, 6);
  const uint64_t start = client->bytes_sent();
  client->push(grads, 4, 0.1f, 0);
  const uint64_t dense = client->bytes_sent() - start;
  const PushResult r = client->push(grads, 4, 0.1f, 0, 0.0, 0, 0.0, {true, 0});
  EXPECT_EQ(r.servers_applied, 2);
  const uint64_t compressed = client->bytes_sent() - start - dense;
  EXPECT_LT(static_cast<double>(compressed), 0.3 * static_cast<double>(dense))
      << compressed << " vs " << dense;
}

TEST(PsCompressedPush, WithoutCompressionThePushIsTheDenseWireFormat) {
  // Per server: 88 header + 24 prefix + 36 figures + u64 count + 4 per float
  // + 5 (no rows, no pull).
  PsJob job(2, 1, sgd_servers(Consistency::kAsync));
  auto client = job.client(0);
  const StateDict model = wide_model();
  client->init(model, {});
  const uint64_t start = client->bytes_sent();
  client->push(gradient_of(model, 1), 4, 0.1f, 0);
  const uint64_t floats = 64 * 32 + 32;
  EXPECT_EQ(client->bytes_sent() - start, 2 * (88 + 24 + 36 + 8 + 5) + 4 * floats);
  dtrain::testing::expect_error<UsageError>(
      [&] {
        client->push(gradient_of(model, 1), 4, 0.1f, 0, 0.0, 0, 0.0, {true, 0});
      },
      "ps compressed push (worker 0): no compressor: ClientOptions::compression has method none");
}

}  // namespace
}  // namespace dtrain::ps
