#include "train/model_builder.h"

#include <fmt/format.h>

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
    throw ConfigError(source, fmt::format("model.layers[{}]", index), layer.line,
                      fmt::format("{} '{}' needs {} input, got {}{}", layer.type, layer.name, what,
                                  shape_str(input),
                                  rank == 2 ? " (add a flatten layer before it)" : ""));
  }
}

void require_positive(const LayerConfig& layer, const std::string& source, int64_t index,
                      const char* field, int64_t value) {
  if (value <= 0) {
    throw ConfigError(source, fmt::format("model.layers[{}].{}", index, field), layer.line,
                      fmt::format("{} '{}' needs a positive {}", layer.type, layer.name, field));
  }
}

std::unique_ptr<nn::Module> make_layer(const LayerConfig& layer, const Shape& input, Rng& rng,
                                       const std::string& source, int64_t index) {
  const std::string& t = layer.type;
  if (t == "linear") {
    require_rank(layer, source, index, input, 2, "a (batch, features)");
    require_positive(layer, source, index, "out_features", layer.out_features);
    const int64_t in = resolve(layer, source, index, "in_features", layer.in_features, input[1], input);
    return std::make_unique<nn::Linear>(in, layer.out_features, rng, layer.bias);
  }
  if (t == "conv2d") {
    require_rank(layer, source, index, input, 4, "a (batch, channels, height, width)");
    require_positive(layer, source, index, "out_channels", layer.out_channels);
    require_positive(layer, source, index, "kernel", layer.kernel);
    const int64_t in = resolve(layer, source, index, "in_channels", layer.in_channels, input[1], input);
    return std::make_unique<nn::Conv2d>(in, layer.out_channels, layer.kernel, rng,
                                        layer.stride == 0 ? 1 : layer.stride, layer.padding,
                                        layer.bias);
  }
  if (t == "maxpool2d" || t == "avgpool2d") {
    require_positive(layer, source, index, "kernel", layer.kernel);
    const int64_t stride = layer.stride == 0 ? layer.kernel : layer.stride;
    if (t == "maxpool2d") return std::make_unique<nn::MaxPool2d>(layer.kernel, stride, layer.padding);
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

}  // namespace

std::unique_ptr<nn::Sequential> build_model(const ModelConfig& config, Rng& rng,
                                            const std::string& source) {
  auto model = std::make_unique<nn::Sequential>();
  Shape shape{1};
  shape.insert(shape.end(), config.input_shape.begin(), config.input_shape.end());
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
