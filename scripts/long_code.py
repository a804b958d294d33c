#!/usr/bin/python3
"""Lists source files over 600 lines and functions over 80 lines under src/.

A function is a brace block opened at namespace level (or a class's member
defined in its class body) by a line that looks like a signature; its length
is the lines from the signature to the closing brace. Heuristic, for trends.
Usage: scripts/long_code.py [ROOT]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
SIG = re.compile(r"^\s*[\w:<>,~*&\s\[\]]+\([^;]*$|^\s*[\w:<>,~*&\s\[\]]+\(.*\)\s*(const)?\s*(override)?\s*(noexcept)?\s*(->\s*[\w:<>]+)?\s*\{\s*$")
long_files, long_funcs = [], []
for d, _, files in os.walk(os.path.join(root, "src")):
    for f in files:
        if not f.endswith((".cpp", ".h", ".cc")):
            continue
        path = os.path.join(d, f)
        lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
        rel = os.path.relpath(path, root)
        if len(lines) > 600:
            long_files.append((len(lines), rel))
        # brace matching, ignoring braces in strings and comments (roughly)
        depth = 0
        stack = []
        for i, line in enumerate(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', line.split("//")[0])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            for ch in code:
                if ch == "{":
                    # a function body: the signature is on this line or just above
                    head = " ".join(lines[max(0, i - 3):i + 1])
                    is_fn = re.search(r"\)\s*(const)?\s*(override)?\s*(noexcept)?\s*(->\s*[\w:<>]+)?\s*(:[^{]*)?\{", head) and \
                        not re.search(r"\b(if|for|while|switch|catch|return)\b\s*\(", lines[i]) and \
                        not re.search(r"=\s*\[|\]\s*\(|\[[^\]]*\]\s*\{", code) and \
                        not re.search(r"^\s*(class|struct|namespace|enum|union)\b|^\s*(\}\s*)?(else|do|try)\b", lines[i])
                    stack.append((i, bool(is_fn) and not any(s[1] for s in stack)))
                elif ch == "}" and stack:
                    start, fn = stack.pop()
                    if fn and i - start + 1 > 80:
                        sig = " ".join(lines[max(0, start - 3):start + 1])
                        names = re.findall(r"([\w:~]+)\s*\(", sig)
                        names = [n for n in names if n not in ("if", "for", "while", "switch", "catch")]
                        long_funcs.append((i - start + 1, rel, names[0] if names else "?", start + 1))
print(f"files over 600 lines: {len(long_files)}")
for n, p in sorted(long_files, reverse=True):
    print(f"  {n:5d} {p}")
print(f"functions over 80 lines: {len(long_funcs)}")
for n, p, name, line in sorted(long_funcs, reverse=True):
    print(f"  {n:5d} {p}:{line} {name}")
