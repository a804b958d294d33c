#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::io {
namespace {

using dtrain::testing::TempDir;

StateDict sample_dict() {
  StateDict dict;
  dict.insert("fc1.weight", Tensor::from_vector({1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f}, {2, 3}));
  dict.insert("fc1.bias", Tensor::from_vector({7.0f, 8.0f}, {2}));
  dict.insert("scale", Tensor::scalar(0.5f));
  dict.insert("empty", Tensor::zeros({0, 4}));
  dict.insert("a.last", Tensor::from_vector({9.0f}, {1, 1, 1}));
  dict.metadata()["step"] = "1200";
  dict.metadata()["format"] = "pt";
  return dict;
}

uint64_t read_u64_le(const std::string& bytes, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

// Builds a file from header text and data bytes, padding nothing.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string floats(std::initializer_list<float> values) {
  std::string out;
  for (const float v : values) out.append(reinterpret_cast<const char*>(&v), sizeof(v));
  return out;
}

// Decodes and returns the DataError message ("" if it decoded).
std::string decode_error(const std::string& bytes) {
  try {
    decode_safetensors(bytes, "m.safetensors");
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

// Parses the written bytes directly against the specification.
TEST(Safetensors, WrittenFileFollowsTheSpecification) {
  const StateDict dict = sample_dict();
  const std::string bytes = encode_safetensors(dict);
  ASSERT_GE(bytes.size(), 8u);
  const uint64_t n = read_u64_le(bytes, 0);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  const std::string header_text = bytes.substr(8, n);
  // Padding is trailing spaces only.
  const size_t last = header_text.find_last_not_of(' ');
  EXPECT_EQ(header_text[last], '}');
  EXPECT_LT(header_text.size() - last - 1, 8u);

  const auto header = nlohmann::ordered_json::parse(header_text);
  ASSERT_TRUE(header.is_object());
  EXPECT_EQ(header.begin().key(), "__metadata__");
  EXPECT_EQ(header["__metadata__"]["step"], "1200");
  EXPECT_EQ(header["__metadata__"]["format"], "pt");

  const std::string data = bytes.substr(8 + n);
  uint64_t expected_begin = 0;
  size_t index = 0;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    ASSERT_LT(index, dict.size());
    const auto& [want_name, want] = dict.entries()[index++];
    EXPECT_EQ(name, want_name) << "header order is StateDict order";
    EXPECT_EQ(info["dtype"], "F32");
    EXPECT_EQ(info["shape"].get<std::vector<int64_t>>(), want.shape());
    const auto offsets = info["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_EQ(offsets.size(), 2u);
    EXPECT_EQ(offsets[0], expected_begin) << name << ": contiguous, in order";
    EXPECT_EQ(offsets[1] - offsets[0], static_cast<uint64_t>(want.numel()) * 4);
    ASSERT_LE(offsets[1], data.size());
    EXPECT_EQ(std::memcmp(data.data() + offsets[0], want.data(), offsets[1] - offsets[0]), 0)
        << name << ": data bytes are the little-endian floats";
    expected_begin = offsets[1];
  }
  EXPECT_EQ(index, dict.size());
  EXPECT_EQ(expected_begin, data.size()) << "no bytes after the last tensor";
}

TEST(Safetensors, RoundTripsThroughAFile) {
  TempDir tmp;
  const StateDict dict = sample_dict();
  save_safetensors(dict, tmp.file("m.safetensors"));
  const StateDict back = load_safetensors(tmp.file("m.safetensors"));
  ASSERT_EQ(back.size(), dict.size());
  for (size_t i = 0; i < dict.size(); ++i) {
    const auto& [name, want] = dict.entries()[i];
    const auto& [got_name, got] = back.entries()[i];
    EXPECT_EQ(got_name, name);
    EXPECT_EQ(got.shape(), want.shape());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.numel() * sizeof(float)), 0) << name;
  }
  EXPECT_EQ(back.metadata(), dict.metadata());
  EXPECT_EQ(default_file_system().list_directory(tmp.path()),
            std::vector<std::string>{"m.safetensors"});
}

TEST(Safetensors, EmptyDictRoundTrips) {
  const std::string bytes = encode_safetensors(StateDict{});
  EXPECT_EQ(bytes.size() % 8, 0u);
  const StateDict back = decode_safetensors(bytes, "e");
  EXPECT_TRUE(back.empty());
  EXPECT_TRUE(back.metadata().empty());
}

TEST(Safetensors, ReaderAcceptsAnyHeaderOrderAndSortsByOffset) {
  const std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                             R"("a":{"shape":[1],"data_offsets":[0,4],"dtype":"F32"}})";
  const StateDict dict = decode_safetensors(make_file(header, floats({1.0f, 2.0f})), "x");
  ASSERT_EQ(dict.size(), 2u);
  EXPECT_EQ(dict.entries()[0].first, "a");
  EXPECT_EQ(dict.at("a").item(), 1.0f);
  EXPECT_EQ(dict.at("b").item(), 2.0f);
}

TEST(Safetensors, MalformedFilesGiveExactErrors) {
  const std::string two = floats({1.0f, 2.0f});
  const auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                        const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":" + offsets + "}";
  };
  struct Case {
    std::string bytes;
    std::string error;
  };
  std::string huge(8, '\xff');
  const std::vector<Case> cases = {
      {"abc", "safetensors m.safetensors: file is 3 bytes, shorter than the 8-byte header length"},
      {huge + "{}",
       "safetensors m.safetensors: header length 18446744073709551615 exceeds the "
       "limit of 100000000 bytes"},
      {make_file("{}", "").substr(0, 9),
       "safetensors m.safetensors: header length 2 runs past "
       "the end of the file (1 bytes after the length field)"},
      {make_file("[1,2]", ""), "safetensors m.safetensors: header is not a JSON object"},
      {make_file("{" + entry("w", "F16", "[2]", "[0,4]") + "}", floats({1.0f})),
       "safetensors m.safetensors: tensor 'w': dtype F16 is not supported (dtrain reads F32)"},
      {make_file("{" + entry("w", "Q7", "[2]", "[0,8]") + "}", two),
       "safetensors m.safetensors: tensor 'w': unknown dtype 'Q7'"},
      {make_file("{" + entry("w", "F32", "[-2]", "[0,8]") + "}", two),
       "safetensors m.safetensors: tensor 'w': shape [-2] holds a value that is not a "
       "non-negative integer"},
      {make_file("{" + entry("w", "F32", "[2]", "[0,12]") + "}", two),
       "safetensors m.safetensors: tensor 'w': data_offsets [0, 12] run past the data section "
       "(8 bytes)"},
      {make_file("{" + entry("w", "F32", "[3]", "[0,8]") + "}", two),
       "safetensors m.safetensors: tensor 'w': shape (3,) needs 12 bytes of F32, data_offsets "
       "[0, 8] hold 8"},
      {make_file("{" + entry("w", "F32", "[1]", "[0,4]") + "}", two),
       "safetensors m.safetensors: tensors cover 4 bytes of data, but the data section holds 8"},
      {make_file(
           "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[1]", "[4,8]") + "}",
           two),
       "safetensors m.safetensors: tensor 'b': data begins at offset 4, expected 8 (overlapping "
       "the previous tensor)"},
      {make_file("{" + entry("a", "F32", "[1]", "[4,8]") + "}", two),
       "safetensors m.safetensors: tensor 'a': data begins at offset 4, expected 0 (a gap after "
       "the previous tensor)"},
      {make_file("{" + entry("a", "F32", "[1]", "[8,4]") + "}", two),
       "safetensors m.safetensors: tensor 'a': data_offsets [8, 4] end before they begin"},
      {make_file(
           "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("a", "F32", "[1]", "[4,8]") + "}",
           two),
       "safetensors m.safetensors: header names 'a' twice"},
      {make_file(R"({"__metadata__":{"step":12}})", ""),
       "safetensors m.safetensors: metadata 'step' is number, expected a string"},
      {make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", two.substr(4)),
       "safetensors m.safetensors: tensor 'w': unexpected field 'x'"},
      {make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", two.substr(4)),
       "safetensors m.safetensors: tensor 'w': 'data_offsets' must be [begin, end] with "
       "non-negative integers, got [0]"},
  };
  for (const Case& c : cases) EXPECT_EQ(decode_error(c.bytes), c.error);
  EXPECT_NE(decode_error(make_file("{\"a\":", "")).find("header is not valid JSON"),
            std::string::npos);
}

TEST(Safetensors, EveryTruncationIsRefused) {
  const std::string bytes = encode_safetensors(sample_dict());
  for (size_t size = 0; size < bytes.size(); ++size) {
    EXPECT_NE(decode_error(bytes.substr(0, size)), "") << "truncated to " << size << " bytes";
  }
}

// safetensors has no checksum: a flipped byte may still decode (a changed
// name or value). What must never happen is a crash or a non-DataError.
TEST(Safetensors, FlippedBytesNeverCrash) {
  const std::string bytes = encode_safetensors(sample_dict());
  int refused = 0;
  for (size_t at = 0; at < bytes.size(); ++at) {
    for (const unsigned char mask : {0x01, 0x20, 0x80, 0xff}) {
      std::string bad = bytes;
      bad[at] = static_cast<char>(static_cast<unsigned char>(bad[at]) ^ mask);
      try {
        const StateDict dict = decode_safetensors(bad, "m");
        for (const auto& [name, tensor] : dict) EXPECT_GE(tensor.numel(), 0);
      } catch (const DataError&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(refused, 0);
}

TEST(Safetensors, MissingFileIsADataError) {
  TempDir tmp;
  EXPECT_THROW(load_safetensors(tmp.file("none.safetensors")), DataError);
}

// Issue #18: `--weights /dev/zero` (or /dev/urandom, a FIFO) grew memory
// without end or hung. Only a regular file within the limit is read; the
// default limit is kMaxModelFileBytes (checked with a sparse file).
TEST(Safetensors, LoadingRefusesDevicesFifosFoldersAndOversizedFiles) {
  TempDir tmp;
  for (const uint64_t limit : {uint64_t{1000}, kMaxModelFileBytes}) {
    for (const auto& bad : dtrain::testing::hostile_paths(tmp, limit)) {
      SCOPED_TRACE(bad.path);
      dtrain::testing::expect_error<DataError>(
          [&] {
            if (limit == kMaxModelFileBytes) {
              load_safetensors(bad.path);
            } else {
              load_safetensors(bad.path, default_file_system(), limit);
            }
          },
          "cannot read safetensors file '" + bad.path + "': " + bad.reason);
    }
  }
}

// The header length is bounded by the file, so a small file announcing a
// large header fails before anything of that size is allocated.
TEST(Safetensors, TheHeaderLengthIsBoundedByTheFileSize) {
  std::string bytes(8, '\0');
  const uint64_t announced = 99'999'999;  // under the 100 MB cap
  std::memcpy(bytes.data(), &announced, 8);
  bytes += "{}";
  EXPECT_EQ(decode_error(bytes),
            "safetensors m.safetensors: header length 99999999 runs past the end of the file (2 "
            "bytes after the length field)");
}

// Cross-check with PyTorch: Python parses our file on its own and writes one
// back (values doubled) that we must read. Skipped without torch.
TEST(Safetensors, PyTorchReadsAndWritesTheSameFormat) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 has no torch module";
  }
  TempDir tmp;
  const StateDict dict = sample_dict();
  save_safetensors(dict, tmp.file("in.safetensors"));
  std::ofstream(tmp.file("check.py")) << R"PY(
import json, struct, sys, torch
src, dst = sys.argv[1], sys.argv[2]
raw = open(src, 'rb').read()
(n,) = struct.unpack('<Q', raw[:8])
assert (8 + n) % 8 == 0
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
meta = header.pop('__metadata__')
assert meta == {'step': '1200', 'format': 'pt'}, meta
tensors = {}
for name, info in header.items():
    b, e = info['data_offsets']
    t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32) if e > b else torch.zeros(0)
    tensors[name] = t.reshape(info['shape'])
want = torch.tensor([[1.5, -2.0, 3.25], [0.0, -0.0, 1e-30]], dtype=torch.float32)
assert torch.equal(tensors['fc1.weight'], want), tensors['fc1.weight']
assert tensors['scale'].shape == torch.Size([]) and tensors['scale'].item() == 0.5
assert tensors['empty'].shape == torch.Size([0, 4])
out_header, blobs, offset = {'__metadata__': {'from': 'torch'}}, [], 0
for name in sorted(tensors, reverse=True):
    blob = (tensors[name] * 2).contiguous().numpy().tobytes()
    out_header[name] = {'dtype': 'F32', 'shape': list(tensors[name].shape),
                        'data_offsets': [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
text = json.dumps(out_header).encode()
text += b' ' * ((8 - (8 + len(text)) % 8) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(text)) + text + b''.join(blobs))
)PY";
  const std::string command = "/usr/bin/python3 " + tmp.file("check.py") + " " +
                              tmp.file("in.safetensors") + " " + tmp.file("out.safetensors");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const StateDict back = load_safetensors(tmp.file("out.safetensors"));
  ASSERT_EQ(back.size(), dict.size());
  EXPECT_EQ(back.metadata().at("from"), "torch");
  for (const auto& [name, want] : dict) {
    const Tensor& got = back.at(name);
    ASSERT_EQ(got.shape(), want.shape()) << name;
    for (int64_t i = 0; i < want.numel(); ++i) EXPECT_EQ(got.data()[i], 2 * want.data()[i]) << name;
  }
}

}  // namespace
}  // namespace dtrain::io
