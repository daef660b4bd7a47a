// The emulator's machinery, shared by the launchers that run CUDA kernel bodies on the host
// (cuda_emulation.cpp: the flat and tile kernels; norm_emulation.cpp: the fused norm
// kernels): the context a body takes from the hardware (HostCtx: thread and block indices,
// __syncthreads, warp shuffles, atomics, checked 16-byte accesses) and run_blocks, which
// runs a grid block after block with the block's threads as fibers.
//
// A block's threads are fibers (ucontext) that a scheduler resumes up to their next wait:
// c.sync() (__syncthreads) or one of the two halves of c.shfl_xor() (a lane writes its value
// to its slot and waits; then reads its partner's and waits again, so the slot is not
// overwritten before every lane of the warp has read it). The scheduler runs one warp at a
// time as far as it goes, resuming its lanes in turn at each shuffle once all 32 are there,
// up to a __syncthreads or its end, then the next warp (in ascending order in even blocks,
// descending in odd ones, so that shared memory shared between warps without a barrier
// shows up as wrong results), and releases the __syncthreads once every thread still
// running is there (threads that returned do not count, as on the GPU). It fails the launch
// with a message, instead of passing by accident, where the GPU would hang or be undefined:
// a shuffle that not every lane of the warp reaches, threads that meet at different
// __syncthreads (counted per thread), or threads that cannot go on. The block's shared
// memory is poisoned before each block. Under AddressSanitizer, which does not follow fiber
// stacks, the threads are OS threads at real barriers (one per block, one per warp for
// shuffles), without these checks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../cuda/kernel_common.cuh"

#if !defined(__SANITIZE_ADDRESS__)
#define DX_EMU_FIBERS 1
#include <ucontext.h>
#endif

namespace dropout_ext {
namespace cuda {
namespace emu {

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

enum Wait : uint8_t { kReady = 0, kAtSync = 1, kAtShuffle = 2 };

#if defined(DX_EMU_FIBERS)
// A block's threads as fibers: a wait returns to the scheduler (run_blocks).
struct Fibers {
  static constexpr size_t kStack = 64 * 1024;
  explicit Fibers(int n) : threads(n), ctx(n), done(n), wait(n), syncs(n), stacks(new char[kStack * n]) {}
  int threads;
  ucontext_t sched;
  std::vector<ucontext_t> ctx;
  std::vector<uint8_t> done, wait;
  std::vector<int64_t> syncs;  // __syncthreads passed, per thread
  std::unique_ptr<char[]> stacks;
  std::function<void(int)> body;
  void yield(int t, Wait w) {
    wait[t] = w;
    if (w == kAtSync) ++syncs[t];
    swapcontext(&ctx[t], &sched);
  }
};
#else
struct Fibers {
  void yield(int, Wait) {}
};
#endif

struct HostCtx {
  int t;
  int64_t b, nb;
  Barrier* bar;
  Errors* err;
  Fibers* fib = nullptr;
  uint64_t* xchg = nullptr;   // a shuffle slot per thread of the block
  Barrier* warp_bar = nullptr;  // OS threads: this thread's warp's barrier
  int tid() const { return t; }
  int64_t bid() const { return b; }
  int64_t nblocks() const { return nb; }
  void sync() const {
    if (fib) fib->yield(t, kAtSync);
    else if (bar) bar->wait();
    else err->fail("__syncthreads in a kernel emulated without barriers");
  }
  void warp_wait() const {
    if (fib) fib->yield(t, kAtShuffle);
    else warp_bar->wait();
  }
  // __shfl_xor_sync(0xffffffff, v, mask) for mask < 32: every lane of the warp calls it.
  template <typename V>
  V shfl_xor(V v, int mask) const {
    static_assert(sizeof(V) <= sizeof(uint64_t), "a shuffle moves at most 8 bytes");
    if (!xchg || mask <= 0 || mask >= 32) {
      err->fail("warp shuffle in a kernel emulated without warps, or across warps");
      return v;
    }
    std::memcpy(&xchg[t], &v, sizeof(V));
    warp_wait();
    V r;
    std::memcpy(&r, &xchg[t ^ mask], sizeof(V));
    warp_wait();
    return r;
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

#if defined(DX_EMU_FIBERS)
inline thread_local Fibers* current_fibers = nullptr;

inline void fiber_entry(int t) {
  Fibers* f = current_fibers;
  f->body(t);
  f->done[t] = 1;  // then uc_link returns to the scheduler
}

// A warp whose lanes all wait at a shuffle may go on (kReady); true when it may. Fails when
// only some of its running lanes are there.
inline bool release_warp(Fibers& f, int w0, const char** why) {
  int at = 0, lanes = 0, ready = 0;
  for (int t = w0; t < w0 + 32 && t < f.threads; ++t, ++lanes) {
    if (f.done[t]) continue;
    at += f.wait[t] == kAtShuffle;
    ready += f.wait[t] == kReady;
  }
  if (at == 0) return ready > 0;
  if (at != lanes) {
    *why = "warp shuffle not reached by every lane of the warp";
    return false;
  }
  for (int t = w0; t < w0 + lanes; ++t) f.wait[t] = kReady;
  return true;
}

// Every thread waiting at a __syncthreads may go on once all the running ones are there.
// Returns why the block cannot go on, or nullptr.
inline const char* release_sync(Fibers& f) {
  int running = 0, at_sync = 0;
  int64_t n = -1;
  bool same = true;
  for (int t = 0; t < f.threads; ++t) {
    if (f.done[t]) continue;
    ++running;
    at_sync += f.wait[t] == kAtSync;
    if (n >= 0 && f.syncs[t] != n) same = false;
    n = f.syncs[t];
  }
  if (running == 0) return nullptr;
  if (at_sync != running) return "__syncthreads not reached by every running thread of the block";
  if (!same) return "threads meet at different __syncthreads";
  for (int t = 0; t < f.threads; ++t) f.wait[t] = kReady;
  return nullptr;
}
#endif

// Runs blocks 0 .. blocks-1 of `threads` threads each: body(ctx) per thread, with the
// block's `shared_bytes` of shared memory at `shared` poisoned before each block.
template <class Body>
void run_blocks(Errors& err, int64_t blocks, int threads, void* shared, size_t shared_bytes, const Body& body) {
  std::vector<uint64_t> xchg(static_cast<size_t>(threads));
#if defined(DX_EMU_FIBERS)
  auto f = std::make_unique<Fibers>(threads);
  for (int64_t b = 0; b < blocks && !err.bad.load(); ++b) {
    if (shared_bytes) std::memset(shared, 0xA5, shared_bytes);  // shared memory starts undefined
    f->body = [&, b](int t) { body(HostCtx{t, b, blocks, nullptr, &err, f.get(), xchg.data()}); };
    for (int t = 0; t < threads; ++t) {
      f->done[t] = 0;
      f->wait[t] = kReady;
      f->syncs[t] = 0;
      getcontext(&f->ctx[t]);
      f->ctx[t].uc_stack.ss_sp = f->stacks.get() + Fibers::kStack * t;
      f->ctx[t].uc_stack.ss_size = Fibers::kStack;
      f->ctx[t].uc_link = &f->sched;
      makecontext(&f->ctx[t], reinterpret_cast<void (*)()>(&fiber_entry), 1, t);
    }
    Fibers* prev = current_fibers;
    current_fibers = f.get();
    // Warp by warp, each as far as it goes (to a __syncthreads or its end) before the next,
    // in ascending order in even blocks and descending in odd ones: a warp that reads
    // shared memory another warp writes without a barrier between them sees the wrong
    // value in one of the two orders. Then the barrier, when every running thread is at it.
    const int nwarps = (threads + 31) / 32;
    const char* why = nullptr;
    for (;;) {
      for (int i = 0; i < nwarps && !why; ++i) {
        const int w0 = 32 * (b % 2 == 0 ? i : nwarps - 1 - i);
        while (!why && release_warp(*f, w0, &why)) {
          for (int t = w0; t < w0 + 32 && t < threads; ++t)
            if (!f->done[t] && f->wait[t] == kReady) swapcontext(&f->sched, &f->ctx[t]);
        }
      }
      if (!why) why = release_sync(*f);
      bool running = false;
      for (int t = 0; t < threads && !running; ++t) running = !f->done[t];
      if (why || !running) break;
    }
    if (why) err.fail(why);  // the threads still waiting are dropped with their fibers
    current_fibers = prev;
  }
#else
  Barrier bar(threads);
  std::vector<std::unique_ptr<Barrier>> warps;
  for (int w = 0; w < threads; w += 32) warps.emplace_back(new Barrier(std::min(32, threads - w)));
  auto worker = [&](int t) {
    for (int64_t b = 0; b < blocks; ++b) {
      if (t == 0 && shared_bytes) std::memset(shared, 0xA5, shared_bytes);  // shared memory starts undefined
      bar.wait();
      body(HostCtx{t, b, blocks, &bar, &err, nullptr, xchg.data(), warps[t / 32].get()});
      bar.wait();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  for (auto& th : pool) th.join();
#endif
}

}  // namespace emu
}  // namespace cuda
}  // namespace dropout_ext
