#!/usr/bin/env python3
"""Mutation check: does the test suite catch the bugs that matter?

Applies a fixed list of plausible bugs (mutants) to the package one at a time, in place,
runs a few fast tests chosen for each (once per backend, the backends side by side),
restores the file, and reports which mutants the tests kill. Exits non-zero if any mutant
survives, if a mutant's text is not found exactly once (the list has gone stale after a
refactor: update the mutant), or if the unmutated tests do not pass.

Each Python-layer mutant runs twice: with the compiled kernels loaded (the default
backend; DROPOUT_EXT_REQUIRE_COMPILED=1 makes the suite stop if they are not) and with
the pure-Python backend only (DROPOUT_EXT_FORCE_PYTHON=1). A mutant of `_reference.py`
changes only the Python backend, so it must be killed by a test that compares that
backend with the oracle (tests/oracle.py) or with the compiled kernels.

Kernel mutants (`needs_build`) change C++ sources and need a rebuild of the extension;
they are skipped with a message unless --with-build is given together with
--build-cmd (the command that rebuilds the extension in place, e.g. "./dev.sh build");
the tool runs it after applying the mutant and again after restoring the file.

    python tools/mutants.py                 # every Python-layer mutant, both backends
    python tools/mutants.py --only keep-gt,bits-pack
    python tools/mutants.py --list
    python tools/mutants.py --all-killers   # run each selection to the end (no -x)

The files are restored in a finally block (also on Ctrl-C and SIGTERM); a run that was
killed outright leaves a journal in the temp directory that the next run restores first.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOURNAL = os.path.join(tempfile.gettempdir(),
                       "dropout_ext_mutants_%s.json" % hashlib.sha1(ROOT.encode()).hexdigest()[:12])

REF = "dropout_ext/_reference.py"
FUN = "dropout_ext/functional.py"
ROUTE = "dropout_ext/_route.py"
OPS = "dropout_ext/_ops.py"
T_MASK = "tests/test_mask.py"
T_DROP = "tests/test_dropout.py"
T_FAM = "tests/test_family.py"
T_AUTO = "tests/test_autograd.py"
T_LAY = "tests/test_layouts.py"
T_EMU = "tests/test_cuda_emulation.py"
T_NORM = "tests/test_norm.py"
CUDA_COMMON = "dropout_ext/csrc/cuda/kernel_common.cuh"
CUDA_FLAT = "dropout_ext/csrc/cuda/flat_kernel.cuh"
CUDA_TILE = "dropout_ext/csrc/cuda/tile_kernel.cuh"
CUDA_PLAN = "dropout_ext/csrc/cuda/plan.h"
CUDA_DISPATCH = "dropout_ext/csrc/cuda/dispatch.h"


@dataclass
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: list  # pytest node ids (files or file::test), run with -x
    needs_build: bool = False
    extra_edits: list = field(default_factory=list)  # more (file, old, new) applied together
    why: str = ""

    def edits(self):
        return [(self.file, self.old, self.new)] + list(self.extra_edits)


MUTANTS = [
    # ---- _reference.py: the Python backend's Philox, mask, layout and arithmetic
    Mutant("keep-gt", REF, "    return u >= keep_threshold(p)", "    return u > keep_threshold(p)",
           [T_MASK + "::test_threshold_boundaries_seed"], why="keep iff u > t instead of u >= t"),
    Mutant("threshold-round", REF, "    return math.floor(p * 2**32)", "    return round(p * 2**32)",
           [T_MASK + "::test_threshold_boundaries_seed"], why="t rounded instead of floored"),
    Mutant("base-words-swapped", REF, "    c2, c3 = _words32(rng[1])", "    c3, c2 = _words32(rng[1])",
           [T_MASK + "::test_key_and_base_mask_is_the_oracle_mask", T_MASK + "::test_generator_call_draws_the_expected_pair"],
           why="base hi/lo in the wrong counter words (invisible with seed=, where base = 0)"),
    Mutant("counter-j-base-swapped", REF,
           "        j = torch.arange(j0, j0 + blocks, dtype=torch.int64, device=device)\n"
           "        out = philox4x32_10(j & MASK32, j >> 32, c2, c3, k0, k1)",
           "        j = torch.arange(j0, j0 + blocks, dtype=torch.int64, device=device)\n"
           "        out = philox4x32_10(c2, c3, j & MASK32, j >> 32, k0, k1)",
           [T_MASK + "::test_threshold_boundaries_seed", T_MASK + "::test_key_and_base_mask_is_the_oracle_mask"],
           why="block index and base in each other's counter words"),
    Mutant("key-words-swapped", REF, "    k0, k1 = _words32(rng[0])", "    k1, k0 = _words32(rng[0])",
           [T_MASK + "::test_threshold_boundaries_seed"], why="key hi/lo swapped"),
    Mutant("key-bump-constants", REF, "PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85",
           "PHILOX_W0, PHILOX_W1 = 0xBB67AE85, 0x9E3779B9",
           ["tests/test_philox.py::test_known_answers", T_MASK + "::test_threshold_boundaries_seed"],
           why="the two Weyl key bumps exchanged"),
    Mutant("float64-scale-in-float32", REF,
           "    scale = torch.tensor(keep_scale(p, kind), dtype=acc, device=x.device)",
           "    scale = torch.tensor(keep_scale(p, kind), dtype=torch.float32, device=x.device).to(acc)",
           [T_DROP + "::test_kept_values_are_scaled", T_MASK + "::test_every_op_default_path_is_the_oracle_formula"],
           why="float64 scaled by 1/(1-p) rounded to float32"),
    Mutant("acc-float64-in-float32", REF,
           "    return torch.float64 if dtype == torch.float64 else torch.float32\n\n\ndef pack_bits",
           "    return torch.float32\n\n\ndef pack_bits",
           [T_FAM + "::test_alpha_dropout_formula_and_backends", T_DROP + "::test_kept_values_are_scaled"],
           why="float64 computed in float32"),
    Mutant("bits-pack-reversed", REF, "    weights = 1 << torch.arange(8, dtype=torch.int64, device=keep.device)",
           "    weights = 1 << torch.arange(7, -1, -1, dtype=torch.int64, device=keep.device)",
           [T_MASK + "::test_saved_bits_are_the_packed_oracle_mask", T_AUTO + "::test_backward_is_grad_times_mask_times_scale"],
           why="bit 7 - i%8 instead of bit i%8 when packing"),
    Mutant("bits-unpack-reversed", REF, "    shifts = torch.arange(8, dtype=torch.int64, device=bits.device)",
           "    shifts = torch.arange(7, -1, -1, dtype=torch.int64, device=bits.device)",
           [T_AUTO + "::test_backward_is_grad_times_mask_times_scale"], why="backward reads the bits reversed"),
    Mutant("bits-order-both-reversed", REF,
           "    weights = 1 << torch.arange(8, dtype=torch.int64, device=keep.device)",
           "    weights = 1 << torch.arange(7, -1, -1, dtype=torch.int64, device=keep.device)",
           [T_MASK + "::test_saved_bits_are_the_packed_oracle_mask"],
           extra_edits=[(REF, "    shifts = torch.arange(8, dtype=torch.int64, device=bits.device)",
                         "    shifts = torch.arange(7, -1, -1, dtype=torch.int64, device=bits.device)")],
           why="pack and unpack both reversed (self-consistent, but not the format the kernels write)"),
    Mutant("output-contiguous", REF, "        out = torch.empty_like(input)\n    out.copy_(",
           "        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)\n    out.copy_(",
           [T_LAY + "::test_named_layouts"], why="output strides not those of empty_like"),
    Mutant("output-memory-order", REF, "    out.copy_(values.reshape(input.shape))",
           "    out.as_strided((out.numel(),), (1,)).copy_(values.reshape(-1))",
           [T_LAY + "::test_named_layouts"],
           why="row-major values written in memory order (channels_last / permuted outputs scrambled)"),
    Mutant("input-storage-offset-ignored", REF, "    v = x.to(acc)\n",
           "    v = x.as_strided(x.shape, x.stride(), 0).to(acc)\n",
           [T_LAY + "::test_named_layouts"], why="a view's storage offset dropped"),
    Mutant("shard-offset-ignored", REF,
           "        index = torch.arange(local[d], dtype=torch.int64, device=device) + int(global_offset[d])",
           "        index = torch.arange(local[d], dtype=torch.int64, device=device)",
           ["tests/test_distributed.py::test_grids_of_shards_match_unsharded"],
           why="a shard draws the words of the tensor's origin, not of its own place"),
    Mutant("generator-draw-order", REF,
           "    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=generator).to(device)",
           "    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=generator).flip(0).to(device)",
           [T_MASK + "::test_generator_call_draws_the_expected_pair"], why="(key, base) drawn in the other order"),
    # ---- functional.py / _ops.py / _functorch.py: shared by both backends, so only
    # independent expectations (the oracle, the formula, the draw rule) can catch these
    Mutant("seed-into-base", ROUTE,
           "    return torch.tensor([s - _SEED_LIMIT if s >= 2**63 else s, 0], dtype=torch.int64, device=device)",
           "    return torch.tensor([0, s - _SEED_LIMIT if s >= 2**63 else s], dtype=torch.int64, device=device)",
           [T_MASK + "::test_threshold_boundaries_seed"], why="seed= fills base instead of key"),
    Mutant("generator-ignored", ROUTE, "    return None, c.generator\n", "    return None, None\n",
           [T_MASK + "::test_generator_call_draws_the_expected_pair"], why="draws from the default generator, not generator="),
    Mutant("channel-lead-dims", FUN,
           "    return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 2, inplace,",
           "    return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 1, inplace,",
           [T_FAM + "::test_channel_dropout_mask_is_per_channel"], why="feature dropout masks per sample, not per (N, C)"),
    Mutant("unbatched-lead-dims", FUN,
           "        return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 1, inplace,",
           "        return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 2, inplace,",
           [T_FAM + "::test_channel_dropout_mask_is_per_channel"], why="unbatched dropout1d/3d: wrong lead dims"),
    Mutant("dropout3d-batched-rank", FUN,
           "    return _channel_dropout(input, p, training, inplace, seed, generator, 5, global_shape, global_offset)",
           "    return _channel_dropout(input, p, training, inplace, seed, generator, 4, global_shape, global_offset)",
           [T_FAM + "::test_channel_dropout_mask_is_per_channel"], why="dropout3d takes 5-D input as unbatched"),
    Mutant("drop-path-group", FUN,
           "    return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 1, False,",
           "    return _route.run(Call(\"dropout\", input, p, KIND_INVERTED, 2, False,",
           [T_FAM + "::test_drop_path_per_sample"], why="drop_path per (N, C) instead of per sample"),
    Mutant("feature-alpha-mask-shape", FUN, "    lead = 2 if feature else input.dim()",
           "    lead = 1 if feature else input.dim()",
           [T_FAM + "::test_alpha_dropout_formula_and_backends"], why="feature alpha dropout per sample"),
    Mutant("vanilla-backward-scaled", OPS,
           "        return ops.dropout_backward(grad, saved, ctx.p, ctx.kind, ctx.lead, ctx.global_shape,",
           "        return ops.dropout_backward(grad, saved, ctx.p, 0, ctx.lead, ctx.global_shape,",
           [T_AUTO + "::test_backward_is_grad_times_mask_times_scale"],
           why="Python backward scales by 1/(1-p) whatever the kind (vanilla, alpha)"),
    Mutant("functorch-vanilla-scaled", "dropout_ext/_functorch.py",
           "    factor = keep * _reference.keep_scale(p, kind)", "    factor = keep * _reference.keep_scale(p, 0)",
           ["tests/test_transforms.py::test_grad_matches_the_normal_route"],
           why="inside torch.func, vanilla dropout scaled as inverted"),
    # ---- the fused dropout + residual + norm
    Mutant("norm-residual-before-dropout", REF,
           "    v = v * _factor(keep, p, acc).reshape(rows, hidden)\n    if residual is not None:\n"
           "        v = residual.to(acc).reshape(rows, hidden) + v\n",
           "    if residual is not None:\n        v = residual.to(acc).reshape(rows, hidden) + v\n"
           "    v = v * _factor(keep, p, acc).reshape(rows, hidden)\n",
           [T_NORM + "::test_h_is_dropout_add_and_out_is_torch_norm"], why="the residual dropped with the input"),
    Mutant("norm-h-dtype", REF, "    h = v.to(norm_h_dtype(input.dtype, residual_in_fp32))",
           "    h = v.to(input.dtype)", [T_NORM + "::test_residual_in_fp32"],
           why="residual_in_fp32 ignored: h rounded to 16 bits"),
    Mutant("norm-unbiased-variance", REF,
           "        rstd = torch.rsqrt((centered * centered).sum(-1) / n + eps)",
           "        rstd = torch.rsqrt((centered * centered).sum(-1) / max(n - 1, 1) + eps)",
           [T_NORM + "::test_h_is_dropout_add_and_out_is_torch_norm"], why="variance divided by n - 1"),
    Mutant("norm-backward-mean-term", REF, "        dh = dh - g.sum(-1, keepdim=True) / n\n",
           "        dh = dh - g.sum(-1, keepdim=True) / n * 0\n",
           [T_NORM + "::test_gradients_match_the_composition"], why="LayerNorm backward without the mean(g) term"),
    Mutant("norm-input-bias-grad-undropped", REF, "    gib = dx.sum(0) if input_bias_grad else empty()",
           "    gib = dh.sum(0) if input_bias_grad else empty()",
           [T_NORM + "::test_gradients_match_the_composition"], why="input_bias gradient not masked"),
    Mutant("norm-grad-h-dropped", OPS, "            grad_out, grad_h, h, weight, bias if need[3] else None,",
           "            grad_out, None, h, weight, bias if need[3] else None,",
           [T_NORM + "::test_gradients_match_the_composition"], why="prenorm: the gradient of h ignored"),
    Mutant("norm-eval-drops", FUN, "        p, seed, generator = 0.0, _EVAL_SEED, None",
           "        seed, generator = _EVAL_SEED, None", [T_NORM + "::test_p_edges_and_eval"],
           why="eval mode still drops"),
    Mutant("norm-prenorm-returns-out", ROUTE, "        return (out, h) if n.prenorm else out",
           "        return (out, out) if n.prenorm else out",
           [T_NORM + "::test_gradients_match_the_composition"], why="prenorm returns out twice"),
    # ---- kernel headers and sources: need a rebuild of the extension
    Mutant("kernel-base-words-swapped", "dropout_ext/csrc/philox.h",
           "static_cast<uint32_t>(m.base), static_cast<uint32_t>(m.base >> 32),",
           "static_cast<uint32_t>(m.base >> 32), static_cast<uint32_t>(m.base),",
           [T_MASK + "::test_key_and_base_mask_is_the_oracle_mask"],
           needs_build=True, why="kernels: base hi/lo swapped in the counter"),
    Mutant("kernel-key-bump", "dropout_ext/csrc/philox.h", "constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;",
           "constexpr uint32_t kPhiloxW1 = 0xBB67AE86u;", ["tests/test_philox.py::test_known_answers"],
           needs_build=True, why="kernels: wrong key bump constant"),
    Mutant("kernel-threshold-ceil", "dropout_ext/csrc/philox.h", "return static_cast<uint32_t>(floor(p * 4294967296.0));",
           "return static_cast<uint32_t>(ceil(p * 4294967296.0));", [T_MASK + "::test_threshold_boundaries_seed"],
           needs_build=True, why="kernels: threshold ceil instead of floor"),
    Mutant("kernel-scalar-keep-gt", "dropout_ext/csrc/cpu/philox_scalar.h",
           "r |= static_cast<uint64_t>(w.v[q] >= k.m.threshold) << (4 * c + q);",
           "r |= static_cast<uint64_t>(w.v[q] > k.m.threshold) << (4 * c + q);",
           [T_MASK + "::test_threshold_boundaries_seed"], needs_build=True, why="scalar CPU kernel: keep iff u > t"),
    Mutant("kernel-cpu-draw-order", "dropout_ext/csrc/cpu/draw_rng.cpp",
           "  m.key = g->random64() % kRange - (uint64_t(1) << 63);\n  m.base = g->random64() % kRange - (uint64_t(1) << 63);",
           "  m.base = g->random64() % kRange - (uint64_t(1) << 63);\n  m.key = g->random64() % kRange - (uint64_t(1) << 63);",
           [T_MASK + "::test_generator_call_draws_the_expected_pair"], needs_build=True,
           why="the CPU generator's two words taken as (base, key)"),
    Mutant("kernel-tile-column", "dropout_ext/csrc/cpu/engine.inc",
           "            apply_lanes<T, OP>(a, off, lane, rows_of[b], cols[b][t]);",
           "            apply_lanes<T, OP>(a, off, lane, rows_of[b], cols[b][t0]);",
           ["tests/test_layouts.py::test_pytorch_permute_and_slice_inputs"], needs_build=True,
           why="tile mode applies one column's keep bits to its whole group"),
    # ---- CUDA kernels and their host planning (csrc/cuda/), killed on the host through the
    # emulator (the testing module's CPU kernels)
    Mutant("cuda-tile-dstep", CUDA_TILE, "          const int64_t di = int64_t(i) * dstep;",
           "          const int64_t di = int64_t(i);",
           [T_EMU + "::test_every_op_and_layout_equals_the_python_backend"], needs_build=True,
           why="CUDA tile kernel: a thread's loads step one column instead of dstep"),
    Mutant("cuda-tile-smask-bit", CUDA_TILE, "(sh.smask[ml * bytes_per_row + (dl >> 3)] >> (dl & 7)) & 1;",
           "(sh.smask[ml * bytes_per_row + (dl >> 3)] >> (dl & 3)) & 1;",
           [T_EMU + "::test_every_op_and_layout_equals_the_python_backend"], needs_build=True,
           why="CUDA tile kernel: wrong bit of the shared mask byte"),
    Mutant("cuda-or-bits-carry", CUDA_COMMON, "  if (shift > 24) {", "  if (shift > 28) {",
           [T_EMU + "::test_every_op_and_layout_equals_the_python_backend"], needs_build=True,
           why="CUDA tile kernel: saved bits that cross a 32-bit word are lost"),
    Mutant("cuda-flat-bias-advance", CUDA_DISPATCH, "  p.d_unit = split_qr(int64_t(kThreads) * kUnit, p.div);",
           "  p.d_unit = split_qr(int64_t(kThreads) * kUnit - kUnit, p.div);",
           [T_EMU + "::test_flat_bias_indexing"], needs_build=True,
           why="CUDA flat kernel: the bias index of a thread's next unit"),
    Mutant("cuda-flat-step-advance", CUDA_DISPATCH, "  p.d_step = split_qr(blocks * kThreads * UNROLL * kUnit, p.div);",
           "  p.d_step = split_qr(blocks * kThreads * kUnit, p.div);",
           [T_EMU + "::test_flat_grid_stride_loop"], needs_build=True,
           why="CUDA flat kernel: the bias index after a grid stride (several iterations per thread)"),
    Mutant("cuda-pipe-prefetch", CUDA_FLAT,
           "    if (PIPE && kData && next < units) load_units<T, kHasRes, UNROLL>(c, x, res, next, full, xn, rn);",
           "    if (PIPE && kData && next < units) load_units<T, kHasRes, UNROLL>(c, x, res, u0, full, xn, rn);",
           [T_EMU + "::test_flat_grid_stride_loop"], needs_build=True,
           why="CUDA pipelined flat kernel (16-bit): the loads ahead fetch this iteration's units again"),
    Mutant("cuda-group-cross", CUDA_FLAT, "    if (++e.r == n) {", "    if (++e.r > n) {",
           [T_EMU + "::test_flat_channel_wise_runs"], needs_build=True,
           why="CUDA flat kernel: a channel-wise mask's next bit inside a unit of 8"),
    Mutant("cuda-group-draw-cross", CUDA_FLAT,
           "  const uint32_t k1 = keep_element(m, wbase + static_cast<uint64_t>(e.q) + 1) ? 0xFFu : 0u;",
           "  const uint32_t k1 = keep_element(m, wbase + static_cast<uint64_t>(e.q)) ? 0xFFu : 0u;",
           [T_EMU + "::test_flat_channel_wise_runs"], needs_build=True,
           why="CUDA flat kernel, channel-wise mask drawn in the data pass: a unit that starts a new run"),
    Mutant("cuda-group-bits-writer", CUDA_FLAT, "  if ((q & 7) != 0 || q >= nbits) return;",
           "  if ((q & 3) != 0 || q >= nbits) return;",
           [T_EMU + "::test_flat_channel_wise_runs"], needs_build=True,
           why="CUDA flat kernel, channel-wise mask drawn in the data pass: which thread writes a saved byte"),
    Mutant("cuda-keep8-unaligned", CUDA_COMMON, "    case 1: return keep8_from<1>(u, m.threshold);",
           "    case 1: return keep8_from<2>(u, m.threshold);",
           [T_EMU + "::test_shard_word_offsets"], needs_build=True,
           why="CUDA kernels: 8 words that start one past a Philox block"),
    Mutant("cuda-rows-word-stride", CUDA_FLAT, "        const int64_t w = kRows ? pu.q * p.wrow + pu.r : u * kUnit;",
           "        const int64_t w = kRows ? pu.q * p.div + pu.r : u * kUnit;",
           [T_EMU + "::test_flat_column_shards"], needs_build=True,
           why="CUDA flat kernel, column shards: the mask words' row stride"),
    Mutant("cuda-rows-plan", CUDA_PLAN,
           "    if (a.bits_in || !data || c % kUnit != 0 || !data_strides(1, 1) || !data_strides(0, c)) return false;",
           "    if (a.bits_in || !data || !data_strides(1, 1) || !data_strides(0, c)) return false;",
           [T_EMU + "::test_flat_column_shards"], needs_build=True,
           why="CUDA planner: row mode only for rows of whole units of 8"),
    # ---- C++ autograd and the CPU lanes of the per-call work
    Mutant("autograd-lead-packing", "dropout_ext/csrc/autograd.cpp",
           "    return backward_op().call(grad, saved, p, m & 3, m >> 2, gs, go, OptInts(at::IntArrayRef(strides)));",
           "    return backward_op().call(grad, saved, p, m & 3, m >> 1, gs, go, OptInts(at::IntArrayRef(strides)));",
           [T_AUTO + "::test_backward_is_grad_times_mask_times_scale"], needs_build=True,
           why="backward unpacks lead from the saved entry with the wrong shift"),
    Mutant("autograd-strides-rowmajor", "dropout_ext/csrc/autograd.cpp",
           "    if (out.strides() != at::IntArrayRef(c10::contiguous_strides(out.sizes()))) {",
           "    if (!out.is_contiguous()) {",
           ["tests/test_layouts.py::test_any_strides_every_op"], needs_build=True,
           why="the gradient's strides: a contiguous output with odd strides on size-1 dims taken as row-major"),
    Mutant("cpu-repeated-lane", "dropout_ext/csrc/cpu/engine.inc",
           "    if (l == 1) return p;",
           "    if (l <= 1) return p;",
           ["tests/test_layouts.py::test_gradient_of_a_reduction"], needs_build=True,
           why="CPU lanes: an operand repeated along the lanes (stride 0) read as contiguous"),
    Mutant("kernel-cpu-norm-mean", "dropout_ext/csrc/cpu/norm_engine.inc",
           "      mean = L::hsum(s1) / n_h;",
           "      mean = L::hsum(s1) / (n_h + A(1));",
           ["tests/test_norm_kernels.py::test_forward_and_backward_match_the_reference"], needs_build=True,
           why="CPU LayerNorm: the mean divided by hidden + 1"),
    Mutant("kernel-cuda-norm-dx-unmasked", "dropout_ext/csrc/cuda/norm_kernel.cuh",
           "        dx[q] = d * (((keep >> q) & 1u) ? scale : A(0));",
           "        dx[q] = d * scale;",
           ["tests/test_norm_emulation.py::test_layer_norm"], needs_build=True,
           why="CUDA norm backward: input gradient not masked (through the emulator)"),
]

CONFIGS = {
    # name: environment for the pytest subprocess
    "compiled": {"DROPOUT_EXT_REQUIRE_COMPILED": "1", "DROPOUT_EXT_FORCE_PYTHON": "0"},
    "python": {"DROPOUT_EXT_FORCE_PYTHON": "1", "DROPOUT_EXT_REQUIRE_COMPILED": "0"},
}


class StaleMutant(Exception):
    pass


def _read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def _write(rel, data):
    path = os.path.join(ROOT, rel)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _purge_caches():
    """No .pyc may hide a mutation (or a restored file)."""
    for sub in ("dropout_ext", "tests"):
        shutil.rmtree(os.path.join(ROOT, sub, "__pycache__"), ignore_errors=True)


def check_texts(mutants):
    """Every mutant's old text occurs exactly once in its file; raise listing all that do not."""
    problems = []
    for m in mutants:
        for rel, old, new in m.edits():
            path = os.path.join(ROOT, rel)
            if not os.path.exists(path):
                problems.append("%s: %s does not exist" % (m.id, rel))
                continue
            count = _read(rel).decode().count(old)
            if count != 1:
                problems.append("%s: the text to mutate occurs %d times in %s (expected once):\n      %r"
                                % (m.id, count, rel, old))
            if old == new:
                problems.append("%s: old and new text are the same" % m.id)
    if problems:
        raise StaleMutant("\n  ".join(["stale mutants (update tools/mutants.py after the refactor):"] + problems))


def restore_from_journal():
    """A run killed outright (SIGKILL, power loss) leaves the original files here."""
    if not os.path.exists(JOURNAL):
        return
    with open(JOURNAL) as f:
        saved = json.load(f)
    for rel, b64 in saved.items():
        _write(rel, base64.b64decode(b64))
        print("mutants: restored %s from the journal of an interrupted run (%s)" % (rel, JOURNAL), file=sys.stderr)
    os.remove(JOURNAL)


class Applied:
    """Context manager: the mutant's edits in place; the originals back on exit, whatever
    happens (verified, with `git show HEAD:file` as a last resort)."""

    def __init__(self, mutant):
        self.mutant = mutant
        self.originals = {}

    def __enter__(self):
        for rel, _, _ in self.mutant.edits():
            if rel not in self.originals:
                self.originals[rel] = _read(rel)
        with open(JOURNAL, "w") as f:
            json.dump({rel: base64.b64encode(data).decode() for rel, data in self.originals.items()}, f)
        try:
            texts = {rel: data.decode() for rel, data in self.originals.items()}
            for rel, old, new in self.mutant.edits():
                if texts[rel].count(old) != 1:
                    raise StaleMutant("%s: text not found exactly once in %s" % (self.mutant.id, rel))
                texts[rel] = texts[rel].replace(old, new)
            for rel, text in texts.items():
                _write(rel, text.encode())
            _purge_caches()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        for rel, data in self.originals.items():
            try:
                _write(rel, data)
                ok = _read(rel) == data
            except OSError:
                ok = False
            if not ok:
                head = subprocess.run(["git", "show", "HEAD:" + rel], cwd=ROOT, capture_output=True).stdout
                _write(rel, head)
                print("mutants: could not restore %s from memory; restored it from git HEAD" % rel, file=sys.stderr)
        if os.path.exists(JOURNAL):
            os.remove(JOURNAL)
        _purge_caches()
        return False


def _pytest_child(args, env, out_path):
    """In a forked child: pytest.main(args) with the environment env, its output to
    out_path, from ROOT; never returns."""
    code = 3
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(ROOT)
        sys.path.insert(0, ROOT)
        sys.dont_write_bytecode = True
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - reported in the output, whatever it is
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_pytest(tests, configs, stop_first=True):
    """Run the tests once per backend configuration, the configurations side by side. Each
    run is a child forked from this process, which has imported torch and pytest but not
    the package (a pytest process would spend half its time importing torch); the child
    imports the package from the files as they are now. Returns {config: (returncode,
    failed test ids, output, seconds)}."""
    sys.stdout.flush()
    sys.stderr.flush()
    procs = {}
    for config in configs:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **CONFIGS[config])
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        args = ["-q", "-p", "no:cacheprovider", "-rf"] + (["-x"] if stop_first else []) + list(tests)
        fd, path = tempfile.mkstemp(prefix="mutants-", suffix=".log")
        os.close(fd)
        pid = os.fork()
        if pid == 0:
            _pytest_child(args, env, path)
        procs[config] = (pid, path, time.time())
    results, reaped = {}, set()
    try:
        for config, (pid, path, t0) in procs.items():
            _, status = os.waitpid(pid, 0)
            reaped.add(pid)
            with open(path) as f:
                out = f.read()
            failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", out, re.M)
            results[config] = (os.waitstatus_to_exitcode(status), failed, out, time.time() - t0)
    finally:
        for pid, path, _ in procs.values():
            if pid not in reaped:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.remove(path)
    return results


def build(cmd):
    print("mutants: building: %s" % cmd, flush=True)
    proc = subprocess.run(cmd, shell=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError("build command failed (%d): %s" % (proc.returncode, cmd))


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--with-build", action="store_true", help="also run the kernel mutants (needs --build-cmd)")
    ap.add_argument("--build-cmd", help="command that rebuilds the extension in place (with --with-build)")
    ap.add_argument("--configs", default="compiled,python", help="which backends to run: compiled,python")
    ap.add_argument("--all-killers", action="store_true", help="run each selection to the end (no -x)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_sigterm)  # restore the files as on Ctrl-C
    restore_from_journal()
    mutants = MUTANTS
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {m.id for m in MUTANTS}
        if unknown:
            ap.error("unknown mutant ids: %s" % ", ".join(sorted(unknown)))
        mutants = [m for m in MUTANTS if m.id in wanted]
    if args.list:
        for m in mutants:
            print("%-30s %-30s %s%s" % (m.id, m.file, m.why, "  [needs build]" if m.needs_build else ""))
        return 0
    if args.with_build and not args.build_cmd:
        ap.error("--with-build needs --build-cmd (the command that rebuilds the extension in place)")
    configs = args.configs.split(",")
    # what every pytest run imports, imported once here: the runs are forked from this
    # process (run_pytest). Not the package: each run imports it as the mutant leaves it.
    import pytest  # noqa: F401
    import torch  # noqa: F401
    for optional in ("numpy", "hypothesis", "scipy.stats"):
        try:
            __import__(optional)
        except ImportError:
            pass
    assert "dropout_ext" not in sys.modules

    try:
        check_texts(mutants)
    except StaleMutant as e:
        print("mutants: FAIL\n  %s" % e, file=sys.stderr)
        return 2

    skipped = [m for m in mutants if m.needs_build and not args.with_build]
    for m in skipped:
        print("mutants: SKIP %s (%s): changes %s and needs a rebuild of the extension; run with "
              "--with-build --build-cmd CMD" % (m.id, m.why, m.file))
    todo = [m for m in mutants if m not in skipped]

    # the unmutated selections must pass, or a "kill" means nothing
    started = time.time()
    all_tests = sorted({t for m in todo for t in m.tests})
    for config, (rc, failed, out, secs) in run_pytest(all_tests, configs, stop_first=False).items():
        print("mutants: baseline (%s backend): rc %d in %.1fs" % (config, rc, secs), flush=True)
        if rc != 0:
            print(out[-4000:], file=sys.stderr)
            print("mutants: FAIL: the unmutated tests do not pass on the %s backend" % config, file=sys.stderr)
            return 2

    rows, errors = [], []
    for m in todo:
        results = {}
        with Applied(m):
            if m.needs_build:
                build(args.build_cmd)
            runs = run_pytest(m.tests, ["compiled"] if m.needs_build else configs, stop_first=not args.all_killers)
            for config, (rc, failed, out, secs) in runs.items():
                if rc == 1 and failed:
                    results[config] = ("killed", failed)
                elif rc == 0:
                    results[config] = ("SURVIVED", [])
                else:
                    results[config] = ("ERROR rc=%d" % rc, [])
                    errors.append((m.id, config, out[-3000:]))
                print("mutants: %-30s %-9s %-10s %5.1fs %s" % (m.id, config, results[config][0], secs,
                                                              " ".join(failed[:3])), flush=True)
        if m.needs_build:
            build(args.build_cmd)  # the restored sources
        rows.append((m, results))

    print("\n%-30s %-10s %-10s %s" % ("mutant", "compiled", "python", "killed by (first failing test per backend)"))
    print("-" * 120)
    survived = 0
    for m, results in rows:
        cells = []
        for config in ("compiled", "python"):
            cells.append(results[config][0] if config in results else "-")
        killers = sorted({t for status, failed in results.values() for t in failed[:1 if not args.all_killers else None]})
        survived += sum(1 for status, _ in results.values() if status != "killed")
        print("%-30s %-10s %-10s %s" % (m.id, cells[0], cells[1], "; ".join(killers)))
    for m in skipped:
        print("%-30s %-10s %-10s %s" % (m.id, "skipped", "skipped", "needs a rebuild (--with-build)"))
    print("-" * 120)
    print("%d mutants run, %d skipped (need a build), %d survived or errored; %.0fs"
          % (len(rows), len(skipped), survived, time.time() - started))
    for mid, config, out in errors:
        print("\n---- %s on %s: pytest did not report a plain failure\n%s" % (mid, config, out), file=sys.stderr)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
