// safetensors: the model-file format of the Hugging Face ecosystem
// (https://github.com/huggingface/safetensors), for float32 StateDicts.
//
// Layout: an 8-byte little-endian unsigned header length N; N bytes of JSON
//   {"__metadata__": {"key": "value", ...},
//    "name": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
// padded with spaces so that the data starts at an 8-byte-aligned file
// offset; then the tensors' raw little-endian bytes, in header order, without
// gaps; offsets are relative to the start of the data. The writer emits
// "__metadata__" first (only when the StateDict has metadata) and the tensors
// in StateDict order; the reader accepts any key order and returns tensors
// ordered by data offset.
//
// The reader is strict, since files come from outside: a path that is not a
// regular file or a file over `max_bytes` (read_input_file()), a header
// length beyond the file or over 100 MB, invalid JSON, a duplicate name, a non-F32 or
// unknown dtype, a malformed shape, offsets out of range, overlapping or not
// covering the data exactly, or a shape that does not match its byte range
// all throw DataError "<file>: <problem>" with expected vs got.
//
// Ownership: loading returns fresh tensors. Thread safety: pure functions of
// their arguments. Saving goes through write_file_atomic (crash-safe) and
// throws FileError on I/O failure; loading throws DataError. Blocking: file I/O.
#pragma once

#include <string>
#include <string_view>

#include "io/file_system.h"
#include "tensor/state_dict.h"

namespace dtrain::io {

// The bytes of a safetensors file holding `dict`.
std::string encode_safetensors(const StateDict& dict);
// Parses safetensors bytes; `source` names them in errors (a path).
StateDict decode_safetensors(std::string_view bytes, const std::string& source);

void save_safetensors(const StateDict& dict, const std::string& path,
                      FileSystem& fs = default_file_system());
// DataError "cannot read safetensors file '<path>': ..." for a missing,
// non-regular or oversized file, then the format errors above.
StateDict load_safetensors(const std::string& path, FileSystem& fs = default_file_system(),
                           uint64_t max_bytes = kMaxModelFileBytes);

}  // namespace dtrain::io
