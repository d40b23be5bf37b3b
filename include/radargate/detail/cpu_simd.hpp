// radargate/detail/cpu_simd.hpp -- the SIMD vocabulary of the cpu backend.
//
// batch<S> is the widest SIMD register the compiler was told it may use (-march): 16 floats with
// AVX-512, 8 with AVX2, 4 with plain x86-64 SSE2 or NEON. Where xsimd has no register for S (a
// target without a supported SIMD set: 32-bit ARM without NEON, RISC-V, or double on 32-bit NEON)
// or where RADARGATE_CPU_SCALAR is defined, batch<S> is scalar_batch<S>, one lane in a plain
// scalar: the same kernels then compile to portable scalar code. Every buffer the kernels stream
// through is allocated 64-byte aligned and padded to a multiple of the width, so the kernels have
// no scalar tails.
//
// The kernels call the operations of this namespace (simd::fma, simd::select, ...), which are
// xsimd's for an xsimd batch and plain scalar code for scalar_batch.
//
// The angle of a rotation plane, alpha = bound(pre), its cosine and sine: see angle_cos_sin.
#pragma once

#include "cpu_arch.hpp"

#include <cmath>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "../config.hpp"
#include "../error.hpp"
#include "../layer_config.hpp"
#include "math.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {
namespace simd {

/// A comparison result of scalar_batch.
struct scalar_bool {
  bool v = false;
  friend RG_INLINE scalar_bool operator|(scalar_bool a, scalar_bool b) { return {a.v || b.v}; }
  friend RG_INLINE scalar_bool operator&(scalar_bool a, scalar_bool b) { return {a.v && b.v}; }
  friend RG_INLINE scalar_bool operator!(scalar_bool a) { return {!a.v}; }
};

/// One lane: the interface of xsimd::batch that the kernels use, over a plain scalar.
template <class S>
struct scalar_batch {
  using value_type = S;
  using register_type = S;
  static constexpr std::size_t size = 1;
  S v;
  scalar_batch() = default;
  RG_INLINE scalar_batch(S x) : v(x) {}  // NOLINT: implicit, as xsimd's broadcast
  static RG_INLINE scalar_batch load_aligned(const S* p) { return scalar_batch(*p); }
  static RG_INLINE scalar_batch load_unaligned(const S* p) { return scalar_batch(*p); }
  RG_INLINE void store_aligned(S* p) const { *p = v; }
  RG_INLINE void store_unaligned(S* p) const { *p = v; }
  RG_INLINE S get(std::size_t) const { return v; }
  RG_INLINE scalar_batch& operator+=(scalar_batch b) {
    v += b.v;
    return *this;
  }
  RG_INLINE scalar_batch& operator-=(scalar_batch b) {
    v -= b.v;
    return *this;
  }
  RG_INLINE scalar_batch& operator*=(scalar_batch b) {
    v *= b.v;
    return *this;
  }
  RG_INLINE scalar_batch& operator/=(scalar_batch b) {
    v /= b.v;
    return *this;
  }
  friend RG_INLINE scalar_batch operator-(scalar_batch a) { return scalar_batch(-a.v); }
  friend RG_INLINE scalar_batch operator+(scalar_batch a, scalar_batch b) { return scalar_batch(a.v + b.v); }
  friend RG_INLINE scalar_batch operator-(scalar_batch a, scalar_batch b) { return scalar_batch(a.v - b.v); }
  friend RG_INLINE scalar_batch operator*(scalar_batch a, scalar_batch b) { return scalar_batch(a.v * b.v); }
  friend RG_INLINE scalar_batch operator/(scalar_batch a, scalar_batch b) { return scalar_batch(a.v / b.v); }
  friend RG_INLINE scalar_bool operator<(scalar_batch a, scalar_batch b) { return {a.v < b.v}; }
  friend RG_INLINE scalar_bool operator>(scalar_batch a, scalar_batch b) { return {a.v > b.v}; }
  friend RG_INLINE scalar_bool operator<=(scalar_batch a, scalar_batch b) { return {a.v <= b.v}; }
  friend RG_INLINE scalar_bool operator>=(scalar_batch a, scalar_batch b) { return {a.v >= b.v}; }
  friend RG_INLINE scalar_bool operator==(scalar_batch a, scalar_batch b) { return {a.v == b.v}; }
  friend RG_INLINE scalar_bool operator!=(scalar_batch a, scalar_batch b) { return {a.v != b.v}; }
};

template <class S>
RG_INLINE scalar_batch<S> fma(scalar_batch<S> a, scalar_batch<S> b, scalar_batch<S> c) {
  return scalar_batch<S>(a.v * b.v + c.v);
}
template <class S>
RG_INLINE scalar_batch<S> fnma(scalar_batch<S> a, scalar_batch<S> b, scalar_batch<S> c) {
  return scalar_batch<S>(c.v - a.v * b.v);
}
template <class S>
RG_INLINE scalar_batch<S> fms(scalar_batch<S> a, scalar_batch<S> b, scalar_batch<S> c) {
  return scalar_batch<S>(a.v * b.v - c.v);
}
template <class S>
RG_INLINE scalar_batch<S> min(scalar_batch<S> a, scalar_batch<S> b) {
  return scalar_batch<S>(b.v < a.v ? b.v : a.v);
}
template <class S>
RG_INLINE scalar_batch<S> max(scalar_batch<S> a, scalar_batch<S> b) {
  return scalar_batch<S>(a.v < b.v ? b.v : a.v);
}
template <class S>
RG_INLINE scalar_batch<S> abs(scalar_batch<S> a) {
  return scalar_batch<S>(std::fabs(a.v));
}
template <class S>
RG_INLINE scalar_batch<S> copysign(scalar_batch<S> a, scalar_batch<S> b) {
  return scalar_batch<S>(std::copysign(a.v, b.v));
}
template <class S>
RG_INLINE scalar_batch<S> nearbyint(scalar_batch<S> a) {
  return scalar_batch<S>(std::nearbyint(a.v));
}
template <class S>
RG_INLINE scalar_batch<S> select(scalar_bool c, scalar_batch<S> a, scalar_batch<S> b) {
  return c.v ? a : b;
}
template <class S>
RG_INLINE S hadd(scalar_batch<S> a) {
  return a.v;
}
template <class S>
RG_INLINE scalar_batch<S> tanh(scalar_batch<S> a) {
  return scalar_batch<S>(std::tanh(a.v));
}
template <class S>
RG_INLINE std::pair<scalar_batch<S>, scalar_batch<S>> sincos(scalar_batch<S> a) {
  return {scalar_batch<S>(std::sin(a.v)), scalar_batch<S>(std::cos(a.v))};
}

// xsimd's operations for xsimd batches (found beside the scalar ones above). Without a supported
// architecture xsimd declares no batch and none of these.
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
using xsimd::abs;
using xsimd::copysign;
using xsimd::fma;
using xsimd::fms;
using xsimd::fnma;
using xsimd::hadd;
using xsimd::max;
using xsimd::min;
using xsimd::nearbyint;
using xsimd::select;
using xsimd::sincos;
using xsimd::tanh;
#endif

/// True when xsimd has a SIMD register for S on the architecture this code is compiled for
/// (and RADARGATE_CPU_SCALAR does not ask for the scalar kernels).
template <class S>
constexpr bool has_vector() {
#if defined(RADARGATE_CPU_SCALAR) || defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  return false;
#elif defined(__arm__) && !defined(__aarch64__)
  // 32-bit NEON has no double vectors (xsimd still declares the register type): scalar kernels.
  return std::is_same<S, float>::value && xsimd::has_simd_register<S, xsimd::default_arch>::value;
#else
  return xsimd::has_simd_register<S, xsimd::default_arch>::value;
#endif
}

template <class S, bool Vector = has_vector<S>()>
struct batch_of {
  using type = scalar_batch<S>;
};
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
template <class S>
struct batch_of<S, true> {
  using type = xsimd::batch<S>;
};
#endif

template <class S>
using batch = typename batch_of<S>::type;

template <class B>
struct is_scalar_batch : std::false_type {};
template <class S>
struct is_scalar_batch<scalar_batch<S>> : std::true_type {};

template <class S>
constexpr index_t width() {
  return index_t(batch<S>::size);
}

/// The name of the instruction set the kernels for S use: "avx512", "avx2", "sse2", "neon",
/// "scalar", ... (xsimd's name of its default architecture, or "scalar").
template <class S>
constexpr const char* kernel_set() {
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  if constexpr (has_vector<S>()) return xsimd::default_arch::name();
#endif
  return "scalar";
}

/// Storage aligned to 64 bytes (whole cache lines, any SIMD width). Unlike xsimd's allocator it
/// also compiles without exceptions (error.hpp): running out of memory is then reported as a failure.
template <class T>
struct aligned_allocator {
  using value_type = T;
  static constexpr std::size_t alignment = 64;
  template <class U>
  struct rebind {
    using other = aligned_allocator<U>;
  };
  aligned_allocator() = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}  // NOLINT: as std::allocator
  T* allocate(std::size_t n) {
    void* p = xsimd::aligned_malloc(n * sizeof(T), alignment);
    if (p == nullptr && n > 0) {
#if RG_EXCEPTIONS
      throw std::bad_alloc();
#else
      fail("memory: expected room for ", n * sizeof(T), " more bytes, found none (out of memory)");
#endif
    }
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { xsimd::aligned_free(p); }
  template <class U>
  bool operator==(const aligned_allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const aligned_allocator<U>&) const noexcept {
    return false;
  }
};

/// A std::vector whose storage is 64-byte aligned.
template <class S>
using avec = std::vector<S, aligned_allocator<S>>;

template <class S>
RG_INLINE batch<S> load(const S* p) {
  return batch<S>::load_aligned(p);
}
template <class S>
RG_INLINE void store(S* p, const batch<S>& v) {
  v.store_aligned(p);
}
/// v, pinned to a register. A value loaded once and used by several FMAs of a token block would
/// otherwise be folded by GCC into each FMA as a memory operand, one load per use, and the
/// kernels would be bound by the load ports instead of the FMA units.
template <class B>
RG_INLINE B in_register(B v) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
  if constexpr (!is_scalar_batch<B>::value) {
    typename B::register_type r = v;
    __asm__("" : "+x"(r));
    return B(r);
  }
#endif
  return v;
}

template <class B>
RG_INLINE typename B::value_type hsum(const B& v) {
  return hadd(v);
}

inline index_t round_up(index_t n, index_t w) { return (n + w - 1) / w * w; }

// Branch-free vectorised maths for the angle of a rotation plane. xsimd's own tanh and sincos
// branch on any()/all() of their lanes (range reduction, small-argument paths); with angles of
// random sign and size those branches mispredict, so the common bound alpha = pi tanh(p) has its
// own path. Both are accurate to a few ulp in absolute terms (tests/cpu checks them against std::).
//
// double:
//   t = tanh(p) = sign(p) (1 - e) / (1 + e),  e = exp(-2 min(|p|, 20))
//   exp(x), x <= 0:  x = n ln2 + f, |f| <= ln2/2,  exp(x) = 2^n sum_{j <= 13} f^j / j!
//   sin(pi t), cos(pi t):  t = n/2 + f exactly (n = round(2 t), |f| <= 1/4), the Cephes kernels
//   for |pi f| <= pi/4, and the quadrant n mod 4
// float (fewer operations, the same absolute accuracy for its precision):
//   t = tanh(p): the rational minimax form of Eigen's generic_fast_tanh_float (odd degree 13
//   over even degree 6, input clamped to +-7.99881172180175781)
//   beta = pi t / 2 in [-pi/2, pi/2]: sin beta, cos beta by minimax polynomials (max error
//   3.4e-9 and 4.7e-8), then sin alpha = 2 sin beta cos beta, cos alpha = (c - s)(c + s)
template <class S>
struct angle_constants;

template <>
struct angle_constants<float> {
  static constexpr int exp_terms = 7;  // f^7 / 7! < 2^-24 for |f| <= ln2/2
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr float magic = 8388608.0f + 127.0f;  // 2^23 + bias
  static constexpr int mantissa_bits = 23;
  static constexpr float sin_c[] = {-1.9515295891e-4f, 8.3321608736e-3f, -1.6666654611e-1f};
  static constexpr float cos_c[] = {2.443315711809948e-5f, -1.388731625493765e-3f, 4.166664568298827e-2f};
};

template <>
struct angle_constants<double> {
  static constexpr int exp_terms = 13;
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
  static constexpr double magic = 4503599627370496.0 + 1023.0;  // 2^52 + bias
  static constexpr int mantissa_bits = 52;
  static constexpr double sin_c[] = {1.58962301576546568060e-10, -2.50507477628578072866e-8,
                                     2.75573136213857245213e-6,  -1.98412698295895385996e-4,
                                     8.33333333332211858878e-3,  -1.66666666666666307295e-1};
  static constexpr double cos_c[] = {-1.13585365213876817300e-11, 2.08757008419747316778e-9,
                                     -2.75573141792967388112e-7,  2.48015872888517045348e-5,
                                     -1.38888888888730564116e-3,  4.16666666666665929218e-2};
};

/// 2^n for an integral n in [-60, 0].
template <class S>
RG_INLINE batch<S> pow2_int(const batch<S>& n) {
  using C = angle_constants<S>;
  if constexpr (is_scalar_batch<batch<S>>::value) {
    return batch<S>(std::ldexp(S(1), int(n.v)));
  }
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  else {
    // the low mantissa bits of n + 2^m + bias, shifted into the exponent field
    using I = xsimd::batch<xsimd::as_integer_t<S>>;
    return xsimd::bitwise_cast<batch<S>>(xsimd::bitwise_cast<I>(n + batch<S>(C::magic)) << C::mantissa_bits);
  }
#endif
}

/// exp(x) for x in [-40, 0].
template <class B, class S = typename B::value_type>
RG_INLINE B exp_nonpositive(const B& x) {
  using C = angle_constants<S>;
  const batch<S> n = nearbyint(x * batch<S>(S(1.4426950408889634073599)));
  batch<S> f = fnma(n, batch<S>(C::ln2_hi), x);
  f = fnma(n, batch<S>(C::ln2_lo), f);
  // sum_j f^j / j!, Horner from the highest term
  S inv_fact[C::exp_terms + 1];
  inv_fact[0] = S(1);
  for (int j = 1; j <= C::exp_terms; ++j) inv_fact[j] = inv_fact[j - 1] / S(j);
  batch<S> p(inv_fact[C::exp_terms]);
  for (int j = C::exp_terms - 1; j >= 0; --j) p = fma(p, f, batch<S>(inv_fact[j]));
  return p * pow2_int<S>(n);
}

/// tanh(p), branch-free.
template <class B, class S = typename B::value_type>
RG_INLINE B tanh_fast(const B& p) {
  const batch<S> a = min(abs(p), batch<S>(S(20)));
  const batch<S> e = exp_nonpositive(a * batch<S>(S(-2)));
  const batch<S> one(S(1));
  return copysign((one - e) / (one + e), p);
}

/// sin(pi t) and cos(pi t) for |t| <= 1.
template <class B0, class S = typename B0::value_type>
RG_INLINE void sincos_pi(const B0& t, B0& s, B0& c) {
  using C = angle_constants<S>;
  using B = batch<S>;
  const B n = nearbyint(t * B(S(2)));
  const B x = fnma(n, B(S(0.5)), t) * B(pi<S>());
  const B z = x * x;
  constexpr int K = int(sizeof(C::sin_c) / sizeof(S));
  B ps(C::sin_c[0]), pc(C::cos_c[0]);
  for (int j = 1; j < K; ++j) {
    ps = fma(ps, z, B(C::sin_c[j]));
    pc = fma(pc, z, B(C::cos_c[j]));
  }
  const B sp = fma(x * z, ps, x);                            // x + x z P(z)
  const B cp = fma(z * z, pc, fnma(B(S(0.5)), z, B(S(1))));  // 1 - z/2 + z^2 Q(z)
  const auto odd = abs(n) == B(S(1));
  const B s1 = select(odd, cp, sp), c1 = select(odd, sp, cp);
  const auto neg_s = (n < B(S(-0.5))) | (n > B(S(1.5)));
  const auto neg_c = (n > B(S(0.5))) | (n < B(S(-1.5)));
  s = select(neg_s, -s1, s1);
  c = select(neg_c, -c1, c1);
}

/// U batches processed in lock step: every operation is applied to all U before the next one,
/// so U independent dependency chains interleave in program order and the out-of-order core
/// always has independent work at hand (one chain alone is latency-bound).
template <class B, int U>
struct Lanes {
  B v[U];
  Lanes() = default;
  explicit Lanes(typename B::value_type c) {
    for (int u = 0; u < U; ++u) v[u] = B(c);
  }
};
#define RG_LANES_BINARY(op)                                                       \
  template <class B, int U>                                                       \
  RG_INLINE Lanes<B, U> operator op(const Lanes<B, U>& a, const Lanes<B, U>& b) { \
    Lanes<B, U> r;                                                                \
    for (int u = 0; u < U; ++u) r.v[u] = a.v[u] op b.v[u];                        \
    return r;                                                                     \
  }
RG_LANES_BINARY(+)
RG_LANES_BINARY(-)
RG_LANES_BINARY(*)
RG_LANES_BINARY(/)
#undef RG_LANES_BINARY
#define RG_LANES_CALL2(name)                                               \
  template <class B, int U>                                                \
  RG_INLINE Lanes<B, U> name(const Lanes<B, U>& a, const Lanes<B, U>& b) { \
    Lanes<B, U> r;                                                         \
    for (int u = 0; u < U; ++u) r.v[u] = name(a.v[u], b.v[u]);             \
    return r;                                                              \
  }
RG_LANES_CALL2(min)
RG_LANES_CALL2(max)
#undef RG_LANES_CALL2
#define RG_LANES_CALL3(name)                                                                     \
  template <class B, int U>                                                                      \
  RG_INLINE Lanes<B, U> name(const Lanes<B, U>& a, const Lanes<B, U>& b, const Lanes<B, U>& c) { \
    Lanes<B, U> r;                                                                               \
    for (int u = 0; u < U; ++u) r.v[u] = name(a.v[u], b.v[u], c.v[u]);                           \
    return r;                                                                                    \
  }
RG_LANES_CALL3(fma)
RG_LANES_CALL3(fnma)
#undef RG_LANES_CALL3

/// Newton steps that refine the hardware's reciprocal estimate to float precision: x86's rcpps
/// (12 bits) and AVX-512's rcp14 (14 bits) need one, NEON's vrecpeq_f32 (about 8 bits) two.
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
constexpr int reciprocal_newton_steps = 2;
#else
constexpr int reciprocal_newton_steps = 1;
#endif

/// 1/q for q in [4.8e-3, 1e2]: the hardware estimate refined by Newton steps (23 bits); cheaper
/// than a division, whose unit would otherwise limit the angle loop. Scalar kernels divide.
template <class B>
RG_INLINE B reciprocal_refined(const B& q) {
  if constexpr (is_scalar_batch<B>::value) {
    return B(1.0f / q.v);
  }
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  else {
    B r = xsimd::reciprocal(q);
    for (int i = 0; i < reciprocal_newton_steps; ++i) r = r * fnma(q, r, B(2.0f));
    return r;
  }
#endif
}
RG_INLINE batch<float> reciprocal(const batch<float>& q) { return reciprocal_refined(q); }
template <class B, int U>
RG_INLINE Lanes<B, U> reciprocal(const Lanes<B, U>& q) {
  Lanes<B, U> r;
  for (int u = 0; u < U; ++u) r.v[u] = reciprocal(q.v[u]);
  return r;
}

/// float: tanh by a rational function (see the note above). V: batch<float> or Lanes of them.
/// Horner form: the fewest operations; the lanes of a block hide its latency.
template <class V>
RG_INLINE V tanh_rational(const V& a) {
  const V x = max(min(a, V(7.99881172180175781f)), V(-7.99881172180175781f));
  const V x2 = x * x;
  V p = fma(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
  V q = fma(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
  p = fma(x2, p, V(-8.60467152213735e-11f));
  q = fma(x2, q, V(2.26843463243900e-03f));
  p = fma(x2, p, V(5.12229709037114e-08f));
  q = fma(x2, q, V(4.89352518554385e-03f));
  p = fma(x2, p, V(1.48572235717979e-05f));
  p = fma(x2, p, V(6.37261928875436e-04f));
  p = fma(x2, p, V(4.89352455891786e-03f));
  return x * p * reciprocal(q);
}

/// float: sin(pi t), cos(pi t) for |t| <= 1 through the half angle (see the note above).
template <class V>
RG_INLINE void sincos_pi_half_angle(const V& t, V& s, V& c) {
  const V b = t * V(1.57079632679489662f);
  const V z = b * b;
  V ps = fma(z, V(2.590488293208182e-06f), V(-0.00019800897280219942f));
  V pc = fma(z, V(2.3153970687417313e-05f), V(-0.0013853706186637282f));
  ps = fma(z, ps, V(0.008332899771630764f));
  pc = fma(z, pc, V(0.04166358336806297f));
  ps = fma(z, ps, V(-0.16666647791862488f));
  pc = fma(z, pc, V(-0.4999990463256836f));
  const V sb = fma(b * z, ps, b);
  const V cb = fma(z, pc, V(0.9999999403953552f));
  s = (sb + sb) * cb;
  c = (cb - sb) * (cb + sb);
}

/// float, bound pi_tanh: cos alpha, sin alpha, dalpha/dpre.
template <class V>
RG_INLINE void pi_tanh_cos_sin(const V& pre, V& c, V& s, V& d) {
  const V t = tanh_rational(pre);
  sincos_pi_half_angle(t, s, c);
  d = V(3.14159265358979324f) * fnma(t, t, V(1.0f));
}

RG_INLINE batch<float> tanh_fast(const batch<float>& a) { return tanh_rational(a); }
RG_INLINE void sincos_pi(const batch<float>& t, batch<float>& s, batch<float>& c) { sincos_pi_half_angle(t, s, c); }

/// alpha = bound(pre): its cosine, its sine and dalpha/dpre.
template <class B, class S = typename B::value_type>
RG_INLINE void angle_cos_sin(Bound bound, const B& pre, B& c, B& s, B& dalpha) {
  if (bound == Bound::pi_tanh) {
    const batch<S> t = tanh_fast(pre);
    sincos_pi(t, s, c);
    dalpha = batch<S>(pi<S>()) * fnma(t, t, batch<S>(S(1)));  // pi (1 - tanh^2)
  } else {
    const batch<S> alpha = bound_value(bound, pre);
    const auto sc = sincos(alpha);
    s = sc.first;
    c = sc.second;
    dalpha = batch<S>(S(1));
  }
}

}  // namespace simd
}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
