"""Register and spill counts of dropout_ext's CUDA kernels from a build log made with
`-Xptxas -v` (bench/gpu_check.sh sets NVCC_APPEND_FLAGS="-Xptxas -v").

  python tools/ptxas_summary.py build.log [--all] [--match dropout_ext]

Prints one line per kernel and architecture: registers, spill stores/loads, stack frame;
kernels with spills first, then by register count. Names are demangled with c++filt when
it is installed.
"""
import argparse
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
PROPS = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")


def parse(lines):
    kernels = {}
    current = None
    props_for = None
    for line in lines:
        m = ENTRY.search(line)
        if m:
            current = m.groups()
            kernels.setdefault(current, {})
            continue
        m = PROPS.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = FRAME.search(line)
        if m and current and props_for == current[0]:
            kernels[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = USED.search(line)
        if m and current:
            kernels[current]["regs"] = int(m.group(1))
    return kernels


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def shorten(name, width=150):
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[:width - 3] + "..."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--match", default="dropout_ext", help="keep kernels whose mangled name contains this")
    ap.add_argument("--all", action="store_true", help="every kernel, not only the first 25")
    args = ap.parse_args(argv)
    with open(args.log, errors="replace") as f:
        kernels = {k: v for k, v in parse(f).items() if args.match in k[0]}
    if not kernels:
        print("ptxas: no '-Xptxas -v' output for %s kernels in %s" % (args.match, args.log))
        return 0
    names = demangle(sorted({k[0] for k in kernels}))
    rows = sorted(kernels.items(), key=lambda kv: (-(kv[1].get("spill_st", 0) + kv[1].get("spill_ld", 0)),
                                                   -kv[1].get("regs", 0), names[kv[0][0]]))
    spilling = sum(1 for _, v in rows if v.get("spill_st", 0) or v.get("spill_ld", 0))
    regs = [v.get("regs", 0) for _, v in rows]
    print("ptxas: %d kernel builds, registers %d..%d, %d with spills" % (len(rows), min(regs), max(regs), spilling))
    print("%-6s %5s %9s %9s %6s  %s" % ("arch", "regs", "spill st", "spill ld", "stack", "kernel"))
    for (name, arch), v in rows if args.all else rows[:25]:
        print("%-6s %5s %9s %9s %6s  %s" % (arch, v.get("regs", "?"), v.get("spill_st", "?"), v.get("spill_ld", "?"),
                                             v.get("stack", "?"), shorten(names[name])))
    if not args.all and len(rows) > 25:
        print("(%d more; --all lists every one)" % (len(rows) - 25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
