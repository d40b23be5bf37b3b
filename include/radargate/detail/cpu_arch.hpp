// radargate/detail/cpu_arch.hpp -- the namespace that holds the cpu backend's code compiled for one
// instruction set.
//
// The kernels, caches and matrix helpers of the cpu backend live in an inline namespace of
// radargate::detail named after the instruction set the translation unit is compiled for
// (RG_CPU_NS: cpu_avx512bw, cpu_fma3_avx2, cpu_sse2, cpu_neon64, cpu_scalar, ...). Code compiled
// with different -m flags in different translation units of one program then has different
// symbols, never two definitions of one template (which the linker would merge, keeping either).
// This is what lets one program hold SSE2, AVX2 and AVX-512 builds of the backend side by side
// (runtime dispatch: cpu_dispatch.hpp) and lets a program mix translation units built with
// different -march flags.
#pragma once

#include <xsimd/config/xsimd_config.hpp>

#if defined(RADARGATE_CPU_SCALAR)
#define RG_CPU_NS cpu_scalar
#elif XSIMD_WITH_AVX512BW
#define RG_CPU_NS cpu_avx512bw
#elif XSIMD_WITH_AVX512DQ
#define RG_CPU_NS cpu_avx512dq
#elif XSIMD_WITH_AVX512CD
#define RG_CPU_NS cpu_avx512cd
#elif XSIMD_WITH_AVX512F
#define RG_CPU_NS cpu_avx512f
#elif XSIMD_WITH_FMA3_AVX2
#define RG_CPU_NS cpu_fma3_avx2
#elif XSIMD_WITH_AVX2
#define RG_CPU_NS cpu_avx2
#elif XSIMD_WITH_FMA3_AVX
#define RG_CPU_NS cpu_fma3_avx
#elif XSIMD_WITH_AVX
#define RG_CPU_NS cpu_avx
#elif XSIMD_WITH_FMA4
#define RG_CPU_NS cpu_fma4
#elif XSIMD_WITH_FMA3_SSE
#define RG_CPU_NS cpu_fma3_sse
#elif XSIMD_WITH_SSE4_2
#define RG_CPU_NS cpu_sse4_2
#elif XSIMD_WITH_SSE4_1
#define RG_CPU_NS cpu_sse4_1
#elif XSIMD_WITH_SSSE3
#define RG_CPU_NS cpu_ssse3
#elif XSIMD_WITH_SSE3
#define RG_CPU_NS cpu_sse3
#elif XSIMD_WITH_SSE2
#define RG_CPU_NS cpu_sse2
#elif XSIMD_WITH_NEON64
#define RG_CPU_NS cpu_neon64
#elif XSIMD_WITH_NEON
#define RG_CPU_NS cpu_neon
#else
#define RG_CPU_NS cpu_scalar
#endif
