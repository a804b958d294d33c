// Key files: the job secret kept in a private file instead of the
// environment (docs/security.md, "Where the keys come from").
//
// A key file is two lines of text, written by `dtrain keygen FILE`:
//   dtrain job secret v1
//   <64 lowercase hex digits: 32 bytes from libsodium's randombytes_buf>
// (a final newline optional). The secret a process uses is the 64-digit text
// itself, the same form as the secret dtrain's launcher makes, so a key file
// and `DTRAIN_JOB_SECRET=<its second line>` are the same job secret.
//
// read_key_file() refuses, with a ConfigError that names the file (as ssh
// does for a private key):
//   - a missing file, or one that is not a regular file;
//   - a file owned by another user;
//   - a file readable or writable by group or others ("run `chmod 600 F`");
//   - a malformed file: empty, a wrong first line (another format or
//     version), a key of the wrong length (a truncated file), a character
//     that is not a hex digit, anything after the key.
// The mode and owner are checked on the open descriptor (fstat), so a file
// swapped in between the check and the read is not read.
//
// What the mode check protects: another local user reading the secret from
// the file. What it does not: root, the same user's other processes (they can
// read each other's memory anyway), copies of the file elsewhere (backups, a
// shared file system whose server ignores modes).
//
// Thread safety: pure functions; read_key_file() does file I/O only.
// Blocking: only for the file system's reads.
#pragma once

#include <string>
#include <string_view>

namespace dtrain::comm::wire {

// The first line of every key file of this format.
inline constexpr std::string_view kKeyFileHeader = "dtrain job secret v1";
// Hex digits of the key: 32 random bytes.
inline constexpr size_t kKeyFileHexDigits = 64;
// Longest key file read (a bound, far above the 86 bytes of a real one).
inline constexpr size_t kMaxKeyFileBytes = 4096;

// A new job secret: 32 bytes of libsodium's randombytes_buf, as 64 lowercase
// hex digits. InternalError when libsodium cannot initialise.
std::string new_job_secret();

// The text of a key file holding `secret` (64 hex digits, see above).
std::string key_file_text(std::string_view secret);

// The secret in a key file's text; ConfigError naming `where` (the file)
// and what is wrong.
std::string parse_key_file(std::string_view text, const std::string& where);

// Reads, checks (see above) and parses the key file at `path`. `named_by`
// says where the path came from, for the messages ("DTRAIN_KEY_FILE",
// "security.key_file in job.toml").
std::string read_key_file(const std::string& path, const std::string& named_by);

}  // namespace dtrain::comm::wire
