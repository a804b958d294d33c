#include "comm/wire/key_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace dtrain::comm::wire {

namespace {

bool is_hex_digit(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// Closes a descriptor on every path out of read_key_file.
class OpenFile {
 public:
  explicit OpenFile(int fd) : fd_(fd) {}
  ~OpenFile() {
    if (fd_ >= 0) close(fd_);
  }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string new_job_secret() {
  if (sodium_init() < 0) throw InternalError("libsodium failed to initialise");
  std::array<unsigned char, kKeyFileHexDigits / 2> bytes{};
  randombytes_buf(bytes.data(), bytes.size());
  std::array<char, kKeyFileHexDigits + 1> hex{};
  sodium_bin2hex(hex.data(), hex.size(), bytes.data(), bytes.size());
  sodium_memzero(bytes.data(), bytes.size());
  std::string secret(hex.data(), kKeyFileHexDigits);
  sodium_memzero(hex.data(), hex.size());
  return secret;
}

std::string key_file_text(std::string_view secret) {
  return fmt::format("{}\n{}\n", kKeyFileHeader, secret);
}

std::string parse_key_file(std::string_view text, const std::string& where) {
  const auto bad = [&](const std::string& problem) {
    return ConfigError(
        fmt::format("{}: {} (make a new one with `dtrain keygen FILE`)", where, problem));
  };
  if (text.empty()) throw bad("the file is empty");
  const size_t end_of_header = text.find('\n');
  const std::string_view header = text.substr(0, end_of_header);
  if (header != kKeyFileHeader) {
    throw bad(fmt::format("its first line is not '{}' (not a dtrain key file, or another version)",
                          kKeyFileHeader));
  }
  if (end_of_header == std::string_view::npos) throw bad("it has no key after its first line");
  std::string_view key = text.substr(end_of_header + 1);
  if (!key.empty() && key.back() == '\n') key.remove_suffix(1);
  for (size_t i = 0; i < key.size(); ++i) {
    if (key[i] == '\n') throw bad("it has more than two lines (something after the key)");
    if (!is_hex_digit(key[i])) {
      throw bad(fmt::format("character {} of the key is not a lowercase hex digit", i + 1));
    }
  }
  if (key.size() != kKeyFileHexDigits) {
    throw bad(fmt::format("its key has {} hex digits, not {}{}", key.size(), kKeyFileHexDigits,
                          key.size() < kKeyFileHexDigits ? " (truncated?)" : ""));
  }
  return std::string(key);
}

std::string read_key_file(const std::string& path, const std::string& named_by) {
  const std::string where = fmt::format("key file '{}' ({})", path, named_by);
  const auto bad = [&](const std::string& problem) {
    return ConfigError(fmt::format("{}: {}", where, problem));
  };
  // Non-blocking: a FIFO without a writer fails the type check, not the open.
  const OpenFile file(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (file.get() < 0) throw bad(std::strerror(errno));
  struct stat st {};
  if (fstat(file.get(), &st) != 0) throw bad(fmt::format("fstat: {}", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw bad("not a regular file");
  if (st.st_uid != geteuid()) {
    throw bad(fmt::format("owned by uid {}, not by this user (uid {}): it holds the job secret",
                          st.st_uid, geteuid()));
  }
  if ((st.st_mode & 077) != 0) {
    throw bad(fmt::format(
        "its mode {:04o} lets group or others {} it, and it holds the job secret: run "
        "`chmod 600 {}`",
        st.st_mode & 07777, (st.st_mode & 044) != 0 ? "read" : "write or execute", path));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxKeyFileBytes) {
    throw bad(fmt::format("{} bytes: not a key file (those are under {} bytes)", st.st_size,
                          kMaxKeyFileBytes));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t filled = 0;
  while (filled < text.size()) {
    const ssize_t n = ::read(file.get(), text.data() + filled, text.size() - filled);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw bad(fmt::format("read: {}", std::strerror(errno)));
    if (n == 0) break;
    filled += static_cast<size_t>(n);
  }
  text.resize(filled);
  std::string secret = parse_key_file(text, where);
  sodium_memzero(text.data(), text.size());
  return secret;
}

}  // namespace dtrain::comm::wire
