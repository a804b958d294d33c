#include "cli/keygen_command.h"

#include <fmt/format.h>
#include <fmt/ostream.h>
#include <sodium.h>
#include <sys/stat.h>

#include "comm/wire/key_file.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/file_system.h"

namespace dtrain::cli {

namespace {

// Sets the process's umask for one scope and restores it.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : previous_(umask(mask)) {}
  ~ScopedUmask() { umask(previous_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t previous_;
};

}  // namespace

CLI::App* add_keygen_command(CLI::App& app, KeygenOptions& options) {
  CLI::App* cmd = app.add_subcommand(
      "keygen",
      "Write a new job secret to a key file (mode 0600) for jobs across hosts: name it in the "
      "job ([security] key_file) or in DTRAIN_KEY_FILE");
  cmd->add_option("file", options.file, "The key file to write")->required();
  cmd->add_flag("--force", options.force, "Replace the file if it exists");
  return cmd;
}

int run_keygen(const KeygenOptions& options, std::ostream& out) {
  io::FileSystem& fs = io::default_file_system();
  if (fs.exists(options.file) && !options.force) {
    throw UsageError(fmt::format(
        "{} exists; it may be the key of a running job: pass --force to replace it", options.file));
  }
  std::string text = comm::wire::key_file_text(comm::wire::new_job_secret());
  {
    const ScopedUmask private_files(077);
    io::write_file_atomic(fs, options.file, text);
  }
  sodium_memzero(text.data(), text.size());
  fmt::print(out,
             "wrote {} (mode 0600): a new job secret; name it in the job ([security] key_file = "
             "\"{}\") or in DTRAIN_KEY_FILE on every host (docs/security.md)\n",
             options.file, options.file);
  return 0;
}

}  // namespace dtrain::cli
