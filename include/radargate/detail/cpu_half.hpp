// radargate/detail/cpu_half.hpp -- 16-bit weight storage of the cpu backend: bf16 and IEEE
// binary16 (f16) values, their scalar conversions, and vector loads that widen W of them into a
// batch<float> (WeightStorage in cpu.hpp).
//
// Widening is exact in both formats. Per instruction set:
//   bf16: the 16 bits are the top half of the float, so a load is a zero extension and a 16-bit
//         shift (AVX-512, AVX2), an interleave with zeros (SSE2), or vshll (NEON). No special
//         instruction is needed or faster: AVX512-BF16 has none that widens bf16 to float (its
//         vdpbf16ps would round x to bf16 as well).
//   f16:  vcvtph2ps (F16C with AVX2, AVX-512F), vcvt_f32_f16 (NEON with half-precision
//         conversion), else an integer sequence (SSE2) or the scalar conversion.
// Narrowing (at construction and weights_changed() only) is scalar: round to nearest, ties to
// even; overflow gives +-inf, NaN stays NaN; the same results as io::float_to_bf16 and
// io::float_to_half.
#pragma once

#include "cpu_arch.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_simd.hpp"

#if !defined(RADARGATE_CPU_SCALAR) && !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
#if XSIMD_WITH_SSE2
#include <immintrin.h>
#elif XSIMD_WITH_NEON
#include <arm_neon.h>
#endif
#endif

namespace radargate {

/// How Layer<float, backend::cpu> stores the expert weights lora.A and lora.B, the bulk of what
/// each call reads (CpuOptions::weights): in the layer's Scalar type, or rounded to bfloat16 or
/// IEEE binary16, with every product still accumulated in float. The other tensors stay in float.
enum class WeightStorage { scalar, bf16, f16 };

inline const char* to_string(WeightStorage w) {
  switch (w) {
    case WeightStorage::bf16:
      return "bf16";
    case WeightStorage::f16:
      return "f16";
    default:
      return "scalar";
  }
}

namespace detail {

/// A bfloat16 value (the top 16 bits of a float).
struct bf16 {
  std::uint16_t bits;
};
/// An IEEE binary16 value.
struct f16 {
  std::uint16_t bits;
};

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float to_float(bf16 h) { return bits_to_float(std::uint32_t(h.bits) << 16); }

inline float to_float(f16 h) {
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  const std::uint32_t e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
  if (e == 0x1f) return bits_to_float(sign | 0x7f800000u | (m << 13));  // inf, NaN (payload kept)
  if (e != 0) return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
  const float v = float(m) * 5.9604644775390625e-8f;  // subnormal: m 2^-24, exact
  return sign ? -v : v;
}

inline bf16 to_bf16(float f) {
  const std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{std::uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  const std::uint32_t round = 0x7fffu + ((u >> 16) & 1u);
  return bf16{std::uint16_t((u + round) >> 16)};
}

inline f16 to_f16(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16{std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu))};  // NaN
  if (a >= 0x477ff000u) return f16{std::uint16_t(sign | 0x7c00u)};                        // rounds to >= 65520: inf
  if (a < 0x38800000u) {                             // below 2^-14: a subnormal f16 (or zero), in units of 2^-24
    const float q = bits_to_float(a) * 16777216.0f;  // exact scaling by 2^24
    return f16{std::uint16_t(sign | std::uint16_t(std::nearbyint(q)))};  // to nearest, ties to even
  }
  // normal: rebias the exponent, round the 13 dropped bits to nearest even
  const std::uint32_t round = 0xfffu + ((a >> 13) & 1u);
  return f16{std::uint16_t(sign | ((a - 0x38000000u + round) >> 13))};
}

template <class T>
struct is_half : std::false_type {};
template <>
struct is_half<bf16> : std::true_type {};
template <>
struct is_half<f16> : std::true_type {};

inline namespace RG_CPU_NS {
namespace simd {

/// The weights at p as a batch<S>: the aligned load for S, widened for bf16 and f16 (unaligned;
/// S is float).
template <class S>
RG_INLINE batch<S> load_w(const S* p) {
  return load(p);
}

namespace half_detail {
template <class H>
RG_INLINE batch<float> load_scalar(const H* p) {
  constexpr index_t W = width<float>();
  alignas(64) float t[W];
  for (index_t l = 0; l < W; ++l) t[l] = to_float(p[l]);
  return load(static_cast<const float*>(t));
}
}  // namespace half_detail

// The instruction set of batch<float> (xsimd's default architecture; see cpu_simd.hpp).
#if defined(RADARGATE_CPU_SCALAR) || defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
#define RG_HALF_SCALAR 1
#elif XSIMD_WITH_AVX512F
#define RG_HALF_AVX512 1
#elif XSIMD_WITH_AVX2
#define RG_HALF_AVX2 1
#elif XSIMD_WITH_AVX
#define RG_HALF_OTHER 1
#elif XSIMD_WITH_SSE2
#define RG_HALF_SSE2 1
#elif XSIMD_WITH_NEON
#define RG_HALF_NEON 1
#else
#define RG_HALF_OTHER 1
#endif

RG_INLINE batch<float> load_w(const bf16* p) {
#if defined(RG_HALF_AVX512)
  return batch<float>(_mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16)));
#elif defined(RG_HALF_AVX2)
  return batch<float>(_mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16)));
#elif defined(RG_HALF_SSE2)
  return batch<float>(
      _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#elif defined(RG_HALF_NEON)
  return batch<float>(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16)));
#elif defined(RG_HALF_SCALAR)
  return batch<float>(to_float(*p));
#else
  return half_detail::load_scalar(p);
#endif
}

RG_INLINE batch<float> load_w(const f16* p) {
#if defined(RG_HALF_AVX512)
  return batch<float>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(RG_HALF_AVX2) && defined(__F16C__)
  return batch<float>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(RG_HALF_SSE2) && defined(__F16C__)
  return batch<float>(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#elif defined(RG_HALF_SSE2)
  // exponent rebias, with inf/NaN and subnormals fixed up (no F16C)
  const __m128i h = _mm_unpacklo_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
  const __m128i em = _mm_and_si128(h, _mm_set1_epi32(0x7fff));
  const __m128i sign = _mm_slli_epi32(_mm_xor_si128(h, em), 16);
  const __m128i shifted = _mm_slli_epi32(em, 13);
  const __m128i infnan = _mm_cmpgt_epi32(em, _mm_set1_epi32(0x7bff));
  const __m128i denorm = _mm_cmpgt_epi32(_mm_set1_epi32(0x0400), em);
  __m128i normal = _mm_add_epi32(shifted, _mm_set1_epi32(112 << 23));
  normal = _mm_add_epi32(normal, _mm_and_si128(infnan, _mm_set1_epi32(112 << 23)));
  const __m128 magic = _mm_castsi128_ps(_mm_set1_epi32(113 << 23));
  const __m128i sub =
      _mm_castps_si128(_mm_sub_ps(_mm_castsi128_ps(_mm_add_epi32(shifted, _mm_set1_epi32(113 << 23))), magic));
  const __m128i mag = _mm_or_si128(_mm_andnot_si128(denorm, normal), _mm_and_si128(denorm, sub));
  return batch<float>(_mm_castsi128_ps(_mm_or_si128(mag, sign)));
#elif defined(RG_HALF_NEON) && (defined(__aarch64__) || (defined(__ARM_FP) && (__ARM_FP & 2)))
  return batch<float>(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)))));
#elif defined(RG_HALF_SCALAR)
  return batch<float>(to_float(*p));
#else
  return half_detail::load_scalar(p);
#endif
}

#undef RG_HALF_SCALAR
#undef RG_HALF_AVX512
#undef RG_HALF_AVX2
#undef RG_HALF_SSE2
#undef RG_HALF_NEON
#undef RG_HALF_OTHER

}  // namespace simd
}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
