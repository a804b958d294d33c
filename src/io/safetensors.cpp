#include "io/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <utility>

#include "core/byte_codec.h"
#include "io/atomic_file.h"

namespace dtrain::io {

// The header length goes through the byte codec; the tensors' F32 data is
// copied in bulk as it lies in memory, which is the format's byte order only
// on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this build copies floats as they lie in memory");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100 * 1000 * 1000;  // the reference implementation's limit
constexpr std::string_view kMetadataKey = "__metadata__";

// dtype names of the specification, to tell "unsupported" from "unknown".
bool is_known_dtype(const std::string& dtype) {
  static constexpr std::string_view kKnown[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
                                                "I16",  "U16", "F16", "BF16",    "I32",
                                                "U32",  "F32", "F64", "I64",     "U64"};
  return std::find(std::begin(kKnown), std::end(kKnown), dtype) != std::end(kKnown);
}

struct TensorEntry {
  std::string name;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

[[noreturn]] void fail(const std::string& source, const std::string& problem) {
  throw DataError(fmt::format("safetensors {}: {}", source, problem));
}

TensorEntry parse_entry(const std::string& source, const std::string& name,
                        const nlohmann::json& info) {
  if (!info.is_object()) fail(source, fmt::format("tensor '{}': entry is not a JSON object", name));
  for (const auto& [key, value] : info.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(source, fmt::format("tensor '{}': unexpected field '{}'", name, key));
    }
  }
  if (!info.contains("dtype") || !info["dtype"].is_string()) {
    fail(source, fmt::format("tensor '{}': missing string field 'dtype'", name));
  }
  const std::string dtype = info["dtype"].get<std::string>();
  if (dtype != "F32") {
    fail(source,
         is_known_dtype(dtype)
             ? fmt::format("tensor '{}': dtype {} is not supported (dtrain reads F32)", name, dtype)
             : fmt::format("tensor '{}': unknown dtype '{}'", name, dtype));
  }
  TensorEntry entry;
  entry.name = name;
  if (!info.contains("shape") || !info["shape"].is_array()) {
    fail(source, fmt::format("tensor '{}': missing array field 'shape'", name));
  }
  for (const nlohmann::json& extent : info["shape"]) {
    if (!extent.is_number_unsigned() ||
        extent.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(source, fmt::format("tensor '{}': shape {} holds a value that is not a "
                               "non-negative integer",
                               name, info["shape"].dump()));
    }
    entry.shape.push_back(extent.get<int64_t>());
  }
  const nlohmann::json* offsets = info.contains("data_offsets") ? &info["data_offsets"] : nullptr;
  if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    fail(source, fmt::format("tensor '{}': 'data_offsets' must be [begin, end] with "
                             "non-negative integers, got {}",
                             name, offsets ? offsets->dump() : "nothing"));
  }
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  if (entry.begin > entry.end) {
    fail(source, fmt::format("tensor '{}': data_offsets [{}, {}] end before they begin", name,
                             entry.begin, entry.end));
  }
  return entry;
}

// Number of bytes the shape needs, or nullopt-like max on overflow.
uint64_t shape_bytes(const Shape& shape) {
  uint64_t bytes = sizeof(float);
  for (const int64_t extent : shape) {
    const auto e = static_cast<uint64_t>(extent);
    if (e != 0 && bytes > std::numeric_limits<uint64_t>::max() / e) {
      return std::numeric_limits<uint64_t>::max();
    }
    bytes *= e;
  }
  return bytes;
}

}  // namespace

std::string encode_safetensors(const StateDict& dict) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!dict.metadata().empty()) {
    nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
    for (const auto& [key, value] : dict.metadata()) metadata[key] = value;
    header[std::string(kMetadataKey)] = std::move(metadata);
  }
  uint64_t offset = 0;
  for (const auto& [name, tensor] : dict) {
    if (name == kMetadataKey) {
      throw UsageError(fmt::format("safetensors: a tensor may not be named '{}'", kMetadataKey));
    }
    const uint64_t bytes = static_cast<uint64_t>(tensor.numel()) * sizeof(float);
    header[name] = {
        {"dtype", "F32"}, {"shape", tensor.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json;
  try {
    json = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(
        fmt::format("safetensors: a name or metadata value is not UTF-8: {}", e.what()));
  }
  // Pad so that 8 (the length field) + N is a multiple of 8.
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + json.size() + offset);
  ByteWriter length(sizeof(uint64_t));
  length.write_u64(json.size());  // little-endian, as the format says
  out.append(reinterpret_cast<const char*>(length.bytes().data()), length.size());
  out += json;
  for (const auto& [name, tensor] : dict) {
    out.append(reinterpret_cast<const char*>(tensor.data()),
               static_cast<size_t>(tensor.numel()) * sizeof(float));
  }
  return out;
}

namespace {

// The header's JSON and the data section after it; DataError (fail) when
// the length field or the JSON is malformed or a top-level name repeats.
std::pair<nlohmann::json, std::string_view> split_header(std::string_view bytes,
                                                         const std::string& source) {
  if (bytes.size() < 8) {
    fail(source,
         fmt::format("file is {} bytes, shorter than the 8-byte header length", bytes.size()));
  }
  const uint64_t header_length =
      ByteReader(std::as_bytes(std::span(bytes.data(), 8)), fmt::format("safetensors {}", source))
          .read_u64("header length");
  if (header_length > kMaxHeaderBytes) {
    fail(source, fmt::format("header length {} exceeds the limit of {} bytes", header_length,
                             kMaxHeaderBytes));
  }
  if (header_length > bytes.size() - 8) {
    fail(source, fmt::format("header length {} runs past the end of the file ({} bytes after "
                             "the length field)",
                             header_length, bytes.size() - 8));
  }
  const std::string_view header_text = bytes.substr(8, header_length);

  // Reject duplicate top-level names, which JSON parsers silently merge.
  std::set<std::string> names;
  std::string duplicate;
  const auto on_event = [&](int depth, nlohmann::json::parse_event_t event,
                            nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 &&
        !names.insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text.begin(), header_text.end(), on_event);
  } catch (const nlohmann::json::exception& e) {
    fail(source, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!duplicate.empty()) fail(source, fmt::format("header names '{}' twice", duplicate));
  if (!header.is_object()) fail(source, "header is not a JSON object");

  return {std::move(header), bytes.substr(8 + header_length)};
}

// Sorts `entries` by offset and checks that they tile `data` exactly, each
// holding its shape's F32 bytes.
void check_layout(std::vector<TensorEntry>& entries, std::string_view data,
                  const std::string& source) {
  std::sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  for (const TensorEntry& entry : entries) {
    if (entry.end > data.size()) {
      fail(source, fmt::format("tensor '{}': data_offsets [{}, {}] run past the data section "
                               "({} bytes)",
                               entry.name, entry.begin, entry.end, data.size()));
    }
    if (entry.begin != expected_begin) {
      fail(source, fmt::format("tensor '{}': data begins at offset {}, expected {} ({} "
                               "the previous tensor)",
                               entry.name, entry.begin, expected_begin,
                               entry.begin < expected_begin ? "overlapping" : "a gap after"));
    }
    const uint64_t needed = shape_bytes(entry.shape);
    if (needed != entry.end - entry.begin) {
      fail(source, fmt::format("tensor '{}': shape {} needs {} bytes of F32, data_offsets "
                               "[{}, {}] hold {}",
                               entry.name, shape_str(entry.shape), needed, entry.begin, entry.end,
                               entry.end - entry.begin));
    }
    expected_begin = entry.end;
  }
  if (expected_begin != data.size()) {
    fail(source, fmt::format("tensors cover {} bytes of data, but the data section holds {}",
                             expected_begin, data.size()));
  }
}

}  // namespace

StateDict decode_safetensors(std::string_view bytes, const std::string& source) {
  auto [header, data] = split_header(bytes, source);
  StateDict dict;
  std::vector<TensorEntry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) fail(source, "'__metadata__' is not a JSON object");
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string()) {
          fail(source, fmt::format("metadata '{}' is {}, expected a string", meta_key,
                                   meta_value.type_name()));
        }
        dict.metadata()[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(source, key, value));
  }

  check_layout(entries, data, source);
  for (const TensorEntry& entry : entries) {
    Tensor tensor = Tensor::empty(entry.shape);
    std::memcpy(tensor.data(), data.data() + entry.begin, entry.end - entry.begin);
    dict.insert(entry.name, std::move(tensor));
  }
  return dict;
}

void save_safetensors(const StateDict& dict, const std::string& path, FileSystem& fs) {
  write_file_atomic(fs, path, encode_safetensors(dict));
}

StateDict load_safetensors(const std::string& path, FileSystem& fs, uint64_t max_bytes) {
  return decode_safetensors(read_input_file(fs, path, max_bytes, "safetensors file"), path);
}

}  // namespace dtrain::io
