// Crash-safe replacement of a whole file: the one place in dtrain that makes
// a file durable (leveldb's SetCurrentFile pattern).
//
// write_file_atomic(fs, path, data):
//   1. write `data` to "<path>.tmp-<16 random hex digits>" in the same directory;
//   2. fsync that file (its bytes are durable before anyone can see them);
//   3. rename it over `path` (atomic: readers see the old file or the new one);
//   4. fsync the directory (the rename itself is durable);
//   5. remove stale "<name>.tmp-*" files that an earlier crashed writer left.
// A crash (process or power) at any point leaves `path` holding either its
// old content (or absence) or the complete new content, never a mix. Readers
// ignore temporary names (is_temporary_file()); the next writer cleans them.
//
// Thread safety: concurrent writers of the SAME path are not supported (the
// last rename wins and step 5 may remove the other's temporary file); distinct
// paths are independent. Errors: a failed step throws the FileSystem's
// FileError after removing this call's temporary file where possible; `path`
// is then unchanged. A failure in step 5 is ignored (the files are garbage
// either way). Blocking: as long as the writes and fsyncs take.
#pragma once

#include <string>
#include <string_view>

#include "io/file_system.h"

namespace dtrain::io {

void write_file_atomic(FileSystem& fs, const std::string& path, std::string_view data);

// True for names the atomic writer uses for its temporary files.
bool is_temporary_file(std::string_view name);

}  // namespace dtrain::io
