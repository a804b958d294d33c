// The per-frame MAC of wire version 2 (comm/wire/auth.h): AES-256-GCM and
// Poly1305 frames verify across processes of either kind, any changed bit of
// header, payload, nonce or tag is refused, nonces never repeat, a process
// without AES-GCM falls back to Poly1305 and names what it cannot check, a
// wrong key is refused naming the sender, and a FramedSocket refuses a
// replayed or reordered frame in each direction.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "comm/wire/auth.h"
#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "core/error.h"
#include "testing/junk_frames.h"

namespace dtrain::comm::wire {
namespace {

using namespace std::chrono_literals;

constexpr FrameMacOptions kNoGcm{FrameMac::kAuto, false};

std::vector<std::byte> pattern(size_t n) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(i * 31 + 7);
  return out;
}

std::vector<std::byte> frame_of(const JobAuth& auth, const std::vector<std::byte>& payload,
                                uint32_t sender = 2, bool with_crc = true) {
  FrameHeader h;
  h.sender = sender;
  h.receiver = 1;
  h.job_id = auth.job_id();
  h.sequence = 5;
  const HeaderBytes head = encode_header(h, payload, auth, with_crc);
  std::vector<std::byte> frame(head.size() + payload.size());
  std::copy(head.begin(), head.end(), frame.begin());
  std::copy(payload.begin(), payload.end(), frame.begin() + kHeaderBytes);
  return frame;
}

FrameLimits limits_for(const JobAuth& auth) { return {auth.job_id(), 4, 1, 1 << 24}; }

void expect_refused(const std::vector<std::byte>& frame, const JobAuth& auth,
                    const std::string& expected) {
  try {
    decode_frame(frame, limits_for(auth), auth);
    ADD_FAILURE() << "no error, expected: " << expected;
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

// The senders of both algorithms (GCM only where this CPU has it).
std::vector<JobAuth> senders() {
  std::vector<JobAuth> out{JobAuth("mac-job", "s3cret", false, {FrameMac::kPoly1305, {}})};
  const JobAuth probe("mac-job", "s3cret");
  if (probe.frame_mac() == FrameMac::kAesGcm) out.push_back(probe);
  return out;
}

TEST(FrameMac, AutoPicksGcmWhereAvailableElsePoly1305) {
  EXPECT_EQ(choose_frame_mac(true), FrameMac::kAesGcm);
  EXPECT_EQ(choose_frame_mac(false), FrameMac::kPoly1305);
  EXPECT_EQ(JobAuth("j", "s", false, kNoGcm).frame_mac(), FrameMac::kPoly1305);
  EXPECT_THROW(JobAuth("j", "s", false, {FrameMac::kAesGcm, false}), ConfigError);
}

TEST(FrameMac, EitherAlgorithmVerifiesAtEveryReceiverThatCanCompute) {
  const JobAuth gcm_receiver("mac-job", "s3cret");
  const JobAuth poly_receiver("mac-job", "s3cret", false, kNoGcm);
  for (const JobAuth& sender : senders()) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{4097}}) {
      const auto frame = frame_of(sender, pattern(n));
      EXPECT_NO_THROW(decode_frame(frame, limits_for(gcm_receiver), gcm_receiver));
      if (sender.frame_mac() == FrameMac::kPoly1305) {
        EXPECT_NO_THROW(decode_frame(frame, limits_for(poly_receiver), poly_receiver));
      }
    }
  }
}

TEST(FrameMac, AHeaderOverTwoPartsIsTheHeaderOfTheJoinedPayload) {
  FrameHeader h;
  h.sender = 2;
  h.receiver = 1;
  h.sequence = 5;
  std::vector<JobAuth> auths = senders();
  auths.emplace_back("mac-job", "");  // no secret: the CRC alone
  for (const JobAuth& auth : auths) {
    h.job_id = auth.job_id();
    for (const size_t n : {size_t{40}, size_t{4097}}) {  // libsodium's GCM, GcmTagger
      const auto payload = pattern(n);
      const std::span<const std::byte> all(payload);
      const bool crc = !auth.enabled();  // with a secret the MAC alone covers the payload
      const HeaderBytes head = encode_header(h, all.first(32), all.subspan(32), auth, crc);
      std::vector<std::byte> frame(head.begin(), head.end());
      frame.insert(frame.end(), payload.begin(), payload.end());
      EXPECT_NO_THROW(decode_frame(frame, limits_for(auth), auth)) << n;
      if (!auth.enabled()) {
        EXPECT_EQ(head, encode_header(h, payload, auth, true));
      }
      frame.back() ^= std::byte{2};
      expect_refused(frame, auth, auth.enabled() ? "MAC mismatch" : "CRC-32C");
    }
  }
}

// check_payload() through a PayloadCheck fed `payload` in pieces of `piece`
// bytes; the DataError's message, or "" when it passed.
std::string checked_in_pieces(const std::vector<std::byte>& frame, const JobAuth& auth,
                              size_t piece, size_t drop_tail = 0) {
  const auto header_bytes = std::span<const std::byte>(frame).first<kHeaderBytes>();
  const FrameHeader h = decode_header(header_bytes, limits_for(auth), auth);
  std::optional<PayloadCheck> check = PayloadCheck::begin(h, header_bytes, auth);
  if (!check) return "not streamable";
  const std::span<const std::byte> payload = std::span<const std::byte>(frame).subspan(
      kHeaderBytes, frame.size() - kHeaderBytes - drop_tail);
  for (size_t at = 0; at < payload.size(); at += piece) {
    check->update(payload.subspan(at, std::min(piece, payload.size() - at)));
  }
  try {
    check->finish();
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

// frame_of(), with the CRC only where there is no MAC (as the transport
// sends), so that a changed payload byte is the MAC's to catch.
std::vector<std::byte> mac_or_crc_frame(const JobAuth& auth,
                                        const std::vector<std::byte>& payload) {
  return frame_of(auth, payload, 2, !auth.enabled());
}

TEST(FrameMac, APayloadCheckedInPiecesPassesAndFailsAsAWholeOne) {
  std::vector<JobAuth> auths = senders();
  auths.emplace_back("mac-job", "");  // no secret: the CRC alone
  for (const JobAuth& auth : auths) {
    if (auth.enabled() && auth.frame_mac() == FrameMac::kAesGcm && !GcmTagger::available()) {
      // libsodium's AES-GCM takes the payload whole: begin() says so.
      EXPECT_EQ(checked_in_pieces(frame_of(auth, pattern(40)), auth, 16), "not streamable");
      continue;
    }
    for (const size_t n : {size_t{0}, size_t{40}, size_t{4097}, size_t{70000}}) {
      auto frame = mac_or_crc_frame(auth, pattern(n));
      for (const size_t piece : {size_t{1}, size_t{17}, size_t{16384}}) {
        EXPECT_EQ(checked_in_pieces(frame, auth, piece), "") << n << " B by " << piece;
      }
      if (n == 0) continue;
      const std::string refused = auth.enabled() ? "MAC mismatch" : "CRC-32C";
      frame[kHeaderBytes + n / 2] ^= std::byte{0x10};
      for (const size_t piece : {size_t{1}, size_t{16384}}) {
        EXPECT_NE(checked_in_pieces(frame, auth, piece).find(refused), std::string::npos)
            << n << " B by " << piece;
      }
      frame[kHeaderBytes + n / 2] ^= std::byte{0x10};
      EXPECT_NE(checked_in_pieces(frame, auth, 16384, 1).find("bytes but the header says"),
                std::string::npos);
    }
  }
  // A forger's frame (another secret) is refused the same way.
  const JobAuth receiver("mac-job", "s3cret");
  const JobAuth forger("mac-job", "guessed", false, {receiver.frame_mac(), {}});
  EXPECT_NE(checked_in_pieces(mac_or_crc_frame(forger, pattern(5000)), receiver, 4096)
                .find("MAC mismatch"),
            std::string::npos);
}

TEST(FrameMac, ATamperedHeaderPayloadNonceOrTagIsRefused) {
  for (const JobAuth& sender : senders()) {
    const auto frame = frame_of(sender, pattern(300));
    // sequence, tag field, nonce source, nonce counter, tag, payload.
    for (size_t i :
         {size_t{24}, size_t{33}, size_t{57}, size_t{63}, size_t{80}, kHeaderBytes + 299}) {
      auto tampered = frame;
      tampered[i] ^= std::byte{0x10};
      expect_refused(tampered, sender, i < kHeaderBytes ? "MAC mismatch" : "CRC-32C");
    }
    // Without a CRC the payload is the MAC's alone (from 1 KiB up, GCM
    // frames are tagged and checked by GcmTagger where the CPU has it).
    FrameHeader h;
    h.sender = 2;
    h.receiver = 1;
    h.job_id = sender.job_id();
    for (const size_t n : {size_t{64}, size_t{4097}}) {
      const auto payload = pattern(n);
      const HeaderBytes head = encode_header(h, payload, sender, false);
      std::vector<std::byte> plain(head.begin(), head.end());
      plain.insert(plain.end(), payload.begin(), payload.end());
      EXPECT_NO_THROW(decode_frame(plain, limits_for(sender), sender)) << n;
      for (const size_t i : {size_t{24}, kHeaderBytes + 3, kHeaderBytes + n - 1}) {
        auto tampered = plain;
        tampered[i] ^= std::byte{1};
        expect_refused(tampered, sender, "MAC mismatch");
      }
    }
    // An algorithm byte that names nothing, or non-zero padding after it.
    auto unknown = frame;
    unknown[56 + 12] = std::byte{9};
    expect_refused(unknown, sender, "unknown MAC algorithm 9");
    auto padding = frame;
    padding[56 + 14] = std::byte{1};
    expect_refused(padding, sender, "unknown MAC algorithm");
  }
}

TEST(FrameMac, AWrongKeyIsRefusedNamingTheSender) {
  const JobAuth other("mac-job", "another secret");
  for (const JobAuth& sender : senders()) {
    expect_refused(frame_of(sender, pattern(10), 3), other,
                   "authentication failed for a frame from rank 3: MAC mismatch (wrong job "
                   "secret or tampered frame)");
  }
}

TEST(FrameMac, AGcmFrameAtAProcessWithoutGcmNamesTheReason) {
  const JobAuth gcm("mac-job", "s3cret");
  if (gcm.frame_mac() != FrameMac::kAesGcm) GTEST_SKIP() << "no AES-GCM on this CPU";
  const JobAuth no_gcm("mac-job", "s3cret", false, kNoGcm);
  expect_refused(frame_of(gcm, pattern(10)), no_gcm,
                 "authenticated with AES-256-GCM, which this CPU cannot check");
}

TEST(FrameMac, NoncesGrowByOnePerFrameAndCopiesShareTheCounter) {
  for (const JobAuth& auth : senders()) {
    const std::vector<std::byte> header(88);
    const JobAuth copy = auth;  // NOLINT(performance-unnecessary-copy-initialization)
    const MacNonce first = mac_nonce(auth.mac(header, {}));
    const MacNonce second = mac_nonce(copy.mac(header, {}));
    const MacNonce third = mac_nonce(auth.mac(header, {}));
    EXPECT_EQ(second.source, first.source);
    EXPECT_EQ(second.counter, first.counter + 1);
    EXPECT_EQ(third.counter, first.counter + 2);
    EXPECT_LT(first.counter, uint64_t{1} << 63);
    // Two MACs of the same bytes differ (fresh nonces) and both verify.
    const Mac a = auth.mac(header, {});
    const Mac b = auth.mac(header, {});
    EXPECT_NE(a, b);
    EXPECT_TRUE(copy.verify(header, {}, a));
    EXPECT_TRUE(copy.verify(header, {}, b));
  }
}

TEST(FrameMac, AVersionOneFrameIsRefusedWithTheReason) {
  const JobAuth auth("mac-job", "");
  auto frame = frame_of(auth, pattern(4));
  frame[4] = std::byte{1};
  expect_refused(frame, auth,
                 "wire version 1, this build speaks version 2 (a peer running another dtrain "
                 "release: run one release on every host)");
}

// A ROUTER (rank 0) and a DEALER (rank 1) of one job; `raw` is a second
// DEALER that sends whatever bytes a test gives it.
struct Pair {
  explicit Pair(const JobAuth& auth) {
    FramedSocketOptions o;
    o.name = "mac router";
    o.limits = FrameLimits{auth.job_id(), 2, 0, 1 << 20};
    o.on_reject = [this](const RejectedFrame& f) { reasons.emplace_back(f.reason); };
    router = std::make_unique<FramedSocket>(context, FramedSocket::Role::kRouter,
                                            "tcp://127.0.0.1:*", std::move(o), auth, log.logger());
    FramedSocketOptions d;
    d.name = "mac dealer";
    d.rank = 1;
    d.limits = FrameLimits{auth.job_id(), 2, 1, 1 << 20};
    d.on_reject = [this](const RejectedFrame& f) { dealer_reasons.emplace_back(f.reason); };
    dealer = std::make_unique<FramedSocket>(context, FramedSocket::Role::kDealer,
                                            router->endpoint(), std::move(d), auth, Logger::null());
    raw.set(zmq::sockopt::linger, 0);
    raw.connect(router->endpoint());
  }
  void send_raw(const std::vector<std::byte>& head, const std::vector<std::byte>& payload) {
    raw.send(zmq::const_buffer(head.data(), head.size()), zmq::send_flags::sndmore);
    raw.send(zmq::const_buffer(payload.data(), payload.size()), zmq::send_flags::none);
  }
  zmq::context_t context{1};
  dtrain::testing::LineLog log;
  std::vector<std::string> reasons;
  std::vector<std::string> dealer_reasons;
  std::unique_ptr<FramedSocket> router;
  std::unique_ptr<FramedSocket> dealer;
  zmq::socket_t raw{context, zmq::socket_type::dealer};
};

std::vector<std::byte> head_of(const JobAuth& auth, const std::vector<std::byte>& payload,
                               uint64_t tag) {
  FrameHeader h;
  h.sender = 1;
  h.receiver = 0;
  h.job_id = auth.job_id();
  h.tag = tag;
  const HeaderBytes head = encode_header(h, payload, auth, true);
  return {head.begin(), head.end()};
}

TEST(FrameMac, AFramedSocketRefusesAReplayedOrReorderedFrame) {
  const JobAuth auth("mac-replay", "s3cret");
  Pair pair(auth);
  const auto payload = pattern(32);
  const auto first = head_of(auth, payload, 1);
  const auto second = head_of(auth, payload, 2);
  pair.send_raw(first, payload);
  pair.send_raw(first, payload);   // replayed
  pair.send_raw(second, payload);  // accepted
  pair.send_raw(first, payload);   // older than the last accepted: reordered
  pair.send_raw(head_of(auth, payload, 3), payload);
  std::vector<uint64_t> tags;
  while (tags.size() < 3) {
    auto frame = pair.router->receive(Deadline::after(20s));
    ASSERT_TRUE(frame.has_value());
    tags.push_back(frame->header.tag);
  }
  EXPECT_EQ(tags, (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_EQ(pair.reasons.size(), 2u);
  const MacNonce n1 = mac_nonce(std::span(first).subspan<56, kMacBytes>());
  EXPECT_EQ(pair.reasons[0],
            fmt::format("wire frame rejected: a replayed or reordered frame from rank 1 (nonce "
                        "counter {}, the last accepted was {})",
                        n1.counter, n1.counter));
  EXPECT_NE(pair.reasons[1].find("a replayed or reordered frame from rank 1"), std::string::npos);
  EXPECT_EQ(pair.log.count("mac router: dropped an inbound frame"), 2u);
}

TEST(FrameMac, EachDirectionAndEachSenderHasItsOwnCounter) {
  const JobAuth auth("mac-directions", "s3cret");
  Pair pair(auth);
  // The raw DEALER's frames (another process's JobAuth) and the framed
  // DEALER's are counted apart; so are the router's replies.
  const JobAuth other_process("mac-directions", "s3cret");
  const auto payload = pattern(8);
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(pair.dealer->send({}, FrameHeader{.receiver = 0, .tag = 10 + i}, payload));
    pair.send_raw(head_of(other_process, payload, 20 + i), payload);
  }
  std::string dealer_identity;
  for (int received = 0; received < 6; ++received) {
    auto frame = pair.router->receive(Deadline::after(20s));
    ASSERT_TRUE(frame.has_value());
    if (frame->header.tag < 20) dealer_identity = frame->identity;
  }
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(pair.router->send(dealer_identity, FrameHeader{.receiver = 1, .tag = i}, payload));
  }
  for (uint64_t i = 0; i < 3; ++i) {
    auto reply = pair.dealer->receive(Deadline::after(20s));
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->header.tag, i);
  }
  EXPECT_TRUE(pair.reasons.empty()) << pair.reasons.front();
  EXPECT_TRUE(pair.dealer_reasons.empty()) << pair.dealer_reasons.front();
}

}  // namespace
}  // namespace dtrain::comm::wire
