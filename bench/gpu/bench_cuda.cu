// radargate_cuda_bench -- times the CUDA backend and measures the device's two ceilings in the
// same run: device-to-device copy bandwidth (bytes read + written) and the bf16 / fp16 / float
// cuBLAS matrix-product rate. Each timing is the median of `repeats` CUDA-event-timed runs after
// warm-up; inputs are random (never zeros).
//
//   radargate_cuda_bench [--T 2048] [--N 40] [--d-in 4096] [--d 4096] [--r 16] [--k 16] [--P 0 (= d/2)]
//                        [--variant radargate] [--dtype bf16|f16|f32] [--decode-T 1] [--repeats 30]
//                        [--json FILE]
//
// Cases: forward and forward+backward at T tokens, and forward at decode-T tokens. Backward
// computes the gradients of x and of every parameter except the frozen base.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../tests/gpu/gpu_support.hpp"

using namespace radargate;
using rggpu::DeviceArray;

namespace {

struct Opts {
  index_t T = 2048, N = 40, d_in = 4096, d = 4096, r = 16, k = 16, P = 0, decode_T = 1;
  std::string variant = "radargate", dtype = "bf16", json;
  int repeats = 30;
  bool profile = false;  // one untimed-warm-up run of each case, no ceilings (for a profiler)
};
int g_warmup_scale = 1;

__global__ void fill_random(float* p, std::size_t n, unsigned seed, float scale) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ (seed * 97u + 13u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = scale * (float(h & 0xffffff) / float(0x1000000) - 0.5f);
  }
}
template <class S>
__global__ void fill_random_s(S* p, std::size_t n, unsigned seed, float scale) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ (seed * 97u + 13u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = detail::gpu::from_float<S>(scale * (float(h & 0xffffff) / float(0x1000000) - 0.5f));
  }
}

template <class F>
double median_ms(F&& f, int warmup, int repeats) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < warmup * g_warmup_scale; ++i) f();
  std::vector<float> ms;
  for (int i = 0; i < repeats; ++i) {
    cudaEventRecord(a);
    f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  rggpu::cuda_ok(cudaGetLastError(), "timed region");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/// Device-to-device copy rate, counting bytes read plus bytes written.
double measure_bandwidth(int repeats) {
  const std::size_t bytes = std::size_t(1) << 30;
  DeviceArray<char> a(bytes), b(bytes);
  fill_random<<<1024, 256>>>(reinterpret_cast<float*>(a.ptr), bytes / 4, 1, 1.f);
  const double ms = median_ms([&] { cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice); }, 3, repeats);
  return 2.0 * double(bytes) / (ms * 1e-3);
}

/// cuBLAS matrix-product rate for storage S (float32 accumulation), n x n x n on random data.
template <class S>
double measure_gemm(int repeats) {
  const int n = 8192;
  DeviceArray<S> A(std::size_t(n) * n), B(std::size_t(n) * n);
  DeviceArray<float> C(std::size_t(n) * n);
  fill_random_s<S><<<1024, 256>>>(A.ptr, A.n, 3, 1.f);
  fill_random_s<S><<<1024, 256>>>(B.ptr, B.n, 4, 1.f);
  cublasHandle_t h;
  cublasCreate(&h);
  const float one = 1.f, zero = 0.f;
  const cudaDataType_t t = detail::gpu::storage<S>::cuda_type;
  const double ms = median_ms(
      [&] {
        cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A.ptr, t, n, B.ptr, t, n, &zero, C.ptr, CUDA_R_32F, n,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      },
      3, repeats);
  cublasDestroy(h);
  return 2.0 * double(n) * n * n / (ms * 1e-3);
}

struct Result {
  std::string name;
  double ms = 0, bytes = 0, flops = 0;
};

template <class S>
std::vector<Result> run(const Opts& o, double bw, double peak) {
  LayerConfig cfg = LayerConfig::make(parse_variant(o.variant));
  Dims D;
  D.N = o.N;
  D.r = o.r;
  D.d_in = o.d_in;
  D.d = o.d;
  D.k = cfg.rotation ? o.k : 0;
  D.P = cfg.rotation ? (o.P > 0 ? o.P : o.d / 2) : 0;
  RandomModelOptions ro;
  ro.base = false;
  Model<double> m = random_model<double>(cfg, D, 2024, ro);
  rggpu::DeviceModel<S> dm(m);
  Layer<S, backend::cuda> layer(cfg, dm.params);
  const double es = double(sizeof(S));
  std::vector<Result> out;

  for (index_t T : {o.T, o.decode_T}) {
    const bool decode = T == o.decode_T && T != o.T;
    DeviceArray<S> x(std::size_t(T * D.d_in)), y(std::size_t(T * D.d)), dy(std::size_t(T * D.d));
    fill_random_s<S><<<1024, 256>>>(x.ptr, x.n, 11, 2.f);
    fill_random_s<S><<<1024, 256>>>(dy.ptr, dy.n, 12, 2.f);
    DeviceArray<char> fws(layer.forward_workspace_bytes(T));
    const auto xv = make_view(static_cast<const S*>(x.ptr), T, D.d_in);
    const auto yv = make_view(y.ptr, T, D.d);
    const auto dyv = make_view(static_cast<const S*>(dy.ptr), T, D.d);
    const Workspace fw{fws.ptr, fws.n};
    typename Layer<S, backend::cuda>::Context ctx;
    const int reps = decode && !o.profile ? o.repeats * 4 : o.repeats;

    // Matrix FLOPs of the forward (shrink, expand, angles, Wx x, Wg x) and its fewest bytes
    // (x, y, A, B, and the small parameters once).
    const double T_ = double(T), N = double(D.N), r = double(D.r), k = double(D.k), P = double(D.P);
    const double flops_f =
        2 * T_ * N * r * (D.d_in + D.d) + 2 * T_ * N * P * k + 2 * T_ * k * D.d_in + 2 * T_ * N * D.d_in;
    double params = 0;
    for (const auto& kv : m.tensors) params += double(kv.second.data.size());
    const double bytes_f = es * (T_ * D.d_in + T_ * D.d + params);

    Result f;
    f.name = std::string(decode ? "decode " : "") + "forward T=" + std::to_string(T);
    f.ms = median_ms([&] { ctx = layer.forward(xv, yv, fw); }, 3, reps);
    f.flops = flops_f;
    f.bytes = bytes_f;
    out.push_back(f);
    std::printf("%-28s %9.4f ms   roofline %9.4f ms\n", f.name.c_str(), f.ms,
                1e3 * std::max(f.bytes / bw, f.flops / peak));
    if (decode) continue;

    std::vector<std::string> names;
    for (const auto& kv : m.tensors) names.push_back(kv.first);
    rggpu::DeviceGrads<S> gd(dm, names, true, T, D.d_in);
    DeviceArray<char> bws(layer.backward_workspace_bytes(T, gd.views));
    const Workspace bw_ws{bws.ptr, bws.n};
    Result fb;
    fb.name = "forward+backward T=" + std::to_string(T);
    fb.ms = median_ms(
        [&] {
          ctx = layer.forward(xv, yv, fw);
          layer.backward(ctx, dyv, gd.views, GradMode::overwrite, bw_ws);
        },
        2, reps);
    // Backward's products are twice the forward's; bytes add dy, dx, x again and every gradient.
    fb.flops = 3 * flops_f;
    fb.bytes = bytes_f + es * (T_ * D.d + 2 * T_ * D.d_in + params);
    out.push_back(fb);
    std::printf("%-28s %9.4f ms   roofline %9.4f ms\n", fb.name.c_str(), fb.ms,
                1e3 * std::max(fb.bytes / bw, fb.flops / peak));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "radargate_cuda_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--T")
      o.T = std::atol(next().c_str());
    else if (a == "--N")
      o.N = std::atol(next().c_str());
    else if (a == "--d-in")
      o.d_in = std::atol(next().c_str());
    else if (a == "--d")
      o.d = std::atol(next().c_str());
    else if (a == "--r")
      o.r = std::atol(next().c_str());
    else if (a == "--k")
      o.k = std::atol(next().c_str());
    else if (a == "--P")
      o.P = std::atol(next().c_str());
    else if (a == "--decode-T")
      o.decode_T = std::atol(next().c_str());
    else if (a == "--variant")
      o.variant = next();
    else if (a == "--dtype")
      o.dtype = next();
    else if (a == "--repeats")
      o.repeats = std::atoi(next().c_str());
    else if (a == "--json")
      o.json = next();
    else if (a == "--profile")
      o.profile = true;
    else {
      std::fprintf(stderr, "radargate_cuda_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (rggpu::device_count() == 0) {
    std::printf("skipped: no GPU\n");
    return 77;
  }
  try {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    std::vector<Result> res;
    if (o.profile) {
      g_warmup_scale = 0;
      o.repeats = 1;
      if (o.dtype == "bf16")
        res = run<__nv_bfloat16>(o, 1.0, 1.0);
      else if (o.dtype == "f16")
        res = run<__half>(o, 1.0, 1.0);
      else
        res = run<float>(o, 1.0, 1.0);
      return 0;
    }
    const double bw = measure_bandwidth(20);
    double peak = 0;
    if (o.dtype == "bf16") {
      peak = measure_gemm<__nv_bfloat16>(10);
    } else if (o.dtype == "f16") {
      peak = measure_gemm<__half>(10);
    } else if (o.dtype == "f32") {
      peak = measure_gemm<float>(5);
    } else {
      std::fprintf(stderr, "radargate_cuda_bench: --dtype: expected bf16 | f16 | f32, found %s\n", o.dtype.c_str());
      return 2;
    }
    std::printf("device %s: copy bandwidth %.0f GB/s, %s cuBLAS GEMM %.1f TFLOP/s\n", prop.name, bw / 1e9,
                o.dtype.c_str(), peak / 1e12);
    if (o.dtype == "bf16")
      res = run<__nv_bfloat16>(o, bw, peak);
    else if (o.dtype == "f16")
      res = run<__half>(o, bw, peak);
    else
      res = run<float>(o, bw, peak);
    if (!o.json.empty()) {
      FILE* f = std::fopen(o.json.c_str(), "w");
      if (!f) {
        std::fprintf(stderr, "radargate_cuda_bench: cannot write %s\n", o.json.c_str());
        return 1;
      }
      std::fprintf(f, "{\n  \"device\": \"%s\", \"sms\": %d,\n  \"bandwidth_Bps\": %.6e, \"gemm_flops\": %.6e,\n",
                   prop.name, prop.multiProcessorCount, bw, peak);
      std::fprintf(
          f,
          "  \"config\": {\"variant\": \"%s\", \"dtype\": \"%s\", \"T\": %ld, \"N\": %ld, \"d_in\": %ld, \"d\": %ld, "
          "\"r\": %ld, \"k\": %ld, \"P\": %ld, \"decode_T\": %ld},\n",
          o.variant.c_str(), o.dtype.c_str(), long(o.T), long(o.N), long(o.d_in), long(o.d), long(o.r), long(o.k),
          long(o.P > 0 ? o.P : o.d / 2), long(o.decode_T));
      std::fprintf(f, "  \"cases\": [\n");
      for (std::size_t i = 0; i < res.size(); ++i)
        std::fprintf(f, "    {\"name\": \"%s\", \"ms\": %.6f, \"bytes\": %.6e, \"flops\": %.6e}%s\n",
                     res[i].name.c_str(), res[i].ms, res[i].bytes, res[i].flops, i + 1 < res.size() ? "," : "");
      std::fprintf(f, "  ]\n}\n");
      std::fclose(f);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "radargate_cuda_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
