// A heap meter for the edge examples: it replaces the C allocator's entry points of the program
// (malloc, free, calloc, realloc, posix_memalign, aligned_alloc, memalign) with ones that forward to
// glibc's own (__libc_malloc, ...) and count the bytes held, so that operator new, Eigen's and
// xsimd's aligned buffers and the C++ library's allocations are all seen. The count is
// malloc_usable_size of each block: the bytes a program may use, not the allocator's own
// bookkeeping. Under qemu user-mode emulation it measures the emulated program, not qemu.
//
// glibc only (its __libc_* entry points and malloc_usable_size). Include it in one translation
// unit of a program; not for a program of your own, where the allocator is better left alone.
#pragma once
#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace heap_meter {

inline std::atomic<std::size_t>& held() {
  static std::atomic<std::size_t> n{0};
  return n;
}
inline std::atomic<std::size_t>& peak() {
  static std::atomic<std::size_t> n{0};
  return n;
}
inline std::atomic<std::size_t>& blocks() {  // allocations made (never decreases)
  static std::atomic<std::size_t> n{0};
  return n;
}

inline void* add(void* p) {
  if (p) {
    const std::size_t now = held() += malloc_usable_size(p);
    ++blocks();
    std::size_t was = peak().load();
    while (now > was && !peak().compare_exchange_weak(was, now)) {
    }
  }
  return p;
}
inline void remove(void* p) {
  if (p) held() -= malloc_usable_size(p);
}

/// Starts a new peak from the bytes held now.
inline void reset_peak() { peak() = held().load(); }

}  // namespace heap_meter

extern "C" {
void* malloc(std::size_t n) noexcept { return heap_meter::add(__libc_malloc(n)); }
void free(void* p) noexcept {
  heap_meter::remove(p);
  __libc_free(p);
}
void* calloc(std::size_t n, std::size_t size) noexcept { return heap_meter::add(__libc_calloc(n, size)); }
void* realloc(void* p, std::size_t n) noexcept {
  if (!p) return malloc(n);
  if (n == 0) {
    free(p);
    return nullptr;
  }
  const std::size_t before = malloc_usable_size(p);
  void* q = __libc_realloc(p, n);
  if (!q) return nullptr;  // p unchanged and still held
  heap_meter::held() -= before;
  --heap_meter::blocks();  // add() counts it again: a resize is not a new block
  return heap_meter::add(q);
}
void* memalign(std::size_t align, std::size_t n) noexcept { return heap_meter::add(__libc_memalign(align, n)); }
void* aligned_alloc(std::size_t align, std::size_t n) noexcept { return memalign(align, n); }
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
  if (align < sizeof(void*) || (align & (align - 1)) != 0) return EINVAL;
  void* p = memalign(align, n);
  if (!p && n) return ENOMEM;
  *out = p;
  return 0;
}
}
