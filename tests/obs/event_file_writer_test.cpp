#include "obs/event_file_writer.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <sstream>
#include <string>

#include "io/file_system.h"
#include "obs/tensorboard_event.h"
#include "obs/tfrecord.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"

namespace dtrain::obs {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string framed(const std::string& event) {
  std::string out;
  append_tfrecord(out, event);
  return out;
}

TEST(EventFileWriter, NamesTheFileAndWritesTheVersionFirst) {
  testing::TempDir dir;
  const std::string folder = dir.file("a/b");  // created
  EventFileWriter writer(folder, 1700000000.25);
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(writer.path(), folder + "/events.out.tfevents.1700000000." + std::string(host) + "." +
                               std::to_string(getpid()) + ".0");
  // The version event is on disk before anything else is added.
  EXPECT_EQ(read_all(writer.path()), framed(encode_file_version_event(1700000000.25)));
  EXPECT_EQ(writer.bytes_written(), framed(encode_file_version_event(1700000000.25)).size());
}

TEST(EventFileWriter, FlushWritesTheRecordsInOrder) {
  testing::TempDir dir;
  EventFileWriter writer(dir.path(), 10.0);
  const float values[] = {1.0f, -2.0f, 3.0f};
  writer.add_scalar("train/loss", 0.75f, 3, 11.0);
  writer.add_histogram("weights/fc1.weight", values, 3, 11.5);
  const std::string before = read_all(writer.path());
  EXPECT_EQ(before, framed(encode_file_version_event(10.0)));  // buffered until flush
  writer.flush();
  EXPECT_EQ(
      read_all(writer.path()),
      before + framed(encode_scalar_event("train/loss", 0.75f, 3, 11.0)) +
          framed(encode_histogram_event("weights/fc1.weight", make_histogram(values), 3, 11.5)));
}

TEST(EventFileWriter, DestructorFlushes) {
  testing::TempDir dir;
  std::string path;
  {
    EventFileWriter writer(dir.path(), 10.0);
    writer.add_scalar("x", 1.0f, 1, 10.0);
    path = writer.path();
  }
  EXPECT_EQ(read_all(path), framed(encode_file_version_event(10.0)) +
                                framed(encode_scalar_event("x", 1.0f, 1, 10.0)));
}

TEST(EventFileWriter, TwoWritersInOneSecondGetTwoFiles) {
  testing::TempDir dir;
  EventFileWriter first(dir.path(), 5.0);
  EventFileWriter second(dir.path(), 5.5);
  EXPECT_NE(first.path(), second.path());
  EXPECT_EQ(second.path().substr(second.path().size() - 2), ".1");
  EXPECT_EQ(io::default_file_system().list_directory(dir.path()).size(), 2u);
}

TEST(EventFileWriter, AFolderThatCannotBeCreatedIsNamed) {
  testing::TempDir dir;
  std::ofstream(dir.file("plain")) << "a file, not a folder";
  // Under a regular file no folder can be made, whoever runs the test (root too).
  testing::expect_error<io::FileError>(
      [&] { EventFileWriter writer(dir.file("plain/tensorboard"), 1.0); },
      "create directory " + dir.file("plain/tensorboard") + ": Not a directory");
}

TEST(EventFileWriter, AFileThatCannotBeCreatedIsNamed) {
  // /proc is a folder in which nobody, root included, can create a file.
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  testing::expect_error<io::FileError>([&] { EventFileWriter writer("/proc", 1.0); },
                                       "create /proc/events.out.tfevents.1." + std::string(host) +
                                           "." + std::to_string(getpid()) +
                                           ".0: No such file or directory");
}

TEST(EventFileWriter, AFailedWriteIsNamed) {
  // A file-size limit makes write(2) fail with EFBIG once the file reaches it
  // (SIGXFSZ ignored); limit and handler are restored afterwards.
  testing::TempDir dir;
  EventFileWriter writer(dir.path(), 1.0);
  const uint64_t version_bytes = writer.bytes_written();
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limit = saved;
  limit.rlim_cur = version_bytes;  // no byte more
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  writer.add_scalar("x", 1.0f, 1, 2.0);
  std::string message;
  try {
    writer.flush();
  } catch (const io::FileError& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, saved_handler);
  EXPECT_EQ(message, "write " + writer.path() + ": File too large");
  EXPECT_EQ(writer.bytes_written(), version_bytes);
  // What failed is dropped; later records are written again.
  writer.add_scalar("y", 2.0f, 2, 3.0);
  writer.flush();
  EXPECT_EQ(read_all(writer.path()), framed(encode_file_version_event(1.0)) +
                                         framed(encode_scalar_event("y", 2.0f, 2, 3.0)));
}

}  // namespace
}  // namespace dtrain::obs
