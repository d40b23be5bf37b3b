// radargate/detail/cpu_scratch.hpp -- the cpu backend's per-call scratch memory: a bump allocator
// over a caller's workspace, spans over it, and matrix products whose packing buffers come from it.
//
// Arena hands out 64-byte aligned blocks of a byte range in order and takes them back in reverse
// (Arena::Mark). With no range it only counts, which is how the workspace sizes are computed.
//
// gemm() is Eigen's own dense product (the same kernels and the same blocking, so the same
// results bit for bit) with its packed blocks of the left and right operands taken from an Arena:
// Eigen's expression path puts them on the stack below EIGEN_STACK_ALLOCATION_LIMIT (128 KiB) and
// on the heap above it, once per product. A packed block never exceeds min(depth, kc_max) x
// (rows + cols) scalars (gemm_bytes), where kc_max is Eigen's depth blocking, set by the L1 size.
#pragma once

#include "cpu_arch.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../error.hpp"
#include "../view.hpp"

namespace radargate {
namespace detail {
inline namespace RG_CPU_NS {

constexpr std::size_t scratch_align = 64;

constexpr std::size_t round_bytes(std::size_t b) { return (b + scratch_align - 1) / scratch_align * scratch_align; }

/// Bytes an Arena takes for n values of T.
template <class T>
constexpr std::size_t arena_bytes(index_t n) {
  return round_bytes(std::size_t(n > 0 ? n : 0) * sizeof(T));
}

/// A contiguous run of T in scratch memory (the parts of std::vector the backend uses).
template <class T>
struct Buf {
  T* p = nullptr;
  std::size_t n = 0;
  T* data() const { return p; }
  std::size_t size() const { return n; }
  bool empty() const { return n == 0; }
  T& operator[](std::size_t i) const { return p[i]; }
  T* begin() const { return p; }
  T* end() const { return p + n; }
};

class Arena {
 public:
  Arena() = default;
  /// Over [data, data + bytes), aligned up inside.
  Arena(void* data, std::size_t bytes) {
    if (!data) return;
    const auto a = reinterpret_cast<std::uintptr_t>(data);
    const std::size_t skip = std::size_t((scratch_align - a % scratch_align) % scratch_align);
    if (skip > bytes) return;
    base_ = static_cast<unsigned char*>(data) + skip;
    cap_ = bytes - skip;
  }
  /// n values of T, uninitialised (a counting arena returns null).
  template <class T>
  T* take(index_t n) {
    const std::size_t b = arena_bytes<T>(n);
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += b;
    peak_ = std::max(peak_, used_);
    if (base_ && used_ > cap_)
      fail("cpu workspace: expected room for ", used_, " bytes of scratch, found ", cap_,
           " (the size query and the call disagree: please report this)");
    return p;
  }
  template <class T>
  Buf<T> buf(index_t n) {
    return Buf<T>{take<T>(n), std::size_t(n > 0 ? n : 0)};
  }
  template <class T>
  Buf<T> zeros(index_t n) {
    Buf<T> b = buf<T>(n);
    if (b.p) std::fill(b.p, b.p + b.n, T(0));
    return b;
  }
  /// A sub-arena of `bytes` bytes taken from this one.
  Arena sub(std::size_t bytes) {
    unsigned char* p = take<unsigned char>(index_t(bytes));
    Arena a;
    a.base_ = p;
    a.cap_ = p ? bytes : 0;
    return a;
  }
  bool counting() const { return base_ == nullptr; }
  std::size_t used() const { return used_; }
  std::size_t peak() const { return peak_; }

  /// Gives back, when it goes out of scope, everything taken after it was made.
  class Mark {
   public:
    explicit Mark(Arena& a) : a_(a), used_(a.used_) {}
    ~Mark() { a_.used_ = used_; }
    Mark(const Mark&) = delete;
    Mark& operator=(const Mark&) = delete;

   private:
    Arena& a_;
    std::size_t used_;
  };

 private:
  unsigned char* base_ = nullptr;
  std::size_t cap_ = 0, used_ = 0, peak_ = 0;
};

/// Eigen's largest depth block (kc) for S: no product's packed blocks are deeper.
template <class S>
index_t gemm_kc_max() {
  static const index_t kc = [] {
    Eigen::Index k = Eigen::Index(1) << 22, m = 4096, n = 4096;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Eigen::Index>(k, m, n, 1);
    return std::max<index_t>(index_t(k), 48);  // products below 48 in every extent are not blocked
  }();
  return kc;
}

/// Scratch bytes gemm() takes for a product [rows, depth] x [depth, cols] (an upper bound).
template <class S>
std::size_t gemm_bytes(index_t rows, index_t cols, index_t depth) {
  if (rows <= 0 || cols <= 0 || depth <= 0) return 0;
  const index_t kc = std::min(depth, gemm_kc_max<S>());
  return arena_bytes<S>(kc * rows) + arena_bytes<S>(kc * cols);
}

template <class S>
class ArenaBlocking : public Eigen::internal::level3_blocking<S, S> {
 public:
  // As Eigen's gemm_blocking_space for a row-major destination (the product is run transposed).
  ArenaBlocking(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, bool row_major, Arena& a) {
    this->m_mc = row_major ? cols : rows;
    this->m_nc = row_major ? rows : cols;
    this->m_kc = depth;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Eigen::Index>(this->m_kc, this->m_mc, this->m_nc, 1);
    this->m_blockA = a.take<S>(index_t(this->m_mc * this->m_kc));
    this->m_blockB = a.take<S>(index_t(this->m_kc * this->m_nc));
  }
};

/// dst = lhs * rhs (add: dst += lhs * rhs), as Eigen's dst.noalias() (+)= lhs * rhs, with the
/// packing buffers of a blocked product taken from `a` (given back on return). Vector and tiny
/// products take Eigen's paths, which need no buffers beyond small stack ones.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add, Arena& a) {
  using D = std::remove_reference_t<Dst>;
  using S = typename D::Scalar;
  const Eigen::Index m = dst.rows(), n = dst.cols(), depth = lhs.cols();
  if (m == 0 || n == 0) return;
  if (depth == 0 || m == 1 || n == 1 || rhs.rows() + m + n < EIGEN_GEMM_TO_COEFFBASED_THRESHOLD) {
    if (add)
      dst.noalias() += lhs * rhs;
    else
      dst.noalias() = lhs * rhs;
    return;
  }
  if (!add) dst.setZero();
  using LT = Eigen::internal::blas_traits<Lhs>;
  using RT = Eigen::internal::blas_traits<Rhs>;
  using LA = typename Eigen::internal::remove_all<typename LT::DirectLinearAccessType>::type;
  using RA = typename Eigen::internal::remove_all<typename RT::DirectLinearAccessType>::type;
  const auto& l = LT::extract(lhs);
  const auto& r = RT::extract(rhs);
  const S alpha = Eigen::internal::combine_scalar_factors(S(1), lhs, rhs);
  constexpr bool row_major = (D::Flags & Eigen::RowMajorBit) != 0;
  using Gemm = Eigen::internal::general_matrix_matrix_product<
      Eigen::Index, S, (LA::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor, bool(LT::NeedToConjugate),
      S, (RA::Flags & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor, bool(RT::NeedToConjugate),
      row_major ? Eigen::RowMajor : Eigen::ColMajor, D::InnerStrideAtCompileTime>;
  Arena::Mark keep(a);
  ArenaBlocking<S> blocking(m, n, depth, row_major, a);
  Gemm::run(m, n, depth, &l.coeffRef(0, 0), l.outerStride(), &r.coeffRef(0, 0), r.outerStride(), &dst.coeffRef(0, 0),
            dst.innerStride(), dst.outerStride(), alpha, blocking);
}

}  // namespace RG_CPU_NS
}  // namespace detail
}  // namespace radargate
