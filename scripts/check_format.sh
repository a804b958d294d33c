#!/usr/bin/env bash
# Fails when a C++ file of the repository differs from what clang-format
# (.clang-format: Google style, 100 columns) makes of it, naming the files.
# Fix with: git ls-files '*.h' '*.cpp' '*.cc' | xargs clang-format -i
# Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.h' '*.cpp' '*.cc')
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/dtrain-format.$$; then
  echo "format: these files differ from clang-format's output:" >&2
  grep ': error:' /tmp/dtrain-format.$$ | cut -d: -f1 | sort -u | sed 's/^/  /' >&2
  echo "fix with: git ls-files '*.h' '*.cpp' '*.cc' | xargs clang-format -i" >&2
  rm -f /tmp/dtrain-format.$$
  exit 1
fi
rm -f /tmp/dtrain-format.$$
echo "format: ${#files[@]} files as clang-format writes them"
