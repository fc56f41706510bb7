#!/usr/bin/env python3
"""Per-request instructions by function, from two callgrind runs of the same plan with
different request counts (bench/lib/ir.sh): (Ir(large) - Ir(small)) / (large - small) for each
function, so start-up and shutdown cancel out.

usage: irdiff.py CG_SMALL N_SMALL CG_LARGE N_LARGE [--inclusive] [TOP]
"""
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$")


def per_function(path, inclusive):
    args = ["callgrind_annotate", "--auto=no", "--threshold=100", path]
    if inclusive:
        args.insert(1, "--inclusive=yes")
    out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    funcs = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("???") else name
        funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return funcs


def main():
    small, n_small, large, n_large = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    inclusive = "--inclusive" in sys.argv
    rest = [a for a in sys.argv[5:] if a != "--inclusive"]
    top = int(rest[0]) if rest else 40
    a, b = per_function(small, inclusive), per_function(large, inclusive)
    n = n_large - n_small
    rows = sorted(((b.get(k, 0) - a.get(k, 0)) / n, k) for k in set(a) | set(b))
    rows.reverse()
    for ir, name in rows[:top]:
        print(f"{ir:9.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
