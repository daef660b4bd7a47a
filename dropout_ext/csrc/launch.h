// The device side of a pass, one implementation per device: cpu/launch.cpp and
// cuda/launch.cu. ops.cpp (device-generic glue) fills a PassArgs and calls these.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "pass_args.h"

namespace dropout_ext {

// Runs the pass on the CPU threads (at::parallel_for). Zeroes bits_out first in tile mode.
void cpu_run_pass(PassArgs& a);
// (key, base) for seed=None: two 64-bit words from the CPU generator (the default one or
// `gen`) under its lock, the same words `torch.randint(-2**63, 2**63 - 1, (2,),
// generator=gen)` gives (the Python backend and the torch.compile route draw them so).
void cpu_draw_rng(const std::optional<at::Generator>& gen, MaskParams& m);
// The CUDA kernels run on the host by an emulator (cpu/cuda_emulation.cpp), for tests:
// the CPU path "cuda-emu" of _cpu_isa.
void cuda_emulated_run_pass(PassArgs& a);
// A channel-wise pass that draws its mask words (per leading-dims index) in the data pass
// itself, writing the per-channel bits to bits_out when set: true when the backend ran it
// (the CUDA flat kernel, for contiguous inputs with runs of at least 8 elements), false
// when the caller must draw the reduced mask first and pass it as bits_in. numel > 0.
bool cpu_try_channel_pass(PassArgs& a);
bool cuda_emulated_try_channel_pass(PassArgs& a);

#ifdef DROPOUT_EXT_WITH_CUDA
// Launches the pass on the current stream of the current device.
void cuda_run_pass(PassArgs& a);
bool cuda_try_channel_pass(PassArgs& a);
// (key, base) = (seed, offset) of the CUDA generator's Philox state, offset advanced by 4
// (torch.cuda's own increment unit). Under graph capture they are read by the kernel from
// the generator's device state, so each replay draws a fresh mask.
void cuda_draw_rng(const std::optional<at::Generator>& gen, const at::Device& device, PassArgs& a);
#endif

}  // namespace dropout_ext
