#include "data/csv.h"

#include <gtest/gtest.h>

#include "data/class_weights.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::data {
namespace {

using dtrain::testing::TempDir;

class CsvTest : public ::testing::Test {
 protected:
  TensorDataset read(const std::string& text, const CsvOptions& options = {}) {
    io::default_file_system().write_file(path(), text);
    return read_csv(path(), options);
  }
  std::string error_of(const std::string& text, const CsvOptions& options = {}) {
    try {
      read(text, options);
    } catch (const DataError& e) {
      return e.what();
    }
    return "";
  }
  std::string path() const { return tmp_.file("d.csv"); }
  TempDir tmp_;
};

TEST_F(CsvTest, ReadsFeaturesAndTheNamedLabelColumn) {
  const TensorDataset ds = read("x1, label ,x2\r\n1.5,2,-3\n\n0,0,1e3\n");
  EXPECT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.features().shape(), (Shape{2, 2}));
  EXPECT_EQ(ds.features().to_vector(), (std::vector<float>{1.5f, -3.0f, 0.0f, 1000.0f}));
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(ds.num_classes(), 3);
}

TEST_F(CsvTest, LabelByIndexWithoutHeaderAndLimit) {
  CsvOptions options;
  options.has_header = false;
  options.label_index = -1;
  options.delimiter = ';';
  options.num_classes = 5;
  options.limit = 2;
  const TensorDataset ds = read("1;2;4\n3;4;1\n5;6;0\n", options);
  EXPECT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.features().to_vector(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(ds.num_classes(), 5);
}

TEST_F(CsvTest, EveryMalformedFileGivesTheExactError) {
  const std::string p = path();
  EXPECT_EQ(error_of("a,label\n1,x\n"),
            p + ":2: column 2 ('label'): label 'x' is not a non-negative integer");
  EXPECT_EQ(error_of("a,label\n1,2.0\n"),
            p + ":2: column 2 ('label'): label '2.0' is not a non-negative integer");
  EXPECT_EQ(error_of("a,label\n1,-1\n"),
            p + ":2: column 2 ('label'): label '-1' is not a non-negative integer");
  EXPECT_EQ(error_of("a,b,label\n1,2,0\n1,abc,0\n"),
            p + ":3: column 2 ('b'): 'abc' is not a finite number");
  EXPECT_EQ(error_of("a,b,label\n1,,0\n"), p + ":2: column 2 ('b'): '' is not a finite number");
  EXPECT_EQ(error_of("a,b,label\n1,inf,0\n"),
            p + ":2: column 2 ('b'): 'inf' is not a finite number");
  EXPECT_EQ(error_of("a,b,label\n1,2,0\n\n1,2\n"), p + ":4: 2 fields, expected 3");
  EXPECT_EQ(error_of("a,b\n1,2\n"), p + ":1: no column 'label' in the header (columns: a, b)");
  EXPECT_EQ(error_of("a,label\n"), p + ": no samples");
  EXPECT_EQ(error_of(""), p + ": no samples");
  CsvOptions no_header;
  no_header.has_header = false;
  EXPECT_EQ(error_of("1,2\n", no_header),
            p + ": label column 'label' is chosen by name, but the file has no header; give "
                "label_index instead");
  no_header.label_index = 2;
  EXPECT_EQ(error_of("1,2\n", no_header), p + ":1: label column index 2 is outside the 2 columns");
  no_header.label_index = 0;
  no_header.num_classes = 2;
  EXPECT_EQ(error_of("1,2\n2,2\n", no_header), p + ":2: column 1: label 2 is outside [0, 2)");
  EXPECT_EQ(error_of("label\n1\n"), p + ":1: 1 column, need at least one feature and the label");
  try {
    read_csv(tmp_.file("none.csv"));
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot read CSV file '" + tmp_.file("none.csv") + "': No such file or directory");
  }
}

// Issue #18: a data path that is /dev/zero, /dev/urandom or a FIFO grew
// memory without end or hung; it fails at once, as do a folder and a file
// over the limit (the default limit is io::kMaxDataFileBytes).
TEST_F(CsvTest, DevicesFifosFoldersAndOversizedFilesAreRefused) {
  for (const uint64_t limit : {uint64_t{1000}, io::kMaxDataFileBytes}) {
    for (const auto& bad : testing::hostile_paths(tmp_, limit)) {
      SCOPED_TRACE(bad.path);
      CsvOptions options;
      options.max_file_bytes = limit;
      testing::expect_error<DataError>([&] { read_csv(bad.path, options); },
                                       "cannot read CSV file '" + bad.path + "': " + bad.reason);
    }
  }
}

// Issue #18: a label of 2^40 made class weights allocate 2^40 counters
// (std::bad_alloc), and INT64_MAX overflowed "largest label + 1" (UBSan)
// with a misleading message. Labels of any length are parsed without
// overflow, and inferred class counts are bounded by kMaxClasses.
TEST_F(CsvTest, HugeLabelsAreRefusedNamingTheLineAndColumn) {
  const std::string p = path();
  EXPECT_EQ(error_of("a,label\n1,0\n2,1099511627776\n"),
            p + ":3: column 2 ('label'): label 1099511627776 is too large: at most 1048576 "
                "classes are supported (labels 0 to 1048575)");
  EXPECT_EQ(error_of("a,label\n1,9223372036854775807\n"),
            p + ":2: column 2 ('label'): label 9223372036854775807 is too large: at most 1048576 "
                "classes are supported (labels 0 to 1048575)");
  EXPECT_EQ(error_of("a,label\n1,123456789012345678901234567890\n"),
            p + ":2: column 2 ('label'): label 123456789012345678901234567890 is too large: at "
                "most 1048576 classes are supported (labels 0 to 1048575)");
  EXPECT_EQ(error_of("a,label\n1,1048576\n"),
            p + ":2: column 2 ('label'): label 1048576 is too large: at most 1048576 classes are "
                "supported (labels 0 to 1048575)");
  CsvOptions ten;
  ten.num_classes = 10;
  EXPECT_EQ(error_of("a,label\n1,99999999999999999999\n", ten),
            p + ":2: column 2 ('label'): label 99999999999999999999 is outside [0, 10)");
  EXPECT_EQ(error_of("a,label\n1,-9223372036854775808\n"),
            p + ":2: column 2 ('label'): label '-9223372036854775808' is not a non-negative "
                "integer");
  // The largest allowed label, and leading zeros.
  const TensorDataset ds = read("a,label\n1,1048575\n2,007\n");
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{1048575, 7}));
  EXPECT_EQ(ds.num_classes(), kMaxClasses);
  CsvOptions too_many;
  too_many.num_classes = kMaxClasses + 1;
  EXPECT_THROW(read("a,label\n1,0\n", too_many), UsageError);
}

}  // namespace
}  // namespace dtrain::data
