// resolve_job_secret(): where a process's job secret comes from (a key
// file named by the job or by DTRAIN_KEY_FILE, or DTRAIN_JOB_SECRET), the one
// decision every process makes before it builds its JobAuth
// (docs/security.md, "Where the keys come from").
//
// Thread safety: no shared state. Blocking: the key file's read. Errors:
// ConfigError, as below.
#pragma once

#include <string>

#include "comm/rendezvous/launch_env.h"

namespace dtrain::comm {

// The one place that decides a process's job secret (docs/security.md,
// "Where the keys come from"); every process calls it before it makes a
// JobAuth. Sources, in `settings` as resolve_launch_settings() read them and
// in the job file:
//   - a key file, named by the job (`job_key_file`: security.key_file, as
//     written, relative to the working directory like every path of a job
//     file; `job_file` names the job file in messages) or by DTRAIN_KEY_FILE;
//   - DTRAIN_JOB_SECRET (what dtrain's launcher makes for a run without a
//     key file, or what a user exports).
// Rules: with a key file, the secret is the file's (read_key_file() checks
// its owner, mode and format); the job's file and DTRAIN_KEY_FILE may both be
// given only when they name the same file; DTRAIN_JOB_SECRET may be set as
// well only when it equals the file's secret. Without a key file the secret
// is DTRAIN_JOB_SECRET, possibly empty (the caller then refuses to run, or
// runs --insecure). On return settings.job_secret holds the secret and
// settings.key_file the key file's absolute path ("" none). Throws
// ConfigError naming both sources of a conflict, or naming the key file and
// the fix for an unreadable, unsafe or malformed one. Blocking: the file's read.
void resolve_job_secret(LaunchSettings& settings, const std::string& job_key_file,
                        const std::string& job_file);

}  // namespace dtrain::comm
