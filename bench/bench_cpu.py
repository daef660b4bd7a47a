"""CPU benchmark of dropout_ext against torch: `python bench/bench_cpu.py` (or `make bench`).

Prints tables and writes bench/results/cpu.json (and cpu.png). Throughput is counted as
numel * element_size * 2 bytes (one read, one write) per forward for every contender, so
GB/s ratios are time ratios; x * 2.0 is the memory ceiling (SPEC section 5).
"""
import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, saved_bytes, table, with_storage  # noqa: E402

import dropout_ext  # noqa: E402
from dropout_ext import _backend  # noqa: E402
from dropout_ext import functional as F  # noqa: E402

P = 0.5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gbs(n, dtype, seconds, passes=1):
    return round(passes * 2 * n * torch.empty((), dtype=dtype).element_size() / seconds / 1e9, 2)


def forward_contenders(x, with_compile):
    y = torch.empty_like(x)
    fns = {
        "x * 2.0": lambda: x * 2.0,
        # the same multiply into a reused tensor: no page faults, pure bandwidth
        "mul(out=)": lambda: torch.mul(x, 2.0, out=y),
        "torch dropout": lambda: torch.nn.functional.dropout(x, P),
        "dropout_ext": lambda: F.dropout(x, P),
    }
    if with_compile:
        compiled = torch.compile(lambda t: torch.nn.functional.dropout(t, P), dynamic=False)
        fns["torch.compile dropout"] = lambda: compiled(x)
    return fns


def fwd_bwd(fn, x, g):
    def run():
        xr = x.detach().requires_grad_()
        fn(xr).backward(g)
    return run


def bench_size(n, dtype_name, reps, with_compile):
    dtype = DTYPES[dtype_name]
    x = torch.randn(n, dtype=dtype)
    g = torch.randn(n, dtype=dtype)
    fwd = interleaved(forward_contenders(x, with_compile), reps)
    bwd = interleaved({
        "x * 2.0": fwd_bwd(lambda t: t * 2.0, x, g),
        "torch dropout": fwd_bwd(lambda t: torch.nn.functional.dropout(t, P), x, g),
        "dropout_ext (seed)": with_storage("seed", fwd_bwd(lambda t: F.dropout(t, P), x, g)),
        "dropout_ext (bits)": with_storage("bits", fwd_bwd(lambda t: F.dropout(t, P), x, g)),
    }, reps)
    xr = x.detach().requires_grad_()
    saved = {
        "torch dropout": saved_bytes(lambda: torch.nn.functional.dropout(xr, P)),
        "dropout_ext (seed)": with_storage("seed", lambda: saved_bytes(lambda: F.dropout(xr, P)))(),
        "dropout_ext (bits)": with_storage("bits", lambda: saved_bytes(lambda: F.dropout(xr, P)))(),
    }
    row = {
        "dtype": dtype_name, "numel": "2^%d" % (n.bit_length() - 1), "n": n,
        "threads": torch.get_num_threads(),
        "fwd GB/s x*2": gbs(n, dtype, fwd["x * 2.0"]),
        "fwd GB/s mul(out=)": gbs(n, dtype, fwd["mul(out=)"]),
        "fwd GB/s torch": gbs(n, dtype, fwd["torch dropout"]),
        "fwd GB/s ours": gbs(n, dtype, fwd["dropout_ext"]),
        "ours/x*2": round(fwd["x * 2.0"] / fwd["dropout_ext"], 2),
        "ours/torch": round(fwd["torch dropout"] / fwd["dropout_ext"], 1),
        "f+b ms torch": round(bwd["torch dropout"] * 1e3, 2),
        "f+b ms seed": round(bwd["dropout_ext (seed)"] * 1e3, 2),
        "f+b ms bits": round(bwd["dropout_ext (bits)"] * 1e3, 2),
        "f+b speedup": round(bwd["torch dropout"] / min(bwd["dropout_ext (seed)"], bwd["dropout_ext (bits)"]), 1),
        "saved B torch": saved["torch dropout"],
        "saved B seed": saved["dropout_ext (seed)"],
        "saved B bits": saved["dropout_ext (bits)"],
        "raw_seconds": {"forward": fwd, "forward_backward": bwd},
    }
    if with_compile:
        row["fwd GB/s compile"] = gbs(n, dtype, fwd["torch.compile dropout"])
    return row


def bench_family(reps, with_compile, n=1 << 24):
    """Each family op against its torch equivalent, float32, p=0.5: fused ops against
    torch's eager and torch.compile'd composition; channel-wise against x * 2.0."""
    x = torch.randn(n)
    r = torch.randn(n).view(-1, 1024)
    xv = x.view(-1, 1024)
    b = torch.randn(1024)
    x4 = x.view(64, -1, 16, 16)
    cases = {
        "dropout_add": {
            "ours": lambda: F.dropout_add(xv, r, P),
            "torch eager": lambda: r + torch.nn.functional.dropout(xv, P),
            "torch.compile": None,
        },
        "bias_dropout_add": {
            "ours": lambda: F.bias_dropout_add(xv, b, r, P),
            "torch eager": lambda: r + torch.nn.functional.dropout(xv + b, P),
            "torch.compile": None,
        },
        "dropout2d (64,C,16,16)": {
            "ours": lambda: F.dropout2d(x4, P),
            "torch eager": lambda: torch.nn.functional.dropout2d(x4, P),
            "x * 2.0": lambda: x4 * 2.0,
        },
        "drop_path (64,...)": {
            "ours": lambda: F.drop_path(x4, P),
            # timm's drop_path
            "torch eager": lambda: x4 * x4.new_empty(64, 1, 1, 1).bernoulli_(1 - P).div_(1 - P),
            "x * 2.0": lambda: x4 * 2.0,
        },
        "alpha_dropout": {
            "ours": lambda: F.alpha_dropout(x, P, True),
            "torch eager": lambda: torch.nn.functional.alpha_dropout(x, P, True),
        },
    }
    if with_compile:
        da = torch.compile(lambda x_, r_: r_ + torch.nn.functional.dropout(x_, P), dynamic=False)
        bda = torch.compile(lambda x_, b_, r_: r_ + torch.nn.functional.dropout(x_ + b_, P), dynamic=False)
        cases["dropout_add"]["torch.compile"] = lambda: da(xv, r)
        cases["bias_dropout_add"]["torch.compile"] = lambda: bda(xv, b, r)
    rows = []
    for name, fns in cases.items():
        fns = {k: v for k, v in fns.items() if v is not None}
        t = interleaved(fns, reps)
        row = {"op": name, "ms ours": round(t["ours"] * 1e3, 2), "ms torch eager": round(t["torch eager"] * 1e3, 2),
               "ours vs eager": "%.1fx" % (t["torch eager"] / t["ours"])}
        if "torch.compile" in t:
            row["ms torch.compile"] = round(t["torch.compile"] * 1e3, 2)
            row["ours vs compile"] = "%.1fx" % (t["torch.compile"] / t["ours"])
        if "x * 2.0" in t:
            row["ms x*2"] = round(t["x * 2.0"] * 1e3, 2)
            row["ours/x*2"] = round(t["x * 2.0"] / t["ours"], 2)
        rows.append(row)
    return rows


def bench_isas(n, dtype_name, reps):
    """Forward of each CPU path in one interleaved run."""
    dtype = DTYPES[dtype_name]
    x = torch.randn(n, dtype=dtype)
    isas = _backend.cpu_isas_supported()

    def on(isa):
        def run():
            _backend.cpu_isa(isa)
            return F.dropout(x, P)
        return run

    old = _backend.cpu_isa()
    try:
        fns = {"x * 2.0": lambda: x * 2.0}
        fns.update({isa: on(isa) for isa in isas})
        t = interleaved(fns, reps)
    finally:
        _backend.cpu_isa(old)
    row = {"dtype": dtype_name, "numel": "2^%d" % (n.bit_length() - 1), "threads": torch.get_num_threads(),
           "x*2 GB/s": gbs(n, dtype, t["x * 2.0"])}
    for isa in isas:
        row[isa + " GB/s"] = gbs(n, dtype, t[isa])
        row[isa + "/x*2"] = round(t["x * 2.0"] / t[isa], 2)
    return row


def bench_curve(sizes, reps, with_compile):
    """float32 forward GB/s against size, for the plot."""
    curve = []
    for n in sizes:
        x = torch.randn(n)
        t = interleaved(forward_contenders(x, with_compile), reps)
        curve.append({"n": n, **{k: gbs(n, torch.float32, v) for k, v in t.items()}})
    return curve


def plot(curve, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [k for k in curve[0] if k != "n"]
    for name in names:
        ax.plot([c["n"] for c in curve], [c[name] for c in curve], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements (float32)")
    ax.set_ylabel("GB/s (2 x numel x 4 bytes / time)")
    ax.set_title("CPU forward dropout, p=0.5, %d threads" % torch.get_num_threads())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="20,24,26", help="log2 sizes for the main table")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile contenders")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes, few reps (smoke test)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.no_compile = "12,14", 3, True
    sizes = [1 << int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    os.makedirs(args.out, exist_ok=True)
    default_threads = torch.get_num_threads()
    info = {
        "cpu": cpu_model(), "threads": default_threads, "torch": torch.__version__,
        "cpu_isa": _backend.cpu_isa(), "backends": dropout_ext.compiled_backends(),
        "backward_storage_default": dropout_ext.backward_storage(),
    }
    print("dropout_ext CPU bench: %(cpu)s, %(threads)d threads, torch %(torch)s, ISA %(cpu_isa)s" % info)

    main_rows = [bench_size(n, d, args.reps, not args.no_compile) for d in dtypes for n in sizes]
    cols = ["dtype", "numel", "fwd GB/s x*2", "fwd GB/s mul(out=)", "fwd GB/s torch", "fwd GB/s ours", "ours/x*2", "ours/torch"]
    if not args.no_compile:
        cols.insert(5, "fwd GB/s compile")
    print("\nForward (p=0.5, %d threads)" % default_threads)
    print(table(main_rows, cols))
    print("\nForward + backward, and bytes saved for backward")
    print(table(main_rows, ["dtype", "numel", "f+b ms torch", "f+b ms seed", "f+b ms bits", "f+b speedup",
                            "saved B torch", "saved B seed", "saved B bits"]))

    family_rows = bench_family(args.reps, not args.no_compile, n=max(sizes) if args.quick else 1 << 24)
    print("\nDropout family, float32, 2^%d elements, p=0.5" % ((max(sizes) if args.quick else 1 << 24).bit_length() - 1))
    print(table(family_rows, ["op", "ms ours", "ms torch eager", "ms torch.compile", "ms x*2", "ours vs eager",
                              "ours vs compile", "ours/x*2"]))

    isa_rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for d in dtypes:
            for n in sizes:
                isa_rows.append(bench_isas(n, d, args.reps))
    torch.set_num_threads(default_threads)
    isa_cols = ["dtype", "numel", "threads", "x*2 GB/s"]
    for isa in _backend.cpu_isas_supported():
        isa_cols += [isa + " GB/s", isa + "/x*2"]
    print("\nForward by CPU path and thread count")
    print(table(isa_rows, isa_cols))

    result = {"info": info, "main": main_rows, "family": family_rows, "isa": isa_rows}
    if not args.no_plot:
        curve_sizes = [1 << k for k in range(14, 27, 2)] if not args.quick else sizes
        result["curve"] = bench_curve(curve_sizes, args.reps, not args.no_compile)
        png = plot(result["curve"], os.path.join(args.out, "cpu.png"))
        if png:
            print("\nplot: %s" % png)
    path = os.path.join(args.out, "cpu.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("figures: %s" % path)
    return result


if __name__ == "__main__":
    main()
