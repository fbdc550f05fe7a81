"""Offline GPU readiness of the compiled CUDA kernels: registers, spills, shared memory and SASS instruction
counts per kernel and architecture, read from the built extension with cuobjdump (no GPU needed).

    python bench/sass_stats.py [--lib ee_cuda/_C*.so] [--cuobjdump PATH] [--json PATH]

``--lib`` takes the built extension or any object file nvcc made from ``csrc/cuda``.

``cuobjdump`` (and the ``nvdisasm`` it calls) come with a CUDA toolkit, or from the pip packages
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` (put the folder holding ``nvdisasm`` on ``PATH``).
Per kernel of this extension (those of namespace ``ee``): SASS instructions in all, and those of its
innermost loop, the smallest span closed by a backward branch that holds floating-point work (the candidate
loop of a search).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = re.compile(r"^_ZN2ee")  # kernels of namespace ee (this extension's)
FLOAT_OPS = re.compile(r"\b(FFMA|FADD|FMUL|FMNMX|FSETP|DFMA|DADD|DMUL|DSETP|FSEL)\b")


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def demangled_kernel(name: str) -> str:
    m = re.search(r"\d+((?:ee_cuda_)?[a-z_]+_kernel)", name)
    base = m.group(1) if m else name
    # template arguments of the mangled name: f = float, d = double, N3c104HalfE / N3c108BFloat16E = half types
    types = [("Half" if "Half" in t else "BFloat16" if "BFloat16" in t else {"f": "float", "d": "double"}.get(t, t))
             for t in re.findall(r"(N3c104HalfE|N3c108BFloat16E|(?<=I)[fd]|(?<=[fd])[fd](?=E))", name)]
    return f"{base}<{', '.join(types)}>" if types else base


def our_lines(text, function_pattern):
    """``(arch, mangled name, line)`` for each line of cuobjdump's ``text`` inside a function of ours, the
    function's header line included."""
    arch = name = None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.search(function_pattern, line)
        if m:
            name = m.group(1)
        if name and OURS.match(name):
            yield arch, name, line


def resource_usage(lib, cuobjdump):
    """{(arch, mangled name): {"registers", "stack", "shared", "local"}} from ``cuobjdump -res-usage``."""
    usage = {}
    for arch, name, line in our_lines(run([cuobjdump, "-res-usage", lib]), r"Function (\S+):"):
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m:
            usage[(arch, name)] = dict(zip(("registers", "stack", "shared", "local"), map(int, m.groups())))
    return usage


def sass(lib, cuobjdump):
    """{(arch, mangled name): [(address, opcode text)]} from ``cuobjdump -sass``."""
    code = {}
    for arch, name, line in our_lines(run([cuobjdump, "-sass", lib]), r"Function : (\S+)"):
        if "Function : " in line:  # a header (a function inlined into several objects is listed once each)
            code[(arch, name)] = []
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            code[(arch, name)].append((int(m.group(1), 16), m.group(2).strip()))
    return code


def innermost_loop(instrs):
    """``(instructions, shared loads)`` of the smallest backward-branch span that does floating-point work
    (``(0, 0)`` if none). In a search kernel each candidate loads one point from shared memory, so their
    ratio is the instructions a candidate costs."""
    best = None
    for addr, text in instrs:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        body = [t for a, t in instrs if target <= a <= addr]
        if any(FLOAT_OPS.search(t) for t in body) and (best is None or len(body) < len(best)):
            best = body
    return (len(best), sum(1 for t in best if t.startswith("LDS"))) if best else (0, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=None, help="the built extension (default: ee_cuda/_C*.so)")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    lib = args.lib or (glob.glob(os.path.join(ROOT, "ee_cuda", "_C*.so")) or [None])[0]
    if not lib:
        sys.exit("sass_stats: no ee_cuda/_C*.so: build with FORCE_CUDA=1 first")
    usage, code = resource_usage(lib, args.cuobjdump), sass(lib, args.cuobjdump)
    rows = []
    for (arch, name), instrs in sorted(code.items(), key=lambda kv: (kv[0][0], demangled_kernel(kv[0][1]))):
        u = usage.get((arch, name), {})
        loop, loads = innermost_loop(instrs)
        rows.append({"arch": arch, "kernel": demangled_kernel(name), "mangled": name, "instructions": len(instrs),
                     "inner_loop": loop, "inner_loop_shared_loads": loads, **u})
    if not rows:
        sys.exit(f"sass_stats: no kernel of namespace ee in {lib} (built without CUDA?)")
    print("| arch | kernel | registers | spill (local bytes) | static shared | SASS instructions | innermost loop "
          "(shared loads) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | `{r['kernel']}` | {r.get('registers', '?')} | {r.get('local', '?')} | "
              f"{r.get('shared', '?')} | {r['instructions']} | {r['inner_loop']} ({r['inner_loop_shared_loads']}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
