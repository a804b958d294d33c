// The wire format: round trips, every corruption with its exact error, and a
// replay of the fuzzing corpus (fuzz/corpus/wire) through the decoder.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <vector>

#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "comm/wire/wire.h"
#include "core/error.h"
#include "core/rng.h"

namespace dtrain::comm::wire {
namespace {

std::vector<std::byte> pattern(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng.next_u64());
  return out;
}

FrameHeader sample_header(const JobAuth& auth) {
  FrameHeader h;
  h.type = MessageType::kData;
  h.sender = 2;
  h.receiver = 1;
  h.job_id = auth.job_id();
  h.sequence = 0x0102030405060708ull;
  h.tag = 0xDEADBEEFCAFEull;
  return h;
}

std::vector<std::byte> frame_of(const HeaderBytes& header, std::span<const std::byte> payload) {
  std::vector<std::byte> out(header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

FrameLimits limits_for(const JobAuth& auth) { return FrameLimits{auth.job_id(), 4, 1, 1 << 20}; }

// Asserts that `f` throws DataError whose message contains `expected`.
void expect_data_error(const std::function<void()>& f, const std::string& expected) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing \"" << expected << "\"";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << expected;
  }
}

TEST(WireFormat, RoundTripWithoutSecret) {
  const JobAuth auth("job-a", "");
  for (size_t n : {size_t{0}, size_t{1}, size_t{87}, size_t{4096}, size_t{100003}}) {
    const auto payload = pattern(n, n);
    const auto header = encode_header(sample_header(auth), payload, auth, true);
    ASSERT_EQ(header.size(), kHeaderBytes);
    const auto frame = frame_of(header, payload);
    const FrameHeader h = decode_frame(frame, limits_for(auth), auth);
    EXPECT_EQ(h.type, MessageType::kData);
    EXPECT_EQ(h.flags, kFlagCrc);
    EXPECT_EQ(h.sender, 2u);
    EXPECT_EQ(h.receiver, 1u);
    EXPECT_EQ(h.job_id, auth.job_id());
    EXPECT_EQ(h.sequence, 0x0102030405060708ull);
    EXPECT_EQ(h.tag, 0xDEADBEEFCAFEull);
    EXPECT_EQ(h.payload_bytes, n);
  }
}

TEST(WireFormat, RoundTripWithSecretAndWithoutCrc) {
  const JobAuth auth("job-a", "s3cret");
  const auto payload = pattern(999, 7);
  const auto frame = frame_of(encode_header(sample_header(auth), payload, auth, false), payload);
  const FrameHeader h = decode_frame(frame, limits_for(auth), auth);
  EXPECT_EQ(h.flags, kFlagMac);
  EXPECT_EQ(h.payload_crc, 0u);
}

// check_payload of a payload read into two buffers (a tcp lane's receiver
// reading into the caller's head and body): every split of a valid payload
// passes, with the MAC (below and above GcmTagger's threshold) and with the
// CRC; one flipped byte on either side of the split fails.
TEST(WireFormat, PayloadInTwoPartsIsCheckedAsOne) {
  for (const char* secret : {"", "s3cret"}) {
    const JobAuth auth("job-a", secret);
    const std::string what = *secret != '\0' ? "authentication failed" : "CRC-32C";
    for (const size_t n : {size_t{0}, size_t{40}, size_t{5000}}) {
      auto payload = pattern(n, n + 3);
      const auto header = encode_header(sample_header(auth), payload, auth, *secret == '\0');
      const FrameHeader h = decode_header(header, limits_for(auth), auth);
      for (const size_t split : {size_t{0}, size_t{1}, size_t{32}, n}) {
        const size_t at = std::min(split, n);
        const std::span<const std::byte> all(payload);
        EXPECT_NO_THROW(check_payload(h, header, all.first(at), all.subspan(at), auth))
            << "secret '" << secret << "' size " << n << " split " << at;
        if (n == 0) continue;
        for (const size_t flip : {at > 0 ? at - 1 : at, at < n ? at : at - 1}) {
          payload[flip] ^= std::byte{0x20};
          expect_data_error([&] { check_payload(h, header, all.first(at), all.subspan(at), auth); },
                            what);
          payload[flip] ^= std::byte{0x20};
        }
      }
      if (n > 0) {
        expect_data_error(
            [&] {
              check_payload(h, header, std::span<const std::byte>(payload).first(n / 2), {}, auth);
            },
            "payload is");
      }
    }
  }
}

TEST(WireFormat, LayoutIsLittleEndianAtDocumentedOffsets) {
  const JobAuth auth("job-a", "");
  const std::vector<std::byte> payload{std::byte{0xAB}};
  const auto b = encode_header(sample_header(auth), payload, auth, true);
  auto u8 = [&](size_t i) { return std::to_integer<unsigned>(b[i]); };
  EXPECT_EQ(u8(0), 'D');
  EXPECT_EQ(u8(1), 'T');
  EXPECT_EQ(u8(2), 'R');
  EXPECT_EQ(u8(3), 'N');
  EXPECT_EQ(u8(4), kVersion);
  EXPECT_EQ(u8(5), 1u);        // kData
  EXPECT_EQ(u8(6), kFlagCrc);  // flags
  EXPECT_EQ(u8(8), 2u);        // sender
  EXPECT_EQ(u8(12), 1u);       // receiver
  EXPECT_EQ(u8(24), 0x08u);    // sequence, low byte first
  EXPECT_EQ(u8(31), 0x01u);
  EXPECT_EQ(u8(32), 0xFEu);  // tag
  EXPECT_EQ(u8(40), 1u);     // payload bytes
  for (size_t i = 56; i < kHeaderBytes; ++i) EXPECT_EQ(u8(i), 0u) << "MAC byte " << i;
}

TEST(WireFormat, JobIdDependsOnJobNameOnly) {
  EXPECT_EQ(JobAuth("a", "x").job_id(), JobAuth("a", "y").job_id());
  EXPECT_EQ(JobAuth("a", "").job_id(), job_id_of("a"));
  EXPECT_NE(job_id_of("a"), job_id_of("b"));
}

class WireCorruption : public ::testing::Test {
 protected:
  JobAuth auth_{"job-a", ""};
  std::vector<std::byte> payload_ = pattern(64, 3);
  HeaderBytes header_ = encode_header(sample_header(auth_), payload_, auth_, true);

  void expect_header_error(const std::function<void(HeaderBytes&)>& corrupt,
                           const std::string& expected, const JobAuth* auth = nullptr) {
    HeaderBytes h = header_;
    corrupt(h);
    const JobAuth& a = auth ? *auth : auth_;
    expect_data_error([&] { decode_frame(frame_of(h, payload_), limits_for(auth_), a); }, expected);
  }
};

TEST_F(WireCorruption, EveryHeaderFieldIsChecked) {
  expect_header_error([](HeaderBytes& h) { h[0] = std::byte{'X'}; },
                      "bad magic 0x4e525458, expected 0x4e525444");
  expect_header_error([](HeaderBytes& h) { h[4] = std::byte{3}; },
                      "wire version 3, this build speaks version 2");
  expect_header_error([](HeaderBytes& h) { h[5] = std::byte{99}; }, "unknown message type 99");
  expect_header_error([](HeaderBytes& h) { h[6] = std::byte{0x81}; }, "unknown flag bits 0x80");
  expect_header_error([](HeaderBytes& h) { h[7] = std::byte{1}; },
                      "reserved bytes are 0x01 and 0x00000000, expected zero");
  expect_header_error([](HeaderBytes& h) { h[53] = std::byte{1}; },
                      "reserved bytes are 0x00 and 0x00000100, expected zero");
  expect_header_error([](HeaderBytes& h) { h[16] ^= std::byte{1}; }, "does not match this job's");
  expect_header_error([](HeaderBytes& h) { h[8] = std::byte{4}; },
                      "sender rank 4 is out of range for world size 4");
  expect_header_error([](HeaderBytes& h) { h[12] = std::byte{3}; },
                      "frame addressed to rank 3, this is rank 1");
  expect_header_error([](HeaderBytes& h) { h[5] = std::byte{17}; },
                      "table frame from rank 2, only the coordinator sends it");
  expect_header_error([](HeaderBytes& h) { h[6] = std::byte{0}; }, "CRC field is 0x");
  expect_header_error([](HeaderBytes& h) { h[60] = std::byte{1}; },
                      "MAC field is not zero but the MAC flag is clear");
}

TEST_F(WireCorruption, OversizedLengthIsRefusedBeforeAnyAllocation) {
  expect_header_error(
      [](HeaderBytes& h) {
        for (size_t i = 40; i < 48; ++i) h[i] = std::byte{0xFF};
      },
      "payload of 18446744073709551615 bytes exceeds the maximum of 1048576 bytes");
}

TEST_F(WireCorruption, PayloadLengthCrcAndTruncation) {
  auto frame = frame_of(header_, payload_);
  expect_data_error(
      [&] { decode_frame(std::span(frame).first(frame.size() - 1), limits_for(auth_), auth_); },
      "payload is 63 bytes but the header says 64");
  expect_data_error([&] { decode_frame(std::span(frame).first(40), limits_for(auth_), auth_); },
                    "frame is 40 bytes, shorter than the 88-byte header");
  expect_data_error([&] { decode_header(std::span(frame).first(87), limits_for(auth_), auth_); },
                    "header is 87 bytes, expected 88");
  frame[kHeaderBytes + 10] ^= std::byte{0x04};
  expect_data_error([&] { decode_frame(frame, limits_for(auth_), auth_); },
                    "does not match the header's");
}

TEST_F(WireCorruption, AuthenticationMismatches) {
  const JobAuth with_secret("job-a", "s3cret");
  const JobAuth other_secret("job-a", "other");
  // Unauthenticated frame, receiver has a secret.
  expect_header_error([](HeaderBytes&) {},
                      "frame is not authenticated but this job requires a secret", &with_secret);
  // Authenticated frame, receiver without secret / with another secret.
  auto signed_header = encode_header(sample_header(with_secret), payload_, with_secret, true);
  auto frame = frame_of(signed_header, payload_);
  EXPECT_NO_THROW(decode_frame(frame, limits_for(with_secret), with_secret));
  expect_data_error([&] { decode_frame(frame, limits_for(auth_), auth_); },
                    "frame carries a MAC but this process has no job secret");
  expect_data_error([&] { decode_frame(frame, limits_for(other_secret), other_secret); },
                    "authentication failed for a frame from rank 2: MAC mismatch");
  // Any changed bit of header or payload breaks the MAC (sequence: byte 24).
  for (size_t i : {size_t{24}, size_t{33}, kHeaderBytes + 5}) {
    auto tampered = frame;
    tampered[i] ^= std::byte{0x01};
    expect_data_error([&] { decode_frame(tampered, limits_for(with_secret), with_secret); },
                      i < kHeaderBytes ? "MAC mismatch" : "CRC-32C");
  }
}

TEST(WireFormat, CoordinatorSenderOnlyForCoordinatorTypes) {
  const JobAuth auth("job-a", "");
  FrameHeader h = sample_header(auth);
  h.sender = kCoordinator;
  h.type = MessageType::kTable;
  const auto frame = frame_of(encode_header(h, {}, auth, true), {});
  EXPECT_EQ(decode_frame(frame, limits_for(auth), auth).sender, kCoordinator);
  h.type = MessageType::kData;
  const auto data_frame = frame_of(encode_header(h, {}, auth, true), {});
  expect_data_error([&] { decode_frame(data_frame, limits_for(auth), auth); },
                    "sender rank coordinator is out of range for world size 4");
}

TEST(WireFormat, RandomBytesNeverCrashTheDecoder) {
  const JobAuth auth("fuzz", "");
  Rng rng(1234);
  const auto valid =
      frame_of(encode_header(sample_header(auth), pattern(32, 1), auth, true), pattern(32, 1));
  for (int trial = 0; trial < 2000; ++trial) {
    auto frame = valid;
    const int flips = 1 + static_cast<int>(rng.below(4));
    for (int f = 0; f < flips; ++f)
      frame[rng.below(frame.size())] ^= std::byte{static_cast<uint8_t>(1 + rng.below(255))};
    frame.resize(rng.below(frame.size() + 1));
    try {
      decode_frame(frame, FrameLimits{auth.job_id(), 4, kAnyReceiver, 1 << 20}, auth);
    } catch (const DataError&) {
    }
  }
}

TEST(EndpointRecords, RoundTripAndTruncation) {
  const std::vector<PeerEndpoint> endpoints{{0, "host-a", "tcp://10.0.0.1:5000", "ipc:///tmp/a"},
                                            {1, "host-b", "tcp://10.0.0.2:5001", ""}};
  const auto bytes = encode_endpoints(endpoints);
  EXPECT_EQ(decode_endpoints(bytes, 2), endpoints);
  expect_data_error([&] { decode_endpoints(bytes, 1); }, "2 endpoints, more than the 1 expected");
  expect_data_error([&] { decode_endpoints(std::span(bytes).first(bytes.size() - 1), 2); },
                    "rendezvous record: field 'ipc endpoint' needs 4 bytes");
  auto huge = bytes;
  huge[9] = std::byte{0xFF};  // length of the first host name: 65286 bytes
  expect_data_error([&] { decode_endpoints(huge, 2); }, "more than the limit of 1024");
}

// Replays every input of the fuzzing corpus. Files named valid-* must decode;
// everything else must be refused with DataError (never crash or throw
// anything else). The fuzz target (fuzz/wire_fuzz.cpp) uses the same setup.
TEST(WireCorpus, ReplayThroughTheDecoder) {
  const std::filesystem::path dir = std::filesystem::path(DTRAIN_SOURCE_DIR) / "fuzz/corpus/wire";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  const JobAuth plain("fuzz", "");
  const JobAuth secret("fuzz", "fuzz-secret");
  const FrameLimits limits{plain.job_id(), 8, kAnyReceiver, 1 << 20};
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto bytes = std::as_bytes(std::span(chars));
    const std::string name = entry.path().filename().string();
    const JobAuth& auth = name.find("secret") != std::string::npos ? secret : plain;
    // valid-secret-data is AES-256-GCM, which a CPU without AES-NI cannot check.
    if (name == "valid-secret-data" && secret.frame_mac() != FrameMac::kAesGcm) continue;
    ++files;
    if (name.starts_with("valid-")) {
      EXPECT_NO_THROW(decode_frame(bytes, limits, auth)) << name;
    } else {
      EXPECT_THROW(decode_frame(bytes, limits, auth), DataError) << name;
    }
  }
  EXPECT_GE(files, 10);
}

}  // namespace
}  // namespace dtrain::comm::wire
