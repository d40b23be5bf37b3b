// The FLOP ceiling: single-core SGEMM (and DGEMM) of OpenBLAS, one thread, C = A B with square
// and with the shapes of the layer's own products; Eigen's GEMM (used by the cpu backend for the
// shrink) on the same shapes for comparison. Counter FLOPS = 2 M N K per second.
// The byte ceiling: one core reading a float buffer of 1 to 64 MiB over and over (the sum of its
// values), bytes_per_second. A decode step (T = 1) reads every weight once, so this bounds it.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <Eigen/Core>
#include <cstdint>
#include <random>
#include <vector>

namespace {
template <class S>
std::vector<S> random_matrix(long n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<S> v(static_cast<std::size_t>(n));
  for (S& e : v) e = S(u(rng));
  return v;
}

template <class S>
void BM_openblas_gemm(benchmark::State& state) {
  openblas_set_num_threads(1);
  const long M = state.range(0), N = state.range(1), K = state.range(2);
  const auto A = random_matrix<S>(M * K, 1), B = random_matrix<S>(K * N, 2);
  std::vector<S> C(static_cast<std::size_t>(M * N));
  for (auto _ : state) {
    if constexpr (sizeof(S) == 4)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
    else
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0, A.data(), K, B.data(), N, 0.0, C.data(), N);
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

template <class S>
void BM_eigen_gemm(benchmark::State& state) {
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const long M = state.range(0), N = state.range(1), K = state.range(2);
  const Mat A = Mat::Random(M, K), B = Mat::Random(K, N);
  Mat C(M, N);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_read(benchmark::State& state) {
  const long n = state.range(0) * (1 << 20) / long(sizeof(float));
  const Eigen::VectorXf v = Eigen::VectorXf::Random(n);
  for (auto _ : state) {
    float s = v.sum();
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * n * std::int64_t(sizeof(float)));
}

// square, and the layer's shrink (T x d_in times d_in x N r) at the target shape
void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K"});
  b->Args({1024, 1024, 1024});
  b->Args({2048, 2048, 2048});
  b->Args({256, 320, 4096});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
}  // namespace

BENCHMARK_TEMPLATE(BM_openblas_gemm, float)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_eigen_gemm, float)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_openblas_gemm, double)->Apply(shapes);
BENCHMARK_TEMPLATE(BM_eigen_gemm, double)->Apply(shapes);

BENCHMARK(BM_read)
    ->ArgName("MiB")
    ->Arg(1)
    ->Arg(4)
    ->Arg(10)
    ->Arg(16)
    ->Arg(64)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
