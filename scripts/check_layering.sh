#!/usr/bin/env bash
# Fails when the code and the module table of docs/architecture.md disagree:
#  - a module includes a header of a module it may not use (the table's
#    direct entries, not their closure: nn may use autograd, tensor and optim,
#    not io through anything);
#  - a module's CMake target links another dtrain module than the table lists,
#    or includes a module it does not link itself (so that no dependency
#    hides behind another module's PUBLIC link or the shared include root).
# Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# module -> the modules it may use directly (everything may use core).
declare -A allowed=(
  [core]=""
  [tensor]=""
  [autograd]="tensor"
  [nn]="autograd tensor optim"
  [optim]="tensor"
  [io]="tensor"
  [data]="tensor io"
  [comm]=""
  [compress]=""
  [privacy]=""
  [ps]="comm compress optim tensor"
  [strategy]="nn autograd tensor optim io comm compress ps data privacy"
  [ft]="io comm tensor"
  [fl]="nn autograd tensor optim comm compress data io privacy"
  [obs]="io tensor"
  [train]="strategy ft fl obs data io nn autograd tensor optim comm privacy"
  [cli]="train obs io comm"
)

status=0
for dir in src/*/; do
  module=$(basename "$dir")
  if [[ ! -v "allowed[$module]" ]]; then
    echo "layering: src/$module is not in the module table (scripts/check_layering.sh, docs/architecture.md)" >&2
    status=1
    continue
  fi
  ok=" core $module ${allowed[$module]} "
  used_modules=" "
  # 1. Includes.
  while IFS= read -r line; do
    file=${line%%:*}
    used=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$line")
    used_modules+="$used "
    if [[ "$ok" != *" $used "* ]]; then
      echo "layering: $file includes $used/, which $module may not use (${allowed[$module]:-core only})" >&2
      status=1
    fi
  done < <(grep -rHE --include='*.h' --include='*.cpp' --include='*.cc' '^#include "[a-z_]+/' "src/$module" || true)
  # 2. CMake link lines: every dtrain_<m> in the module's CMakeLists is allowed.
  cmake="src/$module/CMakeLists.txt"
  [[ -f "$cmake" ]] || continue
  links=" $(grep -oE 'dtrain_[a-z_]+' "$cmake" | sort -u | tr '\n' ' ') "
  for m in $(tr ' ' '\n' <<<"$used_modules" | sort -u); do
    [[ -z "$m" || "$m" == core || "$m" == "$module" ]] && continue
    if [[ "$links" != *" dtrain_$m "* ]]; then
      echo "layering: src/$module includes $m/ but $cmake does not link dtrain_$m" >&2
      status=1
    fi
  done
  for linked in $links; do
    m=${linked#dtrain_}
    [[ "$m" == "add_module" || "$m" == "$module" || "$m" == comm_mpi || "$m" == HAVE_MPI ]] && continue
    if [[ "$ok" != *" $m "* ]]; then
      echo "layering: $cmake links $linked, which $module may not use (${allowed[$module]:-core only})" >&2
      status=1
    fi
  done
done
[[ $status -eq 0 ]] && echo "layering: every include and link line follows the module table"
exit $status
