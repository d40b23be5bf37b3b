// Counts the heap allocations of the whole process (every thread) between arm() and disarm():
// every form of operator new (plain, array, nothrow, aligned) and, on glibc, malloc, calloc,
// realloc, aligned_alloc, posix_memalign and memalign (Eigen and the C library allocate through
// these, not through operator new).
//
// Include it in exactly one translation unit of a test executable of its own: it replaces the
// global allocation functions of that program. Under a sanitizer that intercepts malloc only
// operator new is counted (alloc_counter::counts_malloc() says which).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define RG_ALLOC_COUNTER_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RG_ALLOC_COUNTER_SANITIZER 1
#endif
#if defined(__GLIBC__) && !defined(RG_ALLOC_COUNTER_SANITIZER)
#define RG_ALLOC_COUNTER_MALLOC 1
#endif

namespace alloc_counter {
inline std::atomic<long>& count() {
  static std::atomic<long> n{0};
  return n;
}
inline std::atomic<bool>& armed() {
  static std::atomic<bool> a{false};
  return a;
}
inline void note() {
  if (armed().load(std::memory_order_relaxed)) count().fetch_add(1, std::memory_order_relaxed);
}
/// Starts counting from zero.
inline void arm() {
  count() = 0;
  armed() = true;
}
/// Stops counting; returns the allocations since arm().
inline long disarm() {
  armed() = false;
  return count().load();
}
constexpr bool counts_malloc() {
#ifdef RG_ALLOC_COUNTER_MALLOC
  return true;
#else
  return false;
#endif
}
}  // namespace alloc_counter

#ifdef RG_ALLOC_COUNTER_MALLOC
extern "C" {
void* __libc_malloc(std::size_t) noexcept;
void* __libc_calloc(std::size_t, std::size_t) noexcept;
void* __libc_realloc(void*, std::size_t) noexcept;
void* __libc_memalign(std::size_t, std::size_t) noexcept;
void __libc_free(void*) noexcept;

void* malloc(std::size_t n) noexcept {
  alloc_counter::note();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) noexcept {
  alloc_counter::note();
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) noexcept {
  alloc_counter::note();
  return __libc_realloc(p, n);
}
void free(void* p) noexcept { __libc_free(p); }
void* memalign(std::size_t a, std::size_t n) noexcept {
  alloc_counter::note();
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) noexcept {
  alloc_counter::note();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
  alloc_counter::note();
  void* p = __libc_memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}
#endif

namespace alloc_counter {
namespace impl {
inline void* take(std::size_t n, std::size_t align = 0) {
#ifdef RG_ALLOC_COUNTER_MALLOC
  // malloc and memalign above count it
  void* p = align > alignof(std::max_align_t) ? memalign(align, n ? n : 1) : malloc(n ? n : 1);
#else
  note();
  void* p = nullptr;
  if (align > alignof(std::max_align_t)) {
    if (posix_memalign(&p, align, n ? n : 1) != 0) p = nullptr;
  } else {
    p = std::malloc(n ? n : 1);
  }
#endif
  return p;
}
}  // namespace impl
}  // namespace alloc_counter

void* operator new(std::size_t n) {
  if (void* p = alloc_counter::impl::take(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return alloc_counter::impl::take(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return alloc_counter::impl::take(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = alloc_counter::impl::take(n, std::size_t(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return alloc_counter::impl::take(n, std::size_t(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return alloc_counter::impl::take(n, std::size_t(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
