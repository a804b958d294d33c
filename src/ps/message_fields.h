// The field codecs shared by the ps message bodies (messages.cpp): strings,
// shapes, finite floats, a StateDict and ServerStats. Private to src/ps.
// Layouts: a string is u16 length + UTF-8 (longer ones are cut: error
// texts), a long string u32 length + bytes; a shape u8 ndim (at most 8) +
// ndim x i64 (each in [0, 2^40], at most 2^40 elements); a state u32 entries
// x (string name, shape, f32 values) + u32 metadata x (string key, long
// string value); stats as put_stats writes them; a compressed push's pieces
// as put_pieces writes them (docs/parameter-server.md).
// Errors: the get_ functions throw DataError naming the field on a short or
// malformed body (ByteReader's errors otherwise). Stateless; thread safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/byte_codec.h"
#include "ps/messages.h"
#include "tensor/state_dict.h"

namespace dtrain::ps::message_fields {

void put_string(ByteWriter& w, std::string_view s);
std::string get_string(ByteReader& r, std::string_view field);
std::string get_long_string(ByteReader& r, std::string_view field);

void put_shape(ByteWriter& w, const Shape& shape);
Shape get_shape(ByteReader& r, std::string_view field);

// An f32 that must be finite (DataError otherwise).
float get_finite(ByteReader& r, std::string_view field);

// Entry names appear once (DataError otherwise).
void put_state(ByteWriter& w, const StateDict& state);
StateDict get_state(ByteReader& r);

// Worker states are known WorkerState values (DataError otherwise).
void put_stats(ByteWriter& w, const ServerStats& stats);
ServerStats get_stats(ByteReader& r);

// A float array in shared memory (messages.h ShmFloats): in place of its
// u64 count, the count with kShmFlag set, then u64 segment id, u64 offset,
// u64 sequence. put_shm_floats throws UsageError when the message also has
// floats in its payload (`inline_floats`); get_shm_floats takes the count
// word already read.
inline constexpr uint64_t kShmFlag = uint64_t{1} << 63;
void put_shm_floats(ByteWriter& w, const ShmFloats& floats, bool inline_floats);
ShmFloats get_shm_floats(ByteReader& r, uint64_t flagged_count);
// An init's layout: u32 dense count, per spec its name and shape; u32 table
// count, per table its name, i64 dim (1..65536, else DataError) and f32
// init_std (finite). get_init_specs appends to `dense` and `tables`.
void put_init_specs(ByteWriter& w, const std::vector<DenseSpec>& dense,
                    const std::vector<SparseTableSpec>& tables);
void get_init_specs(ByteReader& r, std::vector<DenseSpec>& dense,
                    std::vector<SparseTableSpec>& tables);
// A compressed push's pieces (the framing only: the server checks each
// piece against its slice); an encoding other than 0 or 1 is a DataError.
void put_pieces(ByteWriter& w, const std::vector<PushPiece>& pieces);
std::vector<PushPiece> get_pieces(ByteReader& r);

}  // namespace dtrain::ps::message_fields
