#include "fl/upload_codec.h"

#include <fmt/format.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::fl {

namespace {

// The compressor's seed for one upload: splitmix64's finaliser applied to
// each word in turn, so (seed, round, client) and (seed, round, client + 1)
// or (seed, round + 1, client) draw apart.
uint64_t upload_seed(uint64_t seed, int64_t round, int64_t client) {
  auto finalise = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  uint64_t h = 0x243f6a8885a308d3ULL;  // pi's fraction: any odd constant
  for (const uint64_t word : {seed, static_cast<uint64_t>(round), static_cast<uint64_t>(client)}) {
    h = finalise(h ^ finalise(word + 0x9e3779b97f4a7c15ULL));
  }
  return h;
}

// The options every compressor of a codec runs with: stateless.
compress::Options stateless(compress::Options options) {
  options.error_feedback = false;
  return options;
}

std::string_view method_name(compress::Method method) { return compress::to_string(method); }

}  // namespace

std::vector<compress::TensorLayout> layouts_of(const nn::Module& model) {
  std::vector<compress::TensorLayout> layouts;
  for (const auto& [name, tensor] : model.state_dict()) {
    layouts.push_back(compress::matrix_layout(tensor.shape()));
  }
  return layouts;
}

UploadCodec::UploadCodec(const compress::Options& options,
                         std::vector<compress::TensorLayout> layouts)
    : options_(stateless(options)), layouts_(std::move(layouts)) {
  compress::validate(options_);
  if (options_.momentum > 0.0) {
    throw UsageError(fmt::format(
        "federated uploads: momentum (DGC) must be 0, got {}: a client keeps no state between "
        "rounds",
        options_.momentum));
  }
  offsets_.assign(1, 0);
  for (size_t t = 0; t < layouts_.size(); ++t) {
    const compress::TensorLayout& l = layouts_[t];
    if ((l.rows != 0 && l.cols > kMaxTensorFloats / l.rows) || l.numel() > kMaxTensorFloats) {
      throw UsageError(fmt::format(
          "federated uploads: tensor {} ({} x {}) has more than {} floats (u32 body lengths)", t,
          l.rows, l.cols, kMaxTensorFloats));
    }
    offsets_.push_back(offsets_.back() + l.numel());
  }
  model_size_ = static_cast<int64_t>(offsets_.back());
  compresses_.assign(layouts_.size(), false);
  if (options_.method != compress::Method::kNone) {
    const auto compressor = compress::make_compressor(options_, layouts_);
    for (size_t t = 0; t < layouts_.size(); ++t) compresses_[t] = compressor->compresses(t);
  }
}

bool UploadCodec::compresses(size_t tensor) const {
  if (tensor >= layouts_.size()) {
    throw UsageError(fmt::format("federated uploads: tensor {} out of range ({} tensors)", tensor,
                                 layouts_.size()));
  }
  return compresses_[tensor];
}

std::vector<std::byte> UploadCodec::encode(std::span<const float> delta, int64_t round,
                                           int64_t client) const {
  if (round < 0 || client < 0) {
    throw UsageError(fmt::format(
        "federated uploads: encode() needs a round and a client >= 0, got round {}, client {}",
        round, client));
  }
  if (delta.size() != offsets_.back()) {
    throw UsageError(fmt::format(
        "federated uploads: the update of client {}, round {} has {} values, the model {}", client,
        round, delta.size(), offsets_.back()));
  }
  for (size_t t = 0; t < layouts_.size(); ++t) {
    for (size_t i = offsets_[t]; i < offsets_[t + 1]; ++i) {
      if (!std::isfinite(delta[i])) {
        throw DataError(fmt::format(
            "federated uploads: the update of client {}, round {} has value {} (tensor {}, entry "
            "{}) = {}, not finite; it is not encoded",
            client, round, i, t, i - offsets_[t], delta[i]));
      }
    }
  }

  std::unique_ptr<compress::Compressor> compressor;
  if (options_.method != compress::Method::kNone) {
    compress::Options options = options_;
    options.seed = upload_seed(options_.seed, round, client);
    compressor = compress::make_compressor(options, layouts_);
  }

  // The bodies first, then the header with their lengths in front of them.
  ByteWriter bodies(4 * offsets_.back());
  std::vector<uint32_t> lengths(layouts_.size());
  for (size_t t = 0; t < layouts_.size(); ++t) {
    const size_t start = bodies.size();
    const std::span<const float> values = delta.subspan(offsets_[t], layouts_[t].numel());
    if (compresses_[t]) {
      compressor->encode(t, values, round, /*rank=*/0, bodies);
    } else {
      bodies.write_f32_array(values);
    }
    const size_t length = bodies.size() - start;
    DTRAIN_CHECK(length <= std::numeric_limits<uint32_t>::max(), "upload body too long", t, length);
    lengths[t] = static_cast<uint32_t>(length);
  }

  ByteWriter out(header_bytes(layouts_.size()) + bodies.size());
  out.write_u8(kVersion);
  out.write_u8(static_cast<uint8_t>(options_.method));
  out.write_u32(static_cast<uint32_t>(layouts_.size()));
  for (size_t t = 0; t < layouts_.size(); ++t) {
    out.write_u8(compresses_[t] ? kCompressed : kDense);
    out.write_u32(lengths[t]);
  }
  out.write_bytes(bodies.bytes());
  return out.take();
}

namespace {

// A malformed upload: the context, the field and its offset, the problem.
DataError field_error(std::string_view context, size_t at, std::string_view field,
                      const std::string& problem) {
  return DataError(fmt::format("{}: field '{}' at offset {}: {}", context, field, at, problem));
}

// The tensor table after the message's header: each tensor's form and body
// length, checked against the layouts (a dense body is 4 bytes a value) and
// the bytes that follow the table.
struct TensorTable {
  std::vector<uint8_t> forms;
  std::vector<uint32_t> lengths;
};

TensorTable read_tensor_table(ByteReader& reader,
                              const std::vector<compress::TensorLayout>& layouts,
                              compress::Method method, std::string_view context) {
  const size_t tensors = layouts.size();
  reader.need_elements(tensors, 5, "tensor table");
  TensorTable table{std::vector<uint8_t>(tensors), std::vector<uint32_t>(tensors)};
  uint64_t total = 0;
  for (size_t t = 0; t < tensors; ++t) {
    const compress::TensorLayout& l = layouts[t];
    const size_t form_at = reader.offset();
    const uint8_t form = table.forms[t] = reader.read_u8("form");
    if (form != UploadCodec::kDense &&
        !(form == UploadCodec::kCompressed && method != compress::Method::kNone)) {
      throw field_error(context, form_at, "form",
                        fmt::format("tensor {}: form {}; 0 (dense){}", t, form,
                                    method == compress::Method::kNone ? "" : " or 1 (compressed)"));
    }
    const size_t length_at = reader.offset();
    const uint32_t length = table.lengths[t] = reader.read_u32("body bytes");
    if (form == UploadCodec::kDense && length != 4 * l.numel()) {
      throw field_error(
          context, length_at, "body bytes",
          fmt::format("tensor {} ({} x {}) dense in {} bytes, expected {} (4 per float)", t, l.rows,
                      l.cols, length, 4 * l.numel()));
    }
    total += length;
  }
  if (total != reader.remaining()) {
    throw field_error(
        context, reader.offset(), "bodies",
        fmt::format("the table's {} tensors take {} bytes, the message has {} after it ({})",
                    tensors, total, reader.remaining(),
                    total > reader.remaining() ? "truncated" : "bytes after the end"));
  }
  return table;
}

// Decodes tensor t's body (at `body_at`) into `out`, which must come out finite.
void decode_body(std::span<const std::byte> body, size_t body_at, uint8_t form, size_t t,
                 const compress::TensorLayout& l, compress::Method method, std::span<float> out,
                 std::string_view context) {
  const std::string_view own = method_name(method);
  if (form == UploadCodec::kDense) {
    ByteReader dense(body, std::string(context));
    dense.read_f32_array_into(out, "dense body");
  } else {
    const auto tag = static_cast<uint8_t>(method);
    if (!body.empty() && std::to_integer<uint8_t>(body[0]) != tag) {
      const auto inner = static_cast<compress::Method>(std::to_integer<uint8_t>(body[0]));
      throw field_error(context, body_at, "body",
                        fmt::format("tensor {}: a {} message (tag {}) in a {} upload", t,
                                    method_name(inner), std::to_integer<int>(body[0]), own));
    }
    compress::decode_add(body, l, 1.0f, out,
                         fmt::format("{}, tensor {} (body at offset {})", context, t, body_at));
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      throw field_error(context, body_at, "body",
                        fmt::format("tensor {} ({} x {}) entry {} decodes to {}, not finite", t,
                                    l.rows, l.cols, i, out[i]));
    }
  }
}

}  // namespace

std::vector<float> UploadCodec::decode(std::span<const std::byte> message, int64_t model_size,
                                       std::string_view context) const {
  if (model_size != model_size_) {
    throw UsageError(fmt::format("{}: decode() for a model of {} values, the codec's has {}",
                                 context, model_size, model_size_));
  }
  ByteReader reader(message, std::string(context));
  const uint8_t version = reader.read_u8("version");
  if (version != kVersion) {
    throw field_error(context, 0, "version",
                      fmt::format("version {}, this codec reads {}", version, kVersion));
  }
  const uint8_t tag = reader.read_u8("method");
  const auto method = static_cast<compress::Method>(tag);
  if (method_name(method) == "unknown") {
    throw field_error(context, 1, "method", fmt::format("unknown method tag {}", tag));
  }
  if (method != options_.method) {
    throw field_error(
        context, 1, "method",
        fmt::format("a {} message, this codec's method is {} (the job's [compression])",
                    method_name(method), method_name(options_.method)));
  }
  const uint32_t tensors = reader.read_u32("tensors");
  if (tensors != layouts_.size()) {
    throw field_error(context, 2, "tensors",
                      fmt::format("{} tensors, the model has {}", tensors, layouts_.size()));
  }
  const TensorTable table = read_tensor_table(reader, layouts_, method, context);
  std::vector<float> delta(offsets_.back(), 0.0f);
  for (size_t t = 0; t < tensors; ++t) {
    const compress::TensorLayout& l = layouts_[t];
    const size_t body_at = reader.offset();
    const std::span<const std::byte> body = reader.read_bytes(table.lengths[t], "body");
    decode_body(body, body_at, table.forms[t], t, l, method,
                std::span<float>(delta).subspan(offsets_[t], l.numel()), context);
  }
  return delta;
}

}  // namespace dtrain::fl
