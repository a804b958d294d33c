#include "compress/compressor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>

#include "compress/compress_internal.h"
#include "core/error.h"

namespace dtrain::compress {

TensorLayout matrix_layout(std::span<const int64_t> shape) {
  size_t numel = 1;
  for (const int64_t d : shape) numel *= static_cast<size_t>(d);
  TensorLayout layout;
  if (shape.size() >= 2 && shape[0] > 0) {
    layout.rows = static_cast<size_t>(shape[0]);
    layout.cols = numel / layout.rows;
  } else {
    layout.rows = 1;
    layout.cols = numel;
  }
  return layout;
}

namespace {

constexpr std::array<std::pair<Method, std::string_view>, 8> kMethodNames = {{
    {Method::kNone, "none"},
    {Method::kFp16, "fp16"},
    {Method::kBf16, "bf16"},
    {Method::kTopK, "topk"},
    {Method::kRandomK, "randomk"},
    {Method::kQsgd, "qsgd"},
    {Method::kSign, "sign"},
    {Method::kPowerSgd, "powersgd"},
}};

std::string layouts_text(std::span<const TensorLayout> layouts) {
  std::string text;
  for (const auto& l : layouts) {
    if (!text.empty()) text += ", ";
    text += fmt::format("{}x{}", l.rows, l.cols);
  }
  return text;
}

}  // namespace

std::string_view to_string(Method method) {
  for (const auto& [m, name] : kMethodNames) {
    if (m == method) return name;
  }
  return "unknown";
}

std::optional<Method> parse_method(std::string_view name) {
  for (const auto& [m, n] : kMethodNames) {
    if (n == name) return m;
  }
  return std::nullopt;
}

std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& [m, name] : kMethodNames) names.emplace_back(name);
  return names;
}

void validate(const Options& options) {
  if (to_string(options.method) == "unknown") {
    throw UsageError(fmt::format("method must be one of {}, got tag {}",
                                 fmt::join(method_names(), ", "),
                                 static_cast<int>(options.method)));
  }
  if (!(options.density > 0.0 && options.density <= 1.0)) {
    throw UsageError(fmt::format("density must be in (0, 1], got {}", options.density));
  }
  if (options.levels < 1 || options.levels > detail::kMaxLevels) {
    throw UsageError(
        fmt::format("levels must be in [1, {}], got {}", detail::kMaxLevels, options.levels));
  }
  if (options.qsgd_bucket > std::numeric_limits<uint32_t>::max()) {
    throw UsageError(fmt::format("qsgd_bucket must be at most {} (0: the whole tensor), got {}",
                                 std::numeric_limits<uint32_t>::max(), options.qsgd_bucket));
  }
  if (options.rank < 1) {
    throw UsageError(fmt::format("rank must be at least 1, got {}", options.rank));
  }
  if (!(options.momentum >= 0.0 && options.momentum < 1.0)) {
    throw UsageError(fmt::format("momentum must be in [0, 1), got {}", options.momentum));
  }
  if (options.warmup_steps < 0) {
    throw UsageError(fmt::format("warmup_steps must be at least 0, got {}", options.warmup_steps));
  }
  if (!(options.min_compression_rate >= 0.0 && std::isfinite(options.min_compression_rate))) {
    throw UsageError(fmt::format("min_compression_rate must be finite and at least 0, got {}",
                                 options.min_compression_rate));
  }
}

// ---------------------------------------------------------------- Compressor

Compressor::Compressor(Options options, std::vector<TensorLayout> layouts)
    : options_(options), layouts_(std::move(layouts)), residuals_(layouts_.size()) {}

const TensorLayout& Compressor::layout(size_t tensor) const {
  if (tensor >= layouts_.size()) {
    throw UsageError(fmt::format("{} compressor: tensor {} out of range ({} tensors)",
                                 to_string(method()), tensor, layouts_.size()));
  }
  return layouts_[tensor];
}

bool Compressor::compresses(size_t tensor) const {
  return layout(tensor).numel() >= options_.min_size;
}

void Compressor::check_tensor(size_t tensor, size_t floats) const {
  const TensorLayout& l = layout(tensor);
  if (floats != l.numel()) {
    throw UsageError(
        fmt::format("{} compressor: tensor {} ({} x {}) has {} floats, the gradient {}",
                    to_string(method()), tensor, l.rows, l.cols, l.numel(), floats));
  }
  if (!compresses(tensor)) {
    throw UsageError(fmt::format(
        "{} compressor: tensor {} ({} x {}) is not compressed (compresses() is false); send it "
        "dense",
        to_string(method()), tensor, l.rows, l.cols));
  }
}

void Compressor::check_reduce(std::span<const size_t> tensors,
                              std::span<const std::span<float>> grads) const {
  if (tensors.size() != grads.size()) {
    throw UsageError(fmt::format("{} compressor: reduce() of {} tensors got {} gradients",
                                 to_string(method()), tensors.size(), grads.size()));
  }
  std::vector<bool> seen(layouts_.size(), false);
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_tensor(tensors[i], grads[i].size());
    if (seen[tensors[i]]) {
      throw UsageError(fmt::format("{} compressor: reduce() names tensor {} twice",
                                   to_string(method()), tensors[i]));
    }
    seen[tensors[i]] = true;
  }
}

bool Compressor::keeps_residual() const {
  switch (method()) {
    case Method::kTopK:
    case Method::kRandomK:
    case Method::kSign:
    case Method::kPowerSgd:
      return options_.error_feedback;
    default:
      return false;
  }
}

std::vector<float>& Compressor::residual(size_t tensor) {
  std::vector<float>& r = residuals_[tensor];
  if (r.empty() && keeps_residual()) r.assign(layouts_[tensor].numel(), 0.0f);
  return r;
}

void Compressor::add_state(std::string kind, std::vector<std::vector<float>>* per_tensor) {
  per_tensor->resize(layouts_.size());
  extra_state_.emplace_back(std::move(kind), per_tensor);
}

size_t Compressor::state_floats(std::string_view kind, size_t tensor) const {
  if (kind == "residual" && !keeps_residual()) return 0;
  return layouts_[tensor].numel();
}

std::vector<std::pair<std::string, std::vector<std::vector<float>>*>> Compressor::all_state() {
  auto all = extra_state_;
  all.insert(all.begin(), {"residual", &residuals_});
  return all;
}

State Compressor::save() const {
  State state;
  state.metadata["method"] = std::string(to_string(method()));
  state.metadata["tensors"] = std::to_string(layouts_.size());
  state.metadata["layouts"] = layouts_text(layouts_);
  auto add = [&](const std::string& kind, const std::vector<std::vector<float>>& per_tensor) {
    for (size_t t = 0; t < per_tensor.size(); ++t) {
      if (!per_tensor[t].empty())
        state.arrays.emplace_back(fmt::format("{}/{}", kind, t), per_tensor[t]);
    }
  };
  add("residual", residuals_);
  for (const auto& [kind, per_tensor] : extra_state_) add(kind, *per_tensor);
  return state;
}

void Compressor::load(const State& state) {
  const std::string name(to_string(method()));
  auto meta = [&](const std::string& key) {
    const auto it = state.metadata.find(key);
    return it == state.metadata.end() ? std::string("(none)") : it->second;
  };
  if (meta("method") != name) {
    throw UsageError(
        fmt::format("{} compressor: cannot load the state of method '{}'", name, meta("method")));
  }
  const std::string layouts = layouts_text(layouts_);
  if (meta("tensors") != std::to_string(layouts_.size()) || meta("layouts") != layouts) {
    throw UsageError(fmt::format(
        "{} compressor: the state's {} tensors ({}) do not match this compressor's {} ({})", name,
        meta("tensors"), meta("layouts"), layouts_.size(), layouts));
  }
  // Everything is checked into fresh arrays first: a refused state changes nothing.
  auto targets = all_state();
  std::vector<std::vector<std::vector<float>>> fresh(
      targets.size(), std::vector<std::vector<float>>(layouts_.size()));
  for (const auto& [array_name, values] : state.arrays) {
    const size_t slash = array_name.find('/');
    const std::string_view kind = std::string_view(array_name).substr(0, slash);
    size_t k = 0;
    while (k < targets.size() && targets[k].first != kind) ++k;
    size_t tensor = 0;
    const char* first = array_name.data() + slash + 1;
    const char* last = array_name.data() + array_name.size();
    const bool parsed = slash != std::string::npos && first != last &&
                        std::from_chars(first, last, tensor).ptr == last;
    if (k == targets.size() || !parsed || tensor >= layouts_.size() ||
        state_floats(kind, tensor) == 0) {
      throw UsageError(
          fmt::format("{} compressor: the state's array '{}' is not one of this compressor's", name,
                      array_name));
    }
    const size_t expected = state_floats(kind, tensor);
    if (values.size() != expected || !fresh[k][tensor].empty()) {
      throw UsageError(
          fmt::format("{} compressor: the state's array '{}' has {} floats, expected {} (once)",
                      name, array_name, values.size(), expected));
    }
    fresh[k][tensor] = values;
  }
  for (size_t k = 0; k < targets.size(); ++k) *targets[k].second = std::move(fresh[k]);
}

void Compressor::reset() {
  for (auto& [kind, per_tensor] : all_state()) {
    for (auto& values : *per_tensor) {
      values.clear();
      values.shrink_to_fit();
    }
  }
}

// ---------------------------------------------------------------- factory

std::unique_ptr<Compressor> make_compressor(const Options& options,
                                            std::vector<TensorLayout> layouts) {
  validate(options);
  for (size_t t = 0; t < layouts.size(); ++t) {
    const TensorLayout& l = layouts[t];
    if (l.rows > std::numeric_limits<uint32_t>::max() ||
        l.cols > std::numeric_limits<uint32_t>::max() ||
        (l.cols != 0 && l.rows > std::numeric_limits<uint32_t>::max() / l.cols)) {
      throw UsageError(fmt::format(
          "{} compressor: tensor {} ({} x {}) has more than 2^32 - 1 floats (u32 indices)",
          to_string(options.method), t, l.rows, l.cols));
    }
  }
  switch (options.method) {
    case Method::kFp16:
    case Method::kBf16:
      return detail::make_half_compressor(options, std::move(layouts));
    case Method::kTopK:
      return detail::make_topk_compressor(options, std::move(layouts));
    case Method::kRandomK:
      return detail::make_randomk_compressor(options, std::move(layouts));
    case Method::kQsgd:
      return detail::make_qsgd_compressor(options, std::move(layouts));
    case Method::kSign:
      return detail::make_sign_compressor(options, std::move(layouts));
    case Method::kPowerSgd:
      return detail::make_powersgd_compressor(options, std::move(layouts));
    case Method::kNone:
      break;
  }
  throw UsageError("method 'none' has no compressor: send the gradients dense");
}

// ---------------------------------------------------------------- messages

namespace detail {

void write_header(ByteWriter& out, Method method, const TensorLayout& layout) {
  out.write_u8(static_cast<uint8_t>(method));
  out.write_u32(static_cast<uint32_t>(layout.rows));
  out.write_u32(static_cast<uint32_t>(layout.cols));
}

uint64_t mix_seed(std::initializer_list<uint64_t> words) {
  auto finalise = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  uint64_t h = 0x6a09e667f3bcc909ULL;
  for (const uint64_t w : words) h = finalise(h + 0x9e3779b97f4a7c15ULL + finalise(w));
  return h;
}

void throw_bad_field(const ByteReader& reader, size_t at, Method method, std::string_view field,
                     const std::string& problem) {
  throw DataError(fmt::format("{}: {} message, field '{}' at offset {}: {}", reader.context(),
                              to_string(method), field, at, problem));
}

void check_finite(const ByteReader& reader, size_t at, Method method, std::string_view field,
                  std::span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw_bad_field(reader, at + 4 * i, method, field,
                      fmt::format("value {} of {} is {}, not finite", i, values.size(), values[i]));
    }
  }
}

void decode_one(ByteReader& reader, const TensorLayout& layout, float weight, std::span<float> out,
                bool to_end) {
  const size_t at = reader.offset();
  const uint8_t tag = reader.read_u8("method");
  const auto method = static_cast<Method>(tag);
  if (tag == 0 || to_string(method) == "unknown") {
    throw DataError(
        fmt::format("{}: field 'method' at offset {}: unknown method tag {} (known: {})",
                    reader.context(), at, tag, fmt::join(method_names(), ", ")));
  }
  const size_t rows_at = reader.offset();
  const uint32_t rows = reader.read_u32("rows");
  const uint32_t cols = reader.read_u32("cols");
  if (rows != layout.rows || cols != layout.cols) {
    throw_bad_field(reader, rows_at, method, "rows, cols",
                    fmt::format("the message is for a {} x {} tensor, the receiver's is {} x {}",
                                rows, cols, layout.rows, layout.cols));
  }
  switch (method) {
    case Method::kFp16:
    case Method::kBf16:
      decode_half_body(reader, method, layout, weight, out, to_end);
      return;
    case Method::kTopK:
      decode_topk_body(reader, layout, weight, out, to_end);
      return;
    case Method::kRandomK:
      decode_randomk_body(reader, layout, weight, out, to_end);
      return;
    case Method::kQsgd:
      decode_qsgd_body(reader, layout, weight, out, to_end);
      return;
    case Method::kSign:
      decode_sign_body(reader, layout, weight, out, to_end);
      return;
    case Method::kPowerSgd:
      decode_powersgd_body(reader, layout, weight, out, to_end);
      return;
    case Method::kNone:
      break;
  }
}

void sum_allgathered(Group& group, std::span<const std::byte> mine, Method method,
                     std::span<const TensorLayout> layouts,
                     std::span<const std::span<float>> grads) {
  const std::vector<std::vector<std::byte>> all = group.allgather_bytes(mine);
  const std::string operation = fmt::format("{} reduce", to_string(method));
  if (all.size() != static_cast<size_t>(group.size())) {
    throw CommError(
        -1, operation,
        fmt::format("allgather returned {} messages for {} ranks", all.size(), group.size()));
  }
  for (const auto& g : grads) std::fill(g.begin(), g.end(), 0.0f);
  for (size_t r = 0; r < all.size(); ++r) {
    ByteReader reader(all[r], fmt::format("{}: message of rank {}", operation, r));
    try {
      for (size_t i = 0; i < grads.size(); ++i) {
        // A peer's message must be of this method too.
        if (reader.remaining() > 0 &&
            std::to_integer<uint8_t>(reader.rest()[0]) != static_cast<uint8_t>(method)) {
          throw_bad_field(reader, reader.offset(), method, "method",
                          fmt::format("tag {}, expected {}", std::to_integer<int>(reader.rest()[0]),
                                      static_cast<int>(method)));
        }
        decode_one(reader, layouts[i], 1.0f, grads[i], /*to_end=*/false);
      }
      reader.expect_end("messages");
    } catch (const DataError& e) {
      throw CommError(static_cast<int>(r), operation, e.what());
    }
  }
}

size_t kept_count(double density, size_t n) {
  if (n == 0) return 0;
  const double k = std::ceil(density * static_cast<double>(n));
  return std::clamp<size_t>(static_cast<size_t>(k), 1, n);
}

}  // namespace detail

void decode_add(std::span<const std::byte> message, const TensorLayout& layout, float weight,
                std::span<float> out, std::string_view context) {
  if (out.size() != layout.numel()) {
    throw UsageError(fmt::format("{}: decode_add() into {} floats for a {} x {} tensor", context,
                                 out.size(), layout.rows, layout.cols));
  }
  ByteReader reader(message, std::string(context));
  detail::decode_one(reader, layout, weight, out, /*to_end=*/true);
}

}  // namespace dtrain::compress
