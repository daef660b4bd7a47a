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


def test_transformer_block_fused_equals_unfused():
    import transformer_block as ex

    ex.main()  # asserts bit-identical outputs and gradients itself


@pytest.mark.parametrize("script", ["bench_cpu.py"])
def test_bench_smoke(tmp_path, script):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "bench", script), "--quick", "--no-plot",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "cpu.json")
    assert "ours/x*2" in proc.stdout
