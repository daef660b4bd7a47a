"""The examples in examples/ run and show what they claim."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))


def test_mlp_vanilla_and_inverted_reach_the_same_accuracy():
    import mlp_vanilla_vs_inverted as ex

    results = ex.main()
    inverted, vanilla = results.values()
    assert inverted > 0.6 and vanilla > 0.6  # far above the 0.25 of chance (4 classes)
    assert abs(inverted - vanilla) < 0.03


def test_transformer_block_fused_equals_unfused(capsys):
    import torch
    import transformer_block as ex
    from testing import assert_same_bits

    ex.main()  # asserts bit-identical outputs and gradients itself, and says so
    assert "fused == unfused: outputs and all gradients bit-identical" in capsys.readouterr().out
    torch.manual_seed(1)
    fused, plain = ex.Block(fused=True), ex.Block(fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 128)
    assert_same_bits(fused(x), plain(x))


@pytest.mark.parametrize("script,args,produced,column", [
    ("bench_cpu.py", ["--quick", "--no-plot"], "cpu.json", "ours/x*2"),
    # the GPU bench's own code, run on the CPU so that it is exercised without a GPU
    ("bench_gpu.py", ["--device", "cpu", "--sizes", "14", "--reps", "2"], "gpu.json", "ours/copy_ BW"),
    ("host_profile.py", ["--device", "cpu", "--numel", "256", "--reps", "3", "--calls", "20"], "host_profile.txt",
     "backward alone, dense grad"),
])
def test_bench_smoke(tmp_path, script, args, produced, column):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "bench", script), *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / produced)
    assert column in proc.stdout


def test_readme_example_runs(capsys):
    import math
    import re

    import torch
    from testing import assert_same_bits, expected_dropout

    import dropout_ext

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    printed = capsys.readouterr().out.splitlines()
    # what its comments claim
    assert printed == ["Dropout(p=0.1, inplace=False)", str(dropout_ext.compiled_backends())]
    x, y = ns["x"], ns["y"]  # y: the vanilla call, x * m
    assert torch.all((y == x) | (y == 0))
    n = x.numel()  # dropped fraction of Bernoulli(0.1): sigma = sqrt(0.1 * 0.9 / n) = 1.5e-4
    assert abs((y == 0).float().mean().item() - 0.1) < 5 * math.sqrt(0.09 / n)
    h, out = ns["h"], ns["out"]  # out: drop_path, whole samples kept (scaled) or zeroed
    kept = (out != 0).flatten(1).any(1)
    assert_same_bits(out, expected_dropout(h, kept, 0.1))
    assert isinstance(ns["model"][1], torch.nn.Dropout)
