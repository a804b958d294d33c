#include "train/model_builder.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "core/error.h"
#include "nn/activation.h"
#include "nn/batch_norm.h"
#include "nn/conv2d.h"
#include "nn/dropout.h"
#include "nn/embedding.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/pooling.h"

namespace dtrain::train {

namespace {

// Checks an explicit size from the job file against the inferred one.
int64_t resolve(const LayerConfig& layer, const std::string& source, int64_t layer_index,
                const char* field, int64_t given, int64_t inferred, const Shape& input) {
  if (given != 0 && given != inferred) {
    throw ConfigError(source, fmt::format("model.layers[{}].{}", layer_index, field), layer.line,
                      fmt::format("{} '{}': input {} does not match {} {}", layer.type, layer.name,
                                  shape_str(input), field, given));
  }
  return inferred;
}

void require_rank(const LayerConfig& layer, const std::string& source, int64_t index,
                  const Shape& input, size_t rank, const char* what) {
  if (input.size() != rank) {
    throw ConfigError(
        source, fmt::format("model.layers[{}]", index), layer.line,
        fmt::format("{} '{}' needs {} input, got {}{}", layer.type, layer.name, what,
                    shape_str(input), rank == 2 ? " (add a flatten layer before it)" : ""));
  }
}

void require_positive(const LayerConfig& layer, const std::string& source, int64_t index,
                      const char* field, int64_t value) {
  if (value <= 0) {
    throw ConfigError(source, fmt::format("model.layers[{}].{}", index, field), layer.line,
                      fmt::format("{} '{}' needs a positive {}", layer.type, layer.name, field));
  }
}

constexpr uint64_t kSaturated = std::numeric_limits<uint64_t>::max();

// a * b and a + b, saturating instead of wrapping.
uint64_t mul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? kSaturated : r;
}
uint64_t add(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  return __builtin_add_overflow(a, b, &r) ? kSaturated : r;
}

// Elements of a shape, saturating; nullopt when an extent is not positive
// (other checks report that).
std::optional<uint64_t> elements(const Shape& shape) {
  uint64_t n = 1;
  for (const int64_t extent : shape) {
    if (extent <= 0) return std::nullopt;
    n = mul(n, static_cast<uint64_t>(extent));
  }
  return n;
}

// The float32 values a layer allocates, and the field of the job file that
// sizes them ("" when the input does).
struct LayerSize {
  uint64_t values = 0;
  const char* field = "";
};

// Computed from the config and the input shape before the layer exists.
// Configurations make_layer() refuses (a wrong rank, a size <= 0) count 0.
LayerSize layer_size(const LayerConfig& layer, const Shape& input) {
  const auto positive = [](int64_t v) { return static_cast<uint64_t>(std::max<int64_t>(v, 0)); };
  const std::string& t = layer.type;
  if (t == "linear" && input.size() == 2) {
    const uint64_t in = positive(input[1]), out = positive(layer.out_features);
    return {add(mul(in, out), layer.bias ? out : 0), "out_features"};
  }
  if (t == "conv2d" && input.size() == 4) {
    const uint64_t in = positive(input[1]), out = positive(layer.out_channels);
    const uint64_t k = positive(layer.kernel);
    return {add(mul(mul(out, in), mul(k, k)), layer.bias ? out : 0), "out_channels"};
  }
  if (t == "embedding") {
    return {mul(positive(layer.num_embeddings), positive(layer.embedding_dim)), "num_embeddings"};
  }
  // weight, bias, running mean and variance per channel
  if ((t == "batchnorm1d" && input.size() == 2) || (t == "batchnorm2d" && input.size() == 4)) {
    return {mul(4, positive(input[1])), ""};
  }
  return {};
}

std::string layer_key(int64_t index, const char* field) {
  return *field ? fmt::format("model.layers[{}].{}", index, field)
                : fmt::format("model.layers[{}]", index);
}

// Refuses a layer that would take more than kMaxModelBytes, alone or with the
// layers before it (`total_bytes`, updated).
void check_layer_size(const LayerConfig& layer, const Shape& input, const std::string& source,
                      int64_t index, uint64_t& total_bytes) {
  const LayerSize size = layer_size(layer, input);
  const uint64_t bytes = mul(size.values, sizeof(float));
  const std::string values =
      size.values == kSaturated ? "more than 2^64" : fmt::format("{}", size.values);
  const std::string needed =
      bytes == kSaturated ? "more than 2^64 bytes" : fmt::format("{} bytes", bytes);
  if (bytes > kMaxModelBytes) {
    throw ConfigError(
        source, layer_key(index, size.field), layer.line,
        fmt::format("{} '{}' would have {} parameters for input {}, needing {}; "
                    "a model may take at most {} bytes (64 GiB)",
                    layer.type, layer.name, values, shape_str(input), needed, kMaxModelBytes));
  }
  total_bytes = add(total_bytes, bytes);
  if (total_bytes > kMaxModelBytes) {
    throw ConfigError(source, layer_key(index, size.field), layer.line,
                      fmt::format("with {} '{}' the model's parameters would need {} bytes; a "
                                  "model may take at most {} bytes (64 GiB)",
                                  layer.type, layer.name, total_bytes, kMaxModelBytes));
  }
}

// Refuses a sample shape (the input, or a layer's output) over kMaxModelBytes.
void check_sample_size(const Shape& shape, const std::string& source, const std::string& key,
                       int64_t line, const std::string& what) {
  const std::optional<uint64_t> n = elements(shape);
  if (!n) return;
  const uint64_t bytes = mul(*n, sizeof(float));
  if (bytes > kMaxModelBytes) {
    throw ConfigError(source, key, line,
                      fmt::format("{} {} would need {} per sample; at most {} bytes (64 GiB) are "
                                  "allowed",
                                  what, shape_str(shape),
                                  bytes == kSaturated ? std::string("more than 2^64 bytes")
                                                      : fmt::format("{} bytes", bytes),
                                  kMaxModelBytes));
  }
}

std::unique_ptr<nn::Module> make_layer(const LayerConfig& layer, const Shape& input, Rng& rng,
                                       const std::string& source, int64_t index) {
  const std::string& t = layer.type;
  if (t == "linear") {
    require_rank(layer, source, index, input, 2, "a (batch, features)");
    require_positive(layer, source, index, "out_features", layer.out_features);
    const int64_t in =
        resolve(layer, source, index, "in_features", layer.in_features, input[1], input);
    return std::make_unique<nn::Linear>(in, layer.out_features, rng, layer.bias);
  }
  if (t == "conv2d") {
    require_rank(layer, source, index, input, 4, "a (batch, channels, height, width)");
    require_positive(layer, source, index, "out_channels", layer.out_channels);
    require_positive(layer, source, index, "kernel", layer.kernel);
    const int64_t in =
        resolve(layer, source, index, "in_channels", layer.in_channels, input[1], input);
    return std::make_unique<nn::Conv2d>(in, layer.out_channels, layer.kernel, rng,
                                        layer.stride == 0 ? 1 : layer.stride, layer.padding,
                                        layer.bias);
  }
  if (t == "maxpool2d" || t == "avgpool2d") {
    require_positive(layer, source, index, "kernel", layer.kernel);
    const int64_t stride = layer.stride == 0 ? layer.kernel : layer.stride;
    if (t == "maxpool2d")
      return std::make_unique<nn::MaxPool2d>(layer.kernel, stride, layer.padding);
    return std::make_unique<nn::AvgPool2d>(layer.kernel, stride, layer.padding);
  }
  if (t == "batchnorm1d") {
    require_rank(layer, source, index, input, 2, "a (batch, features)");
    return std::make_unique<nn::BatchNorm1d>(input[1]);
  }
  if (t == "batchnorm2d") {
    require_rank(layer, source, index, input, 4, "a (batch, channels, height, width)");
    return std::make_unique<nn::BatchNorm2d>(input[1]);
  }
  if (t == "embedding") {
    require_positive(layer, source, index, "num_embeddings", layer.num_embeddings);
    require_positive(layer, source, index, "embedding_dim", layer.embedding_dim);
    return std::make_unique<nn::Embedding>(layer.num_embeddings, layer.embedding_dim, rng);
  }
  if (t == "relu") return std::make_unique<nn::ReLU>();
  if (t == "sigmoid") return std::make_unique<nn::Sigmoid>();
  if (t == "tanh") return std::make_unique<nn::Tanh>();
  if (t == "gelu") return std::make_unique<nn::GELU>();
  if (t == "flatten") return std::make_unique<nn::Flatten>();
  if (t == "dropout") return std::make_unique<nn::Dropout>(layer.p, rng);
  throw ConfigError(source, fmt::format("model.layers[{}].type", index), layer.line,
                    fmt::format("unknown layer type '{}'", t));
}

bool has_parameters(const std::string& type) {
  return type == "linear" || type == "conv2d" || type == "embedding" || type == "batchnorm1d" ||
         type == "batchnorm2d";
}

// What a layer with parameters will output for `input`, computed from its
// config as the layer computes it, without allocating the layer; nullopt when
// the config does not fit `input` (the building pass reports that).
std::optional<Shape> parameter_layer_output(const LayerConfig& layer, const Shape& input) {
  const std::string& t = layer.type;
  if (t == "linear") {
    if (input.size() != 2 || layer.out_features <= 0) return std::nullopt;
    if (layer.in_features != 0 && layer.in_features != input[1]) return std::nullopt;
    return Shape{input[0], layer.out_features};
  }
  if (t == "conv2d") {
    constexpr int64_t kMaxPadding = int64_t{1} << 31;  // keeps the sums below from overflowing
    const int64_t stride = layer.stride == 0 ? 1 : layer.stride;
    if (input.size() != 4 || layer.out_channels <= 0 || layer.kernel <= 0 || stride <= 0 ||
        layer.padding < 0 || layer.padding > kMaxPadding) {
      return std::nullopt;
    }
    if (layer.in_channels != 0 && layer.in_channels != input[1]) return std::nullopt;
    const int64_t h = input[2] + 2 * layer.padding, w = input[3] + 2 * layer.padding;
    if (h < layer.kernel || w < layer.kernel) return std::nullopt;
    return Shape{input[0], layer.out_channels, (h - layer.kernel) / stride + 1,
                 (w - layer.kernel) / stride + 1};
  }
  if (t == "embedding") {
    if (layer.num_embeddings <= 0 || layer.embedding_dim <= 0) return std::nullopt;
    Shape out = input;
    out.push_back(layer.embedding_dim);
    return out;
  }
  if ((t == "batchnorm1d" && input.size() == 2) || (t == "batchnorm2d" && input.size() == 4)) {
    return input;
  }
  return std::nullopt;
}

// The size pass, before any layer with parameters exists: the input, every
// layer's parameters (alone and in total) and every layer's output. Layers
// without parameters are built (they allocate nothing) from a scratch Rng, so
// that the job's Rng draws the same weights as without this pass. Stops at
// the first layer that does not fit its input; building reports it.
void check_sizes(const ModelConfig& config, Shape shape, const std::string& source) {
  check_sample_size(shape, source, "model.input_shape", 0, "the input");
  Rng scratch(0);
  uint64_t total_bytes = 0;
  int64_t index = 0;
  for (const LayerConfig& layer : config.layers) {
    check_layer_size(layer, shape, source, index, total_bytes);
    std::optional<Shape> next;
    if (has_parameters(layer.type)) {
      next = parameter_layer_output(layer, shape);
    } else {
      try {
        next = make_layer(layer, shape, scratch, source, index)->output_shape(shape);
      } catch (const Error&) {
        // The building pass throws the same error with its context.
      }
    }
    if (!next) return;
    check_sample_size(*next, source, fmt::format("model.layers[{}]", index), layer.line,
                      fmt::format("the output of {} '{}'", layer.type, layer.name));
    shape = std::move(*next);
    ++index;
  }
}

}  // namespace

std::unique_ptr<nn::Sequential> build_model(const ModelConfig& config, Rng& rng,
                                            const std::string& source) {
  auto model = std::make_unique<nn::Sequential>();
  Shape shape{1};
  shape.insert(shape.end(), config.input_shape.begin(), config.input_shape.end());
  check_sizes(config, shape, source);
  int64_t index = 0;
  for (const LayerConfig& layer : config.layers) {
    std::unique_ptr<nn::Module> created = make_layer(layer, shape, rng, source, index);
    nn::Module* module = nullptr;
    try {
      module = &model->add(layer.name, std::move(created));
    } catch (const UsageError& e) {
      throw ConfigError(source, fmt::format("model.layers[{}].name", index), layer.line, e.what());
    }
    try {
      shape = module->output_shape(shape);  // named now: messages say "linear 'fc2'"
    } catch (const UsageError& e) {
      throw ConfigError(source, fmt::format("model.layers[{}]", index), layer.line, e.what());
    }
    ++index;
  }
  return model;
}

}  // namespace dtrain::train
