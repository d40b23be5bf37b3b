// radargate/detail/cpu_pool.hpp -- a small fixed-size pool of worker threads for the cpu backend.
//
// run(f) calls f(tid) once for every tid in [0, size()), tid 0 on the calling thread, and returns
// when all have finished. The work each tid does is decided by the caller from tid alone (a fixed
// partition), so results never depend on scheduling. The first exception (lowest tid) is
// rethrown (without exceptions, error.hpp, a failure ends the program). Calls are serialised: one Layer may be used
// from several threads, one call at a time. A call allocates nothing: the job is a function pointer and the address of
// the caller's functor, and the per-thread error slots are sized when the pool starts.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "../error.hpp"

namespace radargate {
namespace detail {

class ThreadPool {
 public:
  explicit ThreadPool(int n = 1) { start(n < 1 ? 1 : n); }
  ~ThreadPool() { stop(); }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }

  void resize(int n) {
    std::lock_guard<std::mutex> call(call_mutex_);
    stop();
    start(n < 1 ? 1 : n);
  }

  template <class F>
  void run(F&& f) {
    std::lock_guard<std::mutex> serial(call_mutex_);
    if (n_ == 1) {
      f(0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = [](void* fp, int tid) { (*static_cast<Fn*>(fp))(tid); };
      arg_ = const_cast<void*>(static_cast<const void*>(&f));
      done_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    call(0);
    {
      std::unique_lock<std::mutex> lk(m_);
      finished_.wait(lk, [&] { return done_ == n_ - 1; });
      job_ = nullptr;
      arg_ = nullptr;
    }
#if RG_EXCEPTIONS
    for (auto& e : errors_)
      if (e) {
        std::exception_ptr first = e;
        for (auto& x : errors_) x = nullptr;
        std::rethrow_exception(first);
      }
#endif
  }

 private:
  // Runs the current job for `tid` (no allocation: a function pointer and the caller's functor).
  void call(int tid) {
#if RG_EXCEPTIONS
    try {
      job_(arg_, tid);
    } catch (...) {
      errors_[std::size_t(tid)] = std::current_exception();
    }
#else
    job_(arg_, tid);  // a failure ends the program (error.hpp)
#endif
  }

  void start(int n) {
    n_ = n;
    quit_ = false;
#if RG_EXCEPTIONS
    errors_.assign(std::size_t(n), nullptr);
#endif
    const std::uint64_t now = generation_;  // no call is in flight while the pool starts
    for (int tid = 1; tid < n; ++tid) workers_.emplace_back([this, tid, now] { loop(tid, now); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  void loop(int tid, std::uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        wake_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
      }
      call(tid);
      {
        std::lock_guard<std::mutex> lk(m_);
        ++done_;
      }
      finished_.notify_one();
    }
  }

  int n_ = 1;
  bool quit_ = false;
  int done_ = 0;
  std::uint64_t generation_ = 0;
  void (*job_)(void*, int) = nullptr;  // set by run() while a call is in flight
  void* arg_ = nullptr;
#if RG_EXCEPTIONS
  std::vector<std::exception_ptr> errors_;  // per tid, sized when the pool starts
#endif
  std::vector<std::thread> workers_;
  std::mutex m_, call_mutex_;
  std::condition_variable wake_, finished_;
};

/// The tokens [first, last) that thread `tid` of `n` owns: a fixed, contiguous partition.
inline void token_range(std::ptrdiff_t T, int n, int tid, std::ptrdiff_t& first, std::ptrdiff_t& last) {
  first = T * tid / n;
  last = T * (tid + 1) / n;
}

}  // namespace detail
}  // namespace radargate
