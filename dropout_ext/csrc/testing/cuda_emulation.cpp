// The CUDA kernels (../cuda/flat_kernel.cuh, ../cuda/tile_kernel.cuh) run on the host, for
// the tests: the CPU launcher of the testing module (launch.h, namespace
// dropout_ext_testing), so that the CPU kernels of torch.ops.dropout_ext_testing are the
// CUDA kernels. The Python API runs on them under dropout_ext._backend.use("emulator") (the
// tests' CPU path "cuda-emu", tests/testing.py).
//
// A launch runs the kernels' own code for every block and thread of its grid, through the
// dispatch of ../cuda/dispatch.h with the testing module's flat-kernel configuration
// (tuning.h; set_cuda_tuning switches it): the tile kernel's grid is the one the CUDA
// launcher uses; the flat kernel's is capped at three blocks (max_blocks), so that larger
// tensors go through its grid-stride loop, as the persistent grid does on the GPU. The flat
// kernel needs no barrier and runs its threads one after the other. The tile kernel runs a
// block's kThreads threads as fibers (ucontext) that a scheduler resumes in turn up to each
// __syncthreads, so a barrier is complete when every thread has reached it (OS threads at a
// real barrier under AddressSanitizer, which does not follow fiber stacks), with the
// block's shared memory poisoned before each block. 16-byte vector accesses are checked for
// the alignment the GPU requires. So the CPU test suite checks the CUDA kernels' index
// arithmetic, bit packing, shared-memory use and alignment, bit for bit, on machines
// without a GPU. What it cannot check: timing, the memory model beyond barriers and
// atomics, and nvcc's code generation.
#include "testing.h"

#include <ATen/ATen.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#if !defined(__SANITIZE_ADDRESS__)
#define DX_EMU_FIBERS 1
#include <ucontext.h>
#endif

// The flat kernel copies a thread's next units (PIPE) whether or not they were loaded; the
// ones not loaded (past the last whole unit) are never read, which g++ cannot prove.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "../cuda/dispatch.h"
#include "../cuda/flat_kernel.cuh"
#include "../cuda/tile_kernel.cuh"
#include "../launch.h"

namespace dropout_ext {
namespace cuda {
namespace {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  uint64_t gen_ = 0;
};

struct Errors {
  std::atomic<bool> bad{false};
  std::mutex m;
  std::string msg;
  void fail(const char* what) {
    std::lock_guard<std::mutex> lock(m);
    if (!bad.exchange(true)) msg = what;
  }
};

#if defined(DX_EMU_FIBERS)
// A block's threads as fibers: sync() returns to the scheduler, which resumes every
// thread still running once all of them have yielded.
struct Fibers {
  static constexpr size_t kStack = 64 * 1024;
  ucontext_t sched;
  ucontext_t ctx[kThreads];
  bool done[kThreads];
  std::unique_ptr<char[]> stacks{new char[kStack * kThreads]};
  std::function<void(int)> body;
  void yield(int t) { swapcontext(&ctx[t], &sched); }
};
#else
struct Fibers {
  void yield(int) {}
};
#endif

struct HostCtx {
  int t;
  int64_t b, nb;
  Barrier* bar;
  Errors* err;
  Fibers* fib = nullptr;
  int tid() const { return t; }
  int64_t bid() const { return b; }
  int64_t nblocks() const { return nb; }
  void sync() const {
    if (fib) fib->yield(t);
    else if (bar) bar->wait();
    else err->fail("__syncthreads in a kernel emulated without barriers");
  }
  // Byte by byte, skipping bytes that get no bit, so that AddressSanitizer sees the bytes
  // the kernel means to change: the GPU's 32-bit atomicOr may also cover up to 3 bytes past
  // a bit array, in the padding that ops.cpp (bit_buffer) allocates for it.
  void atomic_or(unsigned int* w, unsigned int v) const {
    unsigned char* p = reinterpret_cast<unsigned char*>(w);
    for (int k = 0; k < 4; ++k) {
      const unsigned char byte = static_cast<unsigned char>(v >> (8 * k));
      if (byte) __atomic_fetch_or(p + k, byte, __ATOMIC_RELAXED);
    }
  }
  template <typename T>
  void check(const T* p) const {
    if (!aligned(p, sizeof(Unit<T>))) err->fail("misaligned vector access");
  }
  template <typename T>
  Unit<T> load_unit(const T* p) const {
    check(p);
    Unit<T> u;
    std::memcpy(static_cast<void*>(&u), p, sizeof(u));
    return u;
  }
  Words load_words(const void* p) const {
    if (!aligned(p, sizeof(Words))) err->fail("misaligned vector access");
    Words w;
    std::memcpy(static_cast<void*>(&w), p, sizeof(w));
    return w;
  }
  template <typename T>
  void store_unit(T* p, const Unit<T>& v) const {
    check(p);
    std::memcpy(static_cast<void*>(p), &v, sizeof(v));
  }
};

struct HostLauncher {
  Errors err;
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  void flat(int64_t blocks, const PassArgs& a, const FlatPlan& p) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int t = 0; t < kThreads; ++t)
        flat_body<T, OP, FROM_BITS, UNROLL, PIPE, MODE>(HostCtx{t, b, blocks, nullptr, &err}, a, p);
  }
  // Three blocks, whatever the kernel: tensors of more than 3 * kThreads * UNROLL units run
  // the grid-stride loop (several iterations per thread), smaller ones one iteration.
  template <typename T, Op OP, bool FROM_BITS, int UNROLL, bool PIPE, int MODE>
  int64_t max_blocks(bool) {
    return 3;
  }
#if defined(DX_EMU_FIBERS)
  static thread_local Fibers* current;
  static void fiber_entry(int t) {
    Fibers* f = current;
    f->body(t);
    f->done[t] = true;  // then uc_link returns to the scheduler
  }
  template <typename T, Op OP>
  void tile(int64_t blocks, const PassArgs& a, const TilePlan& plan) {
    auto f = std::make_unique<Fibers>();
    TileShared sh;
    for (int64_t b = 0; b < blocks; ++b) {
      std::memset(static_cast<void*>(&sh), 0xA5, sizeof(sh));  // shared memory starts undefined
      f->body = [&, b](int t) { tile_body<T, OP>(HostCtx{t, b, blocks, nullptr, &err, f.get()}, a, plan, sh); };
      for (int t = 0; t < kThreads; ++t) {
        f->done[t] = false;
        getcontext(&f->ctx[t]);
        f->ctx[t].uc_stack.ss_sp = f->stacks.get() + Fibers::kStack * t;
        f->ctx[t].uc_stack.ss_size = Fibers::kStack;
        f->ctx[t].uc_link = &f->sched;
        makecontext(&f->ctx[t], reinterpret_cast<void (*)()>(&fiber_entry), 1, t);
      }
      Fibers* prev = current;
      current = f.get();
      for (bool running = true; running;) {  // one round per barrier
        running = false;
        for (int t = 0; t < kThreads; ++t) {
          if (f->done[t]) continue;
          swapcontext(&f->sched, &f->ctx[t]);
          running = running || !f->done[t];
        }
      }
      current = prev;
    }
  }
#else
  template <typename T, Op OP>
  void tile(int64_t blocks, const PassArgs& a, const TilePlan& plan) {
    Barrier bar(kThreads);
    TileShared sh;
    auto worker = [&](int t) {
      for (int64_t b = 0; b < blocks; ++b) {
        if (t == 0) std::memset(static_cast<void*>(&sh), 0xA5, sizeof(sh));  // shared memory starts undefined
        bar.wait();
        tile_body<T, OP>(HostCtx{t, b, blocks, &bar, &err}, a, plan, sh);
        bar.wait();
      }
    };
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
    for (auto& th : threads) th.join();
  }
#endif
  void zero(uint8_t* bits, int64_t bytes) { std::memset(bits, 0, static_cast<size_t>(bytes)); }
};

#if defined(DX_EMU_FIBERS)
thread_local Fibers* HostLauncher::current = nullptr;
#endif

}  // namespace
}  // namespace cuda
}  // namespace dropout_ext

namespace DX_NS {

bool cpu_try_channel_pass(PassArgs& a) {
  ::dropout_ext::cuda::HostLauncher l;
  const bool ran = ::dropout_ext::cuda::try_channel_pass(l, a, flat_tuning());
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
  return ran;
}

void cpu_run_pass(PassArgs& a) {
  if (a.g.numel == 0) return;
  ::dropout_ext::cuda::HostLauncher l;
  ::dropout_ext::cuda::run_pass(l, a, flat_tuning());
  TORCH_CHECK(!l.err.bad.load(), "dropout_ext: CUDA kernel emulation: ", l.err.msg);
}

}  // namespace DX_NS
