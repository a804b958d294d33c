#include "data/idx.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "testing/fault_fs.h"

namespace dtrain::data {
namespace {

using dtrain::testing::TempDir;

void put_u32_be(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}

// n images of rows x cols; pixel k of image i is (i * 7 + k) % 256.
std::string images_file(uint32_t n, uint32_t rows, uint32_t cols) {
  std::string out;
  put_u32_be(out, 0x00000803);
  put_u32_be(out, n);
  put_u32_be(out, rows);
  put_u32_be(out, cols);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t k = 0; k < rows * cols; ++k) out.push_back(static_cast<char>((i * 7 + k) % 256));
  }
  return out;
}

std::string labels_file(const std::vector<uint8_t>& labels) {
  std::string out;
  put_u32_be(out, 0x00000801);
  put_u32_be(out, static_cast<uint32_t>(labels.size()));
  for (const uint8_t label : labels) out.push_back(static_cast<char>(label));
  return out;
}

class IdxTest : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& bytes) {
    io::default_file_system().write_file(tmp_.file(name), bytes);
    return tmp_.file(name);
  }
  // The DataError message of loading these two files ("" when it loads).
  std::string error_of(const std::string& images, const std::string& labels,
                       const IdxOptions& options = {}) {
    try {
      read_idx_dataset(write("img", images), write("lbl", labels), options);
    } catch (const DataError& e) {
      return e.what();
    }
    return "";
  }
  TempDir tmp_;
};

TEST_F(IdxTest, ReadsImagesAsUnitFloatsAndLabels) {
  const TensorDataset ds =
      read_idx_dataset(write("img", images_file(3, 2, 4)), write("lbl", labels_file({3, 0, 9})));
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.features().shape(), (Shape{3, 1, 2, 4}));
  EXPECT_EQ(ds.sample_shape(), (Shape{1, 2, 4}));
  EXPECT_EQ(ds.num_classes(), 10);
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{3, 0, 9}));
  EXPECT_FLOAT_EQ(ds.features().at({1, 0, 1, 2}), static_cast<float>(7 + 6) / 255.0f);
  EXPECT_FLOAT_EQ(ds.features().at({0, 0, 0, 0}), 0.0f);
}

TEST_F(IdxTest, NormalisesAndLimits) {
  IdxOptions options;
  options.normalize = true;
  options.limit = 2;
  const TensorDataset ds = read_idx_dataset(write("img", images_file(5, 2, 2)),
                                            write("lbl", labels_file({1, 2, 3, 4, 5})), options);
  EXPECT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{1, 2}));
  const float pixel = static_cast<float>(7 + 3) / 255.0f;
  EXPECT_NEAR(ds.features().at({1, 0, 1, 1}), (pixel - 0.1307f) / 0.3081f, 1e-5f);
}

TEST_F(IdxTest, EveryMalformedFileGivesTheExactError) {
  const std::string good_images = images_file(2, 2, 2);
  const std::string good_labels = labels_file({1, 2});
  const std::string img = tmp_.file("img");
  const std::string lbl = tmp_.file("lbl");
  EXPECT_EQ(error_of(good_images, good_labels), "");
  EXPECT_EQ(error_of(good_labels, good_labels),
            img + ": magic 0x00000801, expected 0x00000803 (IDX images of unsigned bytes)");
  EXPECT_EQ(error_of(good_images, good_images),
            lbl + ": magic 0x00000803, expected 0x00000801 (IDX labels of unsigned bytes)");
  EXPECT_EQ(error_of("ab", good_labels), img + ": 2 bytes, too short for the 4-byte IDX magic");
  EXPECT_EQ(error_of(good_images.substr(0, 10), good_labels),
            img + ": truncated header: 10 bytes, the 3 extents need 16");
  EXPECT_EQ(error_of(good_images.substr(0, good_images.size() - 1), good_labels),
            img +
                ": truncated: the header declares 2 images (8 bytes of data), the file holds 7 "
                "bytes");
  EXPECT_EQ(error_of(good_images + "x", good_labels),
            img + ": 1 unexpected bytes after the 8 bytes of data the header declares");
  EXPECT_EQ(error_of(good_images, labels_file({1, 2, 3})),
            img + " holds 2 images but " + lbl + " holds 3 labels");
  EXPECT_EQ(error_of(good_images, labels_file({1, 10})),
            lbl + ": label 10 of sample 1 is outside [0, 10)");
  IdxOptions three;
  three.num_classes = 3;
  EXPECT_EQ(error_of(good_images, labels_file({1, 2}), three), "");
  EXPECT_EQ(error_of(good_images, labels_file({3, 2}), three),
            lbl + ": label 3 of sample 0 is outside [0, 3)");
  std::string huge;
  put_u32_be(huge, 0x00000803);
  for (int d = 0; d < 3; ++d) put_u32_be(huge, 0xffffffffu);
  EXPECT_EQ(error_of(huge, good_labels), img + ": extents declare more than 2^40 elements");
}

TEST_F(IdxTest, EveryTruncationIsRefused) {
  const std::string images = images_file(3, 3, 3);
  const std::string labels = labels_file({0, 1, 2});
  for (size_t size = 0; size < images.size(); ++size) {
    EXPECT_NE(error_of(images.substr(0, size), labels), "") << size;
  }
  for (size_t size = 0; size < labels.size(); ++size) {
    EXPECT_NE(error_of(images, labels.substr(0, size)), "") << size;
  }
}

TEST_F(IdxTest, MissingMnistFilesGiveTheFetchHint) {
  try {
    load_mnist(tmp_.path(), MnistSplit::kTest);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()), "MNIST file " + tmp_.file("t10k-images-idx3-ubyte") +
                                         " not found; run scripts/fetch_mnist.sh " + tmp_.path() +
                                         " to download MNIST");
  }
  write("t10k-images-idx3-ubyte", images_file(2, 28, 28));
  write("t10k-labels-idx1-ubyte", labels_file({4, 5}));
  const TensorDataset ds = load_mnist(tmp_.path(), MnistSplit::kTest);
  EXPECT_EQ(ds.features().shape(), (Shape{2, 1, 28, 28}));
}

// The real MNIST, when scripts/fetch_mnist.sh has put it in <repo>/data/mnist.
TEST(Mnist, RealFilesLoad) {
  const std::string dir = std::string(DTRAIN_SOURCE_DIR) + "/data/mnist";
  if (!std::filesystem::exists(dir + "/t10k-labels-idx1-ubyte")) {
    GTEST_SKIP() << "MNIST not in " << dir << "; run scripts/fetch_mnist.sh";
  }
  const TensorDataset test = load_mnist(dir, MnistSplit::kTest);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.sample_shape(), (Shape{1, 28, 28}));
  std::vector<int64_t> per_class(10, 0);
  for (const int64_t label : test.labels()) ++per_class.at(static_cast<size_t>(label));
  for (const int64_t count : per_class) EXPECT_GT(count, 800);  // every digit is present
  const auto pixels = test.features().span();
  EXPECT_EQ(*std::min_element(pixels.begin(), pixels.end()), 0.0f);
  EXPECT_EQ(*std::max_element(pixels.begin(), pixels.end()), 1.0f);
  EXPECT_EQ(test.labels()[0], 7);  // the first test digit of MNIST is a 7

  IdxOptions normalized;
  normalized.normalize = true;
  const TensorDataset train = load_mnist(dir, MnistSplit::kTrain, normalized);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(train.labels()[0], 5);  // and the first training digit a 5
  double sum = 0;
  for (const float v : train.features().span()) sum += v;
  EXPECT_NEAR(sum / static_cast<double>(train.features().numel()), 0.0, 1e-3);
}

}  // namespace
}  // namespace dtrain::data
