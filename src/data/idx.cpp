#include "data/idx.h"

#include <fmt/format.h>

#include <span>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::data {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;

// A validated IDX file: extents and where the elements start.
struct IdxFile {
  std::string bytes;
  std::vector<uint32_t> dims;
  size_t data_offset = 0;
};

IdxFile open_idx(const std::string& path, uint32_t magic, const char* kind, io::FileSystem& fs) {
  IdxFile file;
  file.bytes = io::read_input_file(fs, path, io::kMaxDataFileBytes, "IDX file");
  const std::string_view bytes = file.bytes;
  if (bytes.size() < 4) {
    throw DataError(
        fmt::format("{}: {} bytes, too short for the 4-byte IDX magic", path, bytes.size()));
  }
  // IDX is big-endian by its specification: the one big-endian layout
  // dtrain reads (core/byte_codec.h).
  ByteReader r(std::as_bytes(std::span(bytes.data(), bytes.size())), path);
  const uint32_t got = r.read_u32_be("magic");
  if (got != magic) {
    throw DataError(fmt::format("{}: magic 0x{:08x}, expected 0x{:08x} (IDX {} of unsigned bytes)",
                                path, got, magic, kind));
  }
  const size_t ndims = magic & 0xff;
  file.data_offset = 4 + 4 * ndims;
  if (bytes.size() < file.data_offset) {
    throw DataError(fmt::format("{}: truncated header: {} bytes, the {} extents need {}", path,
                                bytes.size(), ndims, file.data_offset));
  }
  constexpr uint64_t kMaxElements = uint64_t{1} << 40;
  uint64_t elements = 1;
  for (size_t d = 0; d < ndims; ++d) {
    const uint32_t extent = r.read_u32_be("extent");
    file.dims.push_back(extent);
    if (extent != 0 && elements > kMaxElements / extent) {
      throw DataError(fmt::format("{}: extents declare more than 2^40 elements", path));
    }
    elements *= extent;
  }
  const uint64_t have = bytes.size() - file.data_offset;
  if (have < elements) {
    throw DataError(
        fmt::format("{}: truncated: the header declares {} {} ({} bytes of data), "
                    "the file holds {} bytes",
                    path, file.dims[0], kind, elements, have));
  }
  if (have > elements) {
    throw DataError(
        fmt::format("{}: {} unexpected bytes after the {} bytes of data the header "
                    "declares",
                    path, have - elements, elements));
  }
  return file;
}

int64_t take(uint32_t count, int64_t limit) {
  return limit > 0 && limit < count ? limit : static_cast<int64_t>(count);
}

Tensor convert_images(const IdxFile& file, const IdxOptions& options) {
  const int64_t n = take(file.dims[0], options.limit);
  const int64_t rows = file.dims[1];
  const int64_t cols = file.dims[2];
  Tensor images = Tensor::empty({n, 1, rows, cols});
  // One multiply-add per pixel: x = p * scale + shift.
  const float scale = options.normalize ? 1.0f / (255.0f * options.stddev) : 1.0f / 255.0f;
  const float shift = options.normalize ? -options.mean / options.stddev : 0.0f;
  const auto* pixels = reinterpret_cast<const unsigned char*>(file.bytes.data() + file.data_offset);
  float* out = images.data();
  const int64_t count = n * rows * cols;
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(pixels[i]) * scale + shift;
  return images;
}

std::vector<int64_t> convert_labels(const std::string& path, const IdxFile& file,
                                    const IdxOptions& options) {
  const int64_t n = take(file.dims[0], options.limit);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  const auto* bytes = reinterpret_cast<const unsigned char*>(file.bytes.data() + file.data_offset);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = bytes[i];
    if (labels[i] >= options.num_classes) {
      throw DataError(fmt::format("{}: label {} of sample {} is outside [0, {})", path, labels[i],
                                  i, options.num_classes));
    }
  }
  return labels;
}

}  // namespace

Tensor read_idx_images(const std::string& path, const IdxOptions& options, io::FileSystem& fs) {
  return convert_images(open_idx(path, kImagesMagic, "images", fs), options);
}

std::vector<int64_t> read_idx_labels(const std::string& path, const IdxOptions& options,
                                     io::FileSystem& fs) {
  return convert_labels(path, open_idx(path, kLabelsMagic, "labels", fs), options);
}

TensorDataset read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                               const IdxOptions& options, io::FileSystem& fs) {
  const IdxFile images = open_idx(images_path, kImagesMagic, "images", fs);
  const IdxFile labels = open_idx(labels_path, kLabelsMagic, "labels", fs);
  if (images.dims[0] != labels.dims[0]) {
    throw DataError(fmt::format("{} holds {} images but {} holds {} labels", images_path,
                                images.dims[0], labels_path, labels.dims[0]));
  }
  return TensorDataset(convert_images(images, options),
                       convert_labels(labels_path, labels, options), options.num_classes);
}

TensorDataset load_mnist(const std::string& dir, MnistSplit split, const IdxOptions& options,
                         io::FileSystem& fs) {
  const std::string prefix = split == MnistSplit::kTrain ? "train" : "t10k";
  const std::string images = io::join_path(dir, prefix + "-images-idx3-ubyte");
  const std::string labels = io::join_path(dir, prefix + "-labels-idx1-ubyte");
  for (const std::string& path : {images, labels}) {
    if (!fs.exists(path)) {
      throw DataError(
          fmt::format("MNIST file {} not found; run scripts/fetch_mnist.sh {} to "
                      "download MNIST",
                      path, dir));
    }
  }
  return read_idx_dataset(images, labels, options, fs);
}

}  // namespace dtrain::data
