// radargate/detail/warp_tile.cuh -- the warp-level 16x8x16 matrix step every fused kernel is built
// from, on tensor cores (bf16 / fp16 storage) or in float32 FMAs (float storage).
//
//   C[16 x 8] += A[16 x 16] B[16 x 8]          (float32 accumulators)
//
// Lane l holds g = l / 4, q = l % 4 and the accumulator entries
//   c[0] = C(g, 2q)   c[1] = C(g, 2q+1)   c[2] = C(g+8, 2q)   c[3] = C(g+8, 2q+1)
// (the PTX m16n8k16 layout). Operands come from memory (load_a: rows of a row-major matrix;
// load_b: B(k, n) = M[n][k], rows of a row-major [n, k] matrix) or from accumulators of earlier
// steps:
//   a_from_c(c0, c1):  A = [C0 | C1]    (a 16 x 16 A whose k runs over the 8 columns of C0, then C1)
//   b_from_c(c):       B = C            (a 16 x 8 C used as a k = 16 by n = 8 operand: k runs over C's rows)
// The first is the register reuse of attention kernels; the second transposes 8x8 blocks with
// movmatrix. The float32 form stages the same data through 256 floats of per-warp shared memory.
// Every function is called by all 32 lanes of a warp together.
#pragma once

#include <cstdint>

#include "support.cuh"

namespace radargate {
namespace detail {
namespace gpu {

template <class S, bool TC = storage<S>::tensor_cores>
struct Warp;

// --- tensor cores -------------------------------------------------------------------------------
template <class S>
struct Warp<S, true> {
  struct A {
    std::uint32_t x[4];
  };
  struct B {
    std::uint32_t x[2];
  };

  static __device__ __forceinline__ std::uint32_t ld32(const S* p) {
    return *reinterpret_cast<const std::uint32_t*>(p);
  }
  static __device__ __forceinline__ std::uint32_t pack(float lo, float hi);

  /// A(row, k) = m[(row0 + row) * ld + k0 + k]; rows at or past nrows read as zero.
  static __device__ __forceinline__ void load_a(A& a, const S* m, index_t ld, index_t row0, index_t nrows, index_t k0,
                                                int g, int q) {
    const index_t r0 = row0 + g, r1 = r0 + 8;
    const S* p0 = m + r0 * ld + k0 + 2 * q;
    const S* p1 = m + r1 * ld + k0 + 2 * q;
    a.x[0] = r0 < nrows ? ld32(p0) : 0u;
    a.x[1] = r1 < nrows ? ld32(p1) : 0u;
    a.x[2] = r0 < nrows ? ld32(p0 + 8) : 0u;
    a.x[3] = r1 < nrows ? ld32(p1 + 8) : 0u;
  }
  /// B(k, n) = m[(n0 + n) * ld + k0 + k].
  static __device__ __forceinline__ void load_b(B& b, const S* m, index_t ld, index_t n0, index_t k0, int g, int q) {
    const S* p = m + (n0 + g) * ld + k0 + 2 * q;
    b.x[0] = ld32(p);
    b.x[1] = ld32(p + 8);
  }
  static __device__ __forceinline__ void mma(float c[4], const A& a, const B& b);

  static __device__ __forceinline__ void a_from_c(A& a, const float c0[4], const float c1[4], float*) {
    a.x[0] = pack(c0[0], c0[1]);
    a.x[1] = pack(c0[2], c0[3]);
    a.x[2] = pack(c1[0], c1[1]);
    a.x[3] = pack(c1[2], c1[3]);
  }
  static __device__ __forceinline__ std::uint32_t transpose8x8(std::uint32_t v) {
    std::uint32_t r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(v));
    return r;
  }
  static __device__ __forceinline__ void b_from_c(B& b, const float c[4], float*) {
    b.x[0] = transpose8x8(pack(c[0], c[1]));
    b.x[1] = transpose8x8(pack(c[2], c[3]));
  }
};

template <>
__device__ __forceinline__ std::uint32_t Warp<__nv_bfloat16, true>::pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&v);
}
template <>
__device__ __forceinline__ std::uint32_t Warp<__half, true>::pack(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&v);
}
template <>
__device__ __forceinline__ void Warp<__nv_bfloat16, true>::mma(float c[4], const A& a, const B& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}
template <>
__device__ __forceinline__ void Warp<__half, true>::mma(float c[4], const A& a, const B& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

// --- float32 FMAs ---------------------------------------------------------------------------------
// An operand is a pair of pointers to the 16 values a lane needs (its two rows of A, its two
// columns of B), with a stride; the product is computed by each lane for its own four entries.
template <>
struct Warp<float, false> {
  struct A {
    const float* r0;
    const float* r1;  // null: a zero row
  };
  struct B {
    const float* n0;
    const float* n1;
    int ks;
  };

  static __device__ __forceinline__ void load_a(A& a, const float* m, index_t ld, index_t row0, index_t nrows,
                                                index_t k0, int g, int) {
    const index_t r0 = row0 + g, r1 = r0 + 8;
    a.r0 = r0 < nrows ? m + r0 * ld + k0 : nullptr;
    a.r1 = r1 < nrows ? m + r1 * ld + k0 : nullptr;
  }
  static __device__ __forceinline__ void load_b(B& b, const float* m, index_t ld, index_t n0, index_t k0, int, int q) {
    b.n0 = m + (n0 + 2 * q) * ld + k0;
    b.n1 = b.n0 + ld;
    b.ks = 1;
  }
  static __device__ __forceinline__ void mma(float c[4], const A& a, const B& b) {
    float s00 = 0.f, s01 = 0.f, s10 = 0.f, s11 = 0.f;
    if (a.r0) {
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        s00 += a.r0[k] * b.n0[k * b.ks];
        s01 += a.r0[k] * b.n1[k * b.ks];
      }
    }
    if (a.r1) {
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        s10 += a.r1[k] * b.n0[k * b.ks];
        s11 += a.r1[k] * b.n1[k * b.ks];
      }
    }
    c[0] += s00;
    c[1] += s01;
    c[2] += s10;
    c[3] += s11;
  }
  /// scratch: 256 floats of this warp's shared memory, not otherwise in use until the next call.
  static __device__ __forceinline__ void a_from_c(A& a, const float c0[4], const float c1[4], float* scratch) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    __syncwarp();
    scratch[g * 16 + 2 * q] = c0[0];
    scratch[g * 16 + 2 * q + 1] = c0[1];
    scratch[(g + 8) * 16 + 2 * q] = c0[2];
    scratch[(g + 8) * 16 + 2 * q + 1] = c0[3];
    scratch[g * 16 + 8 + 2 * q] = c1[0];
    scratch[g * 16 + 8 + 2 * q + 1] = c1[1];
    scratch[(g + 8) * 16 + 8 + 2 * q] = c1[2];
    scratch[(g + 8) * 16 + 8 + 2 * q + 1] = c1[3];
    __syncwarp();
    a.r0 = scratch + g * 16;
    a.r1 = scratch + (g + 8) * 16;
  }
  static __device__ __forceinline__ void b_from_c(B& b, const float c[4], float* scratch) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    __syncwarp();
    scratch[g * 8 + 2 * q] = c[0];
    scratch[g * 8 + 2 * q + 1] = c[1];
    scratch[(g + 8) * 8 + 2 * q] = c[2];
    scratch[(g + 8) * 8 + 2 * q + 1] = c[3];
    __syncwarp();
    b.n0 = scratch + 2 * q;
    b.n1 = scratch + 2 * q + 1;
    b.ks = 8;
  }
};

}  // namespace gpu
}  // namespace detail
}  // namespace radargate
