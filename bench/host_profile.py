"""Where the host time of one small dropout call goes: ours against torch's.

  python bench/host_profile.py                       CUDA if present, else CPU; 4096 elements
  python bench/host_profile.py --device cpu --numel 256

Part 1 splits a forward+backward call into its steps, each timed on its own (host time per
call: bursts of calls ended by one synchronize, interleaved rounds, medians): forward with
and without a tensor that requires grad, backward alone on a graph kept with retain_graph
(from `.sum()`, whose gradient is an expanded, stride-0 tensor, and from a dense gradient),
and the whole call both ways. Part 2 runs the whole call under torch.profiler (CPU
activities) and lists, per call, the operators and autograd nodes where the host time goes.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved, quiet_torch_logs  # noqa: E402

from dropout_ext import functional as F  # noqa: E402

TF = torch.nn.functional


def contenders(name, fn, x):
    leaf = x.detach().requires_grad_()
    ones = torch.ones_like(x)
    kept = fn(leaf)
    kept_sum = kept.sum()

    def fwd():
        fn(x)

    def fwd_grad():
        fn(leaf)

    def bwd_sum():
        leaf.grad = None
        kept_sum.backward(retain_graph=True)

    def bwd_dense():
        leaf.grad = None
        kept.backward(ones, retain_graph=True)

    def fb_sum():
        leaf.grad = None
        fn(leaf).sum().backward()

    def fb_dense():
        leaf.grad = None
        fn(leaf).backward(ones)

    steps = {"forward, no grad": fwd, "forward, input requires grad": fwd_grad,
             "backward alone, from .sum()": bwd_sum, "backward alone, dense grad": bwd_dense,
             "forward + .sum().backward()": fb_sum, "forward + .backward(dense)": fb_dense}
    return {(name, step): f for step, f in steps.items()}


def pieces(x, p, reps, sync, say):
    """Part 3: the pieces of one call, each timed alone (host time per call): allocation,
    our op at each stage of its path (no autograd, saving bits, under the C++ autograd
    Function, from the public function) against torch's native_dropout, and the backward
    ops on a dense and on an expanded (stride-0, as from .sum()) gradient."""
    from dropout_ext import _backend

    fast = _backend.FAST
    if fast is None:
        say("(part 3 needs the compiled backend)")
        return
    xg = x.detach().requires_grad_()
    g = torch.randn_like(x)
    ge = torch.ones((), device=x.device).expand_as(x)
    _, bits = torch.ops.dropout_ext.dropout(x, None, None, p, 0, x.dim(), 1)
    _, mask = torch.native_dropout(x, p, True)
    scale = 1.0 / (1.0 - p)
    ours_bwd = torch.ops.dropout_ext.dropout_backward.default
    torch_bwd = torch.ops.aten.native_dropout_backward.default
    fns = {
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "torch.empty(numel // 8, uint8)": lambda: torch.empty(x.numel() // 8, dtype=torch.uint8, device=x.device),
        "torch.mul(x, 2.0)": lambda: torch.mul(x, 2.0),
        "ours _C.dropout, save nothing": lambda: fast.dropout(x, p, 0, 0),
        "ours _C.dropout, save bits, no grad": lambda: fast.dropout(x, p, 0, 1),
        "ours _C.dropout, input requires grad": lambda: fast.dropout(xg, p, 0, 1),
        "ours F.dropout, no grad": lambda: F.dropout(x, p),
        "ours F.dropout, input requires grad": lambda: F.dropout(xg, p),
        "torch native_dropout, no grad": lambda: torch.native_dropout(x, p, True),
        "torch native_dropout, requires grad": lambda: torch.native_dropout(xg, p, True),
        "torch F.dropout, requires grad": lambda: TF.dropout(xg, p),
        "ours backward op, dense grad": lambda: ours_bwd(g, bits, p, 0, x.dim()),
        "ours backward op, expanded grad": lambda: ours_bwd(ge, bits, p, 0, x.dim()),
        "torch backward op, dense grad": lambda: torch_bwd(g, mask, scale),
        "torch backward op, expanded grad": lambda: torch_bwd(ge, mask, scale),
    }
    t = interleaved(fns, reps, warmup=20, sync=sync, inner="auto")
    say()
    say("Pieces of a call, host time per call (each timed alone; the backward ops called through torch.ops)")
    say("%-44s %9s" % ("piece", "us"))
    for name in fns:
        say("%-44s %9.2f" % (name, t[name] * 1e6))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--numel", type=int, default=4096)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--calls", type=int, default=200, help="calls profiled per contender in part 2")
    ap.add_argument("--rows", type=int, default=18)
    ap.add_argument("--out", help="a folder: the tables also go to host_profile.txt there")
    args = ap.parse_args(argv)
    lines = []

    def say(line=""):
        print(line)
        lines.append(line)

    quiet_torch_logs()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else None
    x = torch.randn(args.numel, device=args.device)
    p = args.p
    fns = {}
    fns.update(contenders("ours", lambda a: F.dropout(a, p), x))
    fns.update(contenders("torch", lambda a: TF.dropout(a, p), x))
    t = interleaved(fns, args.reps, warmup=20, sync=sync, inner="auto")
    dev = torch.cuda.get_device_name() if cuda else "CPU"
    say()
    say("Host time per call, %s, float32, %d elements, p=%g (bursts ended by a synchronize; medians of %d"
        " interleaved rounds)" % (dev, args.numel, p, args.reps))
    say("%-30s %9s %9s %11s" % ("step", "ours us", "torch us", "ours/torch"))
    for step in dict.fromkeys(s for _, s in fns):
        o, th = t[("ours", step)], t[("torch", step)]
        say("%-30s %9.1f %9.1f %11.2f" % (step, o * 1e6, th * 1e6, o / th))

    pieces(x, p, args.reps, sync, say)

    from torch.profiler import ProfilerActivity, profile
    for name in ("ours", "torch"):
        run = fns[(name, "forward + .sum().backward()")]
        for _ in range(50):
            run()
        if sync:
            sync()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                run()
            if sync:
                sync()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.rows]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        say()
        say("%s: forward + .sum().backward() under torch.profiler (CPU), per call; profiled total %.1f us"
            % (name, total / args.calls))
        say("%-72s %10s %10s %7s" % ("operator / autograd node", "self us", "total us", "calls"))
        for e in rows:
            say("%-72s %10.2f %10.2f %7.2f" % (e.key[:72], e.self_cpu_time_total / args.calls,
                                              e.cpu_time_total / args.calls, e.count / args.calls))
    say("  self = time in the entry itself; total = with its children; calls = per forward+backward call."
        " The profiler adds its own cost per entry: compare the two tables, not their totals with part 1.")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "host_profile.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
