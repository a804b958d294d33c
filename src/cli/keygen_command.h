// `dtrain keygen FILE [--force]`: writes a new key file, a fresh job secret
// for jobs across hosts (comm/wire/key_file.h, docs/security.md).
//
// The file is written crash-safely (io/atomic_file.h) with mode 0600: the
// process's umask is 077 while it writes, so neither the temporary file nor
// the result is ever readable by anyone else. An existing FILE is kept (a
// UsageError, exit 2) unless --force: it may be the key of a running job.
// The check and the rename are not one atomic step; a FILE created between
// them by another process is replaced.
//
// Errors: UsageError as above; io::FileError when the file cannot be
// written. Thread safety: changes the process's umask while it writes, so it
// must run alone (the command does). Blocking: file I/O only.
#pragma once

#include <CLI/CLI.hpp>
#include <ostream>
#include <string>

namespace dtrain::cli {

struct KeygenOptions {
  std::string file;
  bool force = false;  // --force: replace an existing file
};

CLI::App* add_keygen_command(CLI::App& app, KeygenOptions& options);

// Writes the key file and prints one line naming it and how a job uses it.
int run_keygen(const KeygenOptions& options, std::ostream& out);

}  // namespace dtrain::cli
