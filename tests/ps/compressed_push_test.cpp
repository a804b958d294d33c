// Compressed dense pushes: the slice layout rule, the server's checks of
// every piece (a malformed push is refused naming the worker and changes
// nothing), a compressed push applied like the dense one it encodes, the
// bytes on the wire (top-k 1% under a tenth of the dense push; method none
// exactly the dense wire format).
#include "ps/compressed_push.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/byte_codec.h"
#include "core/error.h"
#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;
using testing::RawPeer;

TEST(PsSliceLayout, WholeRowsAreMatricesEverythingElseOneRow) {
  // w [4, 3] (12 floats), b [3], v [2, 2, 2] (8): T = 23.
  const std::vector<DenseSpec> specs = {{"w", {4, 3}}, {"b", {3}}, {"v", {2, 2, 2}}};
  auto layouts = [](const ShardPlan& plan, int s) {
    std::vector<std::pair<size_t, size_t>> out;
    for (const ShardSlice& slice : plan.slices(s)) {
      const compress::TensorLayout l = slice_layout(plan, slice);
      out.emplace_back(l.rows, l.cols);
    }
    return out;
  };
  using Rows = std::vector<std::pair<size_t, size_t>>;
  const ShardPlan one(specs, 1);
  EXPECT_EQ(layouts(one, 0), (Rows{{4, 3}, {1, 3}, {2, 4}}));
  // S = 2: [0, 11) cuts w inside its last row; [11, 23) holds w's last
  // element, b and v.
  const ShardPlan two(specs, 2);
  EXPECT_EQ(layouts(two, 0), (Rows{{1, 11}}));
  EXPECT_EQ(layouts(two, 1), (Rows{{1, 1}, {1, 3}, {2, 4}}));
  // S = 4: [0, 5), [5, 11), [11, 17), [17, 23): no piece of w or v is
  // whole rows (v [2, 8) starts inside its first row of 4).
  const ShardPlan four(specs, 4);
  EXPECT_EQ(layouts(four, 0), (Rows{{1, 5}}));
  EXPECT_EQ(layouts(four, 1), (Rows{{1, 6}}));
  EXPECT_EQ(layouts(four, 2), (Rows{{1, 1}, {1, 3}, {1, 2}}));
  EXPECT_EQ(layouts(four, 3), (Rows{{1, 6}}));
  // Whole rows in the middle of a tensor: w [8, 2] over 2 servers.
  const ShardPlan rows({{"w", {8, 2}}}, 2);
  EXPECT_EQ(layouts(rows, 1), (Rows{{4, 2}}));
  EXPECT_EQ(push_layouts(two).size(), 4u);
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
      "push from worker 1: 1 pieces; server 0 holds 2 slices; nothing applied");
  pieces[1].dense.pop_back();
  dtrain::testing::expect_error<DataError>(
      [&] { decode_push(plan, 0, pieces, 1); },
      "push from worker 1: piece 1 (tensor 'b' elements [0, 3)) carries 2 floats; expected 3; "
      "nothing applied");
}

// w [64, 32] and b [32]: 2080 floats; over 2 servers w is cut at element
// 1040 (row 32, 16 columns in), so server 0 holds rows 0..31 and half a row.
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

  // A valid push to server 1, as the client would build it (top-k messages
  // for its slice of w and for b).
  PushCompressor pc(codec, plan);
  const std::vector<Tensor> grads = gradient_of(model, 5);
  const std::vector<PushPiece> good = pc.encode(1, grads, 0, 0);
  ASSERT_TRUE(good[0].compressed);

  // Hand-built faults in the top-k message of piece 0 (docs/compression.md:
  // u8 method, u32 rows, u32 cols | u32 k | k x u32 index | k x f32 value).
  const auto count = static_cast<uint32_t>(plan.slices(1)[0].count);
  auto put_u32 = [](std::vector<std::byte>& bytes, size_t at, uint32_t value) {
    for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<std::byte>(value >> (8 * i));
  };
  const std::vector<std::byte>& message = good[0].message;
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
  put_u32(bad[0].message, 13 + 4 * (size_t(k) - 1), count);  // the last index: one past the end
  const std::string out_of_range = refused(bad, 1000, "index out of range");
  EXPECT_NE(out_of_range.find("piece 0 (tensor 'w' elements [1040, 2048))"), std::string::npos)
      << out_of_range;
  bad = good;
  put_u32(bad[0].message, 9, k + 1);  // k larger than the message holds
  refused(bad, 1001, "wrong k");
  // A wrong count: a dense piece one float short, and a compressed piece
  // cut short.
  bad = good;
  bad[1].compressed = false;
  bad[1].dense.assign(31, 0.5f);
  EXPECT_EQ(refused(bad, 1002, "dense piece too short"),
            "push from worker 0: piece 1 (tensor 'b' elements [0, 32)) carries 31 floats; "
            "expected 32; nothing applied");
  bad = good;
  bad[0].message.resize(bad[0].message.size() - 4);
  refused(bad, 1003, "compressed piece cut short");
  bad = good;
  bad.pop_back();
  EXPECT_EQ(refused(bad, 1004, "a piece missing"),
            "push from worker 0: 1 pieces; server 1 holds 2 slices; nothing applied");

  std::vector<Tensor> after = zeros_like(model);
  client->pull(after);
  for (size_t t = 0; t < before.size(); ++t) EXPECT_EQ(after[t].to_vector(), before[t].to_vector());
  EXPECT_EQ(client->stats(1).requests_rejected, 5u);
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

TEST(PsCompressedPush, WithoutCompressionThePushIsTheDenseWireFormat) {
  // Per server: 88 header + 24 prefix + 36 figures + u64 count + 4 per float.
  PsJob job(2, 1, sgd_servers(Consistency::kAsync));
  auto client = job.client(0);
  const StateDict model = wide_model();
  client->init(model, {});
  const uint64_t start = client->bytes_sent();
  client->push(gradient_of(model, 1), 4, 0.1f, 0);
  const uint64_t floats = 64 * 32 + 32;
  EXPECT_EQ(client->bytes_sent() - start, 2 * (88 + 24 + 36 + 8) + 4 * floats);
  dtrain::testing::expect_error<UsageError>(
      [&] {
        client->push(gradient_of(model, 1), 4, 0.1f, 0, 0.0, 0, 0.0, {true, 0});
      },
      "ps compressed push (worker 0): no compressor: ClientOptions::compression has method none");
}

}  // namespace
}  // namespace dtrain::ps
