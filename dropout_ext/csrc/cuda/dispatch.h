// Which kernel runs a pass, with which template arguments: the dtype and op dispatch, the
// flat kernel's grid and its configuration, for a launcher L shared by the GPU
// (launch.cu: kernel launches on the current stream) and the emulator
// (../testing/cuda_emulation.cpp). L provides
//   L::flat<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(blocks, a, plan)
//   L::max_blocks<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(persistent): a cap on the flat grid
//   L::tile<T, OP>(blocks, a, plan)
//   L::zero(bits, bytes)
// and the configuration is a Tuning: FixedTuning below in the product; in the testing
// module (the emulator and a second, tunable copy of the GPU launcher) one that the
// `set_cuda_tuning` op switches at run time (../testing/tuning.h), for the GPU bench's
// sweep and the tests.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

#include "plan.h"

namespace dropout_ext {
namespace cuda {

// The flat kernel's configuration in the product, fixed at compile time so that only these
// kernels are compiled. Chosen by the GPU bench's sweep of both knobs on an H100
// (bench/bench_gpu.py; docs/gpu_bench.txt, "Forward by work size per thread"):
//  - kFlatUnroll: units of 8 elements per thread per iteration of the forward dropout.
//    float32 moves copy_'s bandwidth with 1, 2 or 4 units alike (0.97 to 1.01 of copy_);
//    bfloat16, whose Philox rounds cost twice the time per byte, is fastest with 2 (0.88
//    to 0.93 of copy_, against 0.68 to 0.88 with 1 or 4). Every other flat kernel also
//    takes 2 units.
//  - kFlatPersistent: the 16-bit kernels that draw Philox (PIPE: they load one iteration
//    ahead) run a grid of only the resident blocks, which keeps loads in flight while the
//    blocks compute: at 2**28 bfloat16 elements 0.926 of copy_ against 0.915 for a grid
//    that covers the tensor (at 2**24 the two are within 2.5%).
constexpr int kFlatUnroll = 2;
constexpr bool kFlatPersistent = true;

struct FixedTuning {
  static constexpr bool kTunable = false;
  static constexpr int unroll = kFlatUnroll;
  static constexpr bool persistent = kFlatPersistent;
};

// Launches the flat kernel with UNROLL units per thread. The grid covers the tensor
// (one iteration per thread), except for PIPE kernels when tune.persistent is set, and
// wherever the launcher caps it (L::max_blocks: the resident blocks on the GPU; a few
// blocks in the emulator, so that the tests run the grid-stride loop).
template <class L, typename T, Op OP, bool FROM_BITS, int UNROLL, int MODE = kFlatElementwise, class Tuning>
void launch_flat(L& l, const PassArgs& a, FlatPlan p, const Tuning& tune) {
  constexpr bool kPipe = sizeof(T) == 2 && !FROM_BITS && OP != Op::MaskOnly;
  const int64_t units = (a.g.numel + kUnit - 1) / kUnit;
  const int64_t blocks = std::min(
      blocks_for(units, kThreads * UNROLL),
      l.template max_blocks<T, OP, FROM_BITS, UNROLL, kPipe, MODE>(kPipe && tune.persistent));
  p.d_unit = split_qr(int64_t(kThreads) * kUnit, p.div);
  p.d_step = split_qr(blocks * kThreads * UNROLL * kUnit, p.div);
  l.template flat<T, OP, FROM_BITS, UNROLL, kPipe, MODE>(blocks, a, p);
}

// Plans and launches a pass (numel > 0) on the flat kernel. The forward dropout takes
// kFlatUnroll units per thread, or tune.unroll (1, 2 or 4) where the Tuning is tunable;
// every other op takes 2.
template <class L, typename T, Op OP, class Tuning>
void launch_planned(L& l, const PassArgs& a, const FlatPlan& p, const Tuning& tune) {
  if (a.bits_in) return launch_flat<L, T, OP, true, 2>(l, a, p, tune);
  if (p.group) {  // drawn channel-wise: only from try_channel_pass, for the ops that have it
    if constexpr (OP == Op::Dropout || OP == Op::Alpha) {
      return launch_flat<L, T, OP, false, 2, kFlatGroup>(l, a, p, tune);
    }
    TORCH_CHECK(false, "dropout_ext: no channel-wise kernel for this op");
  }
  if (p.rows) {  // flat_plan sets it only for the data ops
    if constexpr (OP != Op::MaskOnly) return launch_flat<L, T, OP, false, 2, kFlatRows>(l, a, p, tune);
    TORCH_CHECK(false, "dropout_ext: no row kernel for the mask pass");
  }
  if constexpr (OP == Op::Dropout) {
    if constexpr (Tuning::kTunable) {
      switch (tune.unroll) {
        case 1: return launch_flat<L, T, OP, false, 1>(l, a, p, tune);
        case 2: return launch_flat<L, T, OP, false, 2>(l, a, p, tune);
        case 4: return launch_flat<L, T, OP, false, 4>(l, a, p, tune);
      }
    }
    return launch_flat<L, T, OP, false, kFlatUnroll>(l, a, p, tune);
  }
  launch_flat<L, T, OP, false, 2>(l, a, p, tune);
}


template <class L, typename T, Op OP>
void launch_tile(L& l, const PassArgs& a) {
  const TilePlan t = tile_plan(a.g);
  // Rows that do not start on a byte share bytes: their bits are ORed into zeroed memory.
  if (a.bits_out && !t.bits_plain) l.zero(a.bits_out, (a.nbits + 7) / 8);
  const int64_t blocks = a.g.numel / (t.size_m * t.size_d) * t.mtiles * t.dtiles;
  TORCH_CHECK(blocks <= 0x7FFFFFFF, "dropout_ext: tensor too large for one launch");
  l.template tile<T, OP>(blocks, a, t);
}

// The flat kernel where flat_plan takes the pass, else the tile kernel. group_only (from
// try_channel_pass): launch only a channel-wise pass that draws its own words, and say
// whether it ran.
template <class L, typename T, Op OP, class Tuning>
bool run_planned(L& l, const PassArgs& a, const Tuning& tune, bool group_only) {
  FlatPlan p;
  const bool flat = flat_plan(a, sizeof(T), &p);
  if (group_only && !(flat && p.group && !a.bits_in)) return false;
  if (flat) {
    launch_planned<L, T, OP>(l, a, p, tune);
  } else {
    launch_tile<L, T, OP>(l, a);
  }
  return true;
}

template <class L, typename T, class Tuning>
bool run_op(L& l, const PassArgs& a, const Tuning& tune, bool group_only) {
  switch (a.op) {
    case Op::Dropout: return run_planned<L, T, Op::Dropout>(l, a, tune, group_only);
    case Op::DropoutAdd: return run_planned<L, T, Op::DropoutAdd>(l, a, tune, group_only);
    case Op::BiasDropoutAdd: return run_planned<L, T, Op::BiasDropoutAdd>(l, a, tune, group_only);
    case Op::Alpha: return run_planned<L, T, Op::Alpha>(l, a, tune, group_only);
    case Op::MaskOnly: return run_planned<L, T, Op::MaskOnly>(l, a, tune, group_only);
  }
  return false;
}

// The kernel for the dtype, on a geometry whose loops are planned (plan_loops); false only
// when group_only and the pass is not a drawn channel-wise flat one (run_planned).
template <class L, class Tuning>
bool run_planned_pass(L& l, const PassArgs& a, const Tuning& tune, bool group_only) {
  switch (a.dtype) {
    case DType::Float16: return run_op<L, c10::Half>(l, a, tune, group_only);
    case DType::BFloat16: return run_op<L, c10::BFloat16>(l, a, tune, group_only);
    case DType::Float32: return run_op<L, float>(l, a, tune, group_only);
    case DType::Float64: return run_op<L, double>(l, a, tune, group_only);
  }
  return false;
}

// The whole pass for numel > 0: loop plan (index.h), then the kernel for the dtype.
template <class L, class Tuning>
void run_pass(L& l, PassArgs& a, const Tuning& tune) {
  plan_loops(a.g, 8);
  run_planned_pass(l, a, tune, false);
}

// A channel-wise pass that draws its own mask words (launch.h): run when the flat kernel
// takes it, else false (the caller then draws the reduced mask in a pass of its own).
template <class L, class Tuning>
bool try_channel_pass(L& l, PassArgs& a, const Tuning& tune) {
  if (a.g.numel == 0 || a.bits_in || (a.op != Op::Dropout && a.op != Op::Alpha)) return false;
  plan_loops(a.g, 8);
  return run_planned_pass(l, a, tune, true);
}

}  // namespace cuda
}  // namespace dropout_ext
