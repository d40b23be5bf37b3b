// radargate bench --backend cuda -- times one call of Layer<S, backend::cuda> on a random model and
// random inputs in device memory: CUDA events around each call, median over --repeat calls after
// --warmup untimed ones. GFLOP/s uses the essential work of radargate/flops.hpp, as for the CPU
// backends; the memory figure is the device memory the layer, its workspaces and the tensors take.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_cuda.hpp"
#include "radargate.hpp"
#include "radargate/cuda.cuh"
#include "radargate/flops.hpp"

namespace radargate {
namespace cli {
namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) detail::fail("CUDA error ", cudaGetErrorString(e), " in ", what);
}

/// An owning device buffer.
struct Buffer {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit Buffer(std::size_t n) : bytes(n) {
    if (n) ok(cudaMalloc(&p, n), "cudaMalloc");
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (p) cudaFree(p);
  }
};

template <class S>
std::vector<S> to_storage(const std::vector<double>& v) {
  std::vector<S> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = detail::gpu::from_float<S>(float(v[i]));
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

template <class S>
int run(const CudaBenchRequest& a) {
  RandomModelOptions opt;
  opt.base = a.base;
  const Model<double> m = random_model<double>(a.cfg, a.D, a.seed, opt);
  std::vector<std::unique_ptr<Buffer>> keep;
  std::size_t device_bytes = 0;
  auto upload = [&](const std::vector<double>& h) {
    keep.emplace_back(new Buffer(h.size() * sizeof(S)));
    const std::vector<S> s = to_storage<S>(h);
    ok(cudaMemcpy(keep.back()->p, s.data(), s.size() * sizeof(S), cudaMemcpyHostToDevice), "cudaMemcpy");
    device_bytes += keep.back()->bytes;
    return static_cast<S*>(keep.back()->p);
  };
  auto dense = [](auto& v, S* p, const std::vector<index_t>& shape) {
    using V = std::decay_t<decltype(v)>;
    v.data = p;
    index_t st = 1;
    for (int k = V::rank - 1; k >= 0; --k) {
      v.shape[k] = shape[std::size_t(k)];
      v.stride[k] = st;
      st *= shape[std::size_t(k)];
    }
  };
  Params<S> p;
  Gradients<S> G;
  for_each_param(p, [&](const char* name, auto& v) {
    auto it = m.tensors.find(name);
    if (it != m.tensors.end()) dense(v, upload(it->second.data), it->second.shape);
  });
  const index_t T = a.T, din = a.D.d_in, d = a.D.d;
  std::mt19937_64 rng(a.seed + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> hx(std::size_t(T * din)), hdy(std::size_t(T * d));
  for (double& e : hx) e = normal(rng);
  for (double& e : hdy) e = normal(rng);
  S* x = upload(hx);
  S* dy = upload(hdy);
  Buffer y(std::size_t(T * d) * sizeof(S));
  device_bytes += y.bytes;
  if (a.backward) {
    G.x = make_view(upload(std::vector<double>(std::size_t(T * din))), T, din);
    for_each_param(G, [&](const char* name, auto& v) {
      auto it = m.tensors.find(name);
      if (it != m.tensors.end()) dense(v, upload(std::vector<double>(it->second.data.size())), it->second.shape);
    });
  }

  Layer<S, backend::cuda> layer(a.cfg, p);
  Buffer fws(layer.forward_workspace_bytes(T)), bws(a.backward ? layer.backward_workspace_bytes(T, G) : 0);
  device_bytes += fws.bytes + bws.bytes;
  const auto xv = make_view(static_cast<const S*>(x), T, din);
  const auto yv = make_view(static_cast<S*>(y.p), T, d);
  const auto dyv = make_view(static_cast<const S*>(dy), T, d);
  cudaEvent_t e0, e1, e2;
  ok(cudaEventCreate(&e0), "cudaEventCreate");
  ok(cudaEventCreate(&e1), "cudaEventCreate");
  ok(cudaEventCreate(&e2), "cudaEventCreate");
  std::vector<double> total, fwd, bwd;
  for (int it = 0; it < a.warmup + a.repeat; ++it) {
    ok(cudaEventRecord(e0), "cudaEventRecord");
    auto ctx = layer.forward(xv, yv, Workspace{fws.p, fws.bytes});
    ok(cudaEventRecord(e1), "cudaEventRecord");
    if (a.backward) layer.backward(ctx, dyv, G, GradMode::overwrite, Workspace{bws.p, bws.bytes});
    ok(cudaEventRecord(e2), "cudaEventRecord");
    ok(cudaEventSynchronize(e2), "cudaEventSynchronize");
    if (it < a.warmup) continue;
    float f = 0, b = 0;
    ok(cudaEventElapsedTime(&f, e0, e1), "cudaEventElapsedTime");
    ok(cudaEventElapsedTime(&b, e1, e2), "cudaEventElapsedTime");
    fwd.push_back(f * 1e-3);
    bwd.push_back(b * 1e-3);
    total.push_back((f + b) * 1e-3);
  }
  ok(cudaGetLastError(), "timed calls");
  std::vector<S> hy(std::size_t(T * d));
  ok(cudaMemcpy(hy.data(), y.p, hy.size() * sizeof(S), cudaMemcpyDeviceToHost), "cudaMemcpy");
  double checksum = 0;
  for (S e : hy) checksum += double(detail::gpu::to_float(e));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaEventDestroy(e2);

  cudaDeviceProp prop{};
  int dev = 0;
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  const WorkCount w = essential_work(a.cfg, a.D, T, a.backward, a.base);
  const double med = median(total), gflops = w.flops / med * 1e-9, mb = double(device_bytes) / (1 << 20);
  if (a.json) {
    std::printf(
        "{\"variant\": \"%s\", \"backend\": \"cuda\", \"device\": \"%s\", \"dtype\": \"%s\", \"tokens\": %lld, "
        "\"experts\": %lld, \"d_in\": %lld, \"d\": %lld, \"rank\": %lld, \"angle_rank\": %lld, \"planes\": %lld, "
        "\"base\": %s, \"backward\": %s, \"repeat\": %d, \"median_s\": %.9g, \"min_s\": %.9g, "
        "\"median_forward_s\": %.9g, \"median_backward_s\": %.9g, \"flops\": %.9g, \"gflops\": %.6g, "
        "\"bytes\": %.9g, \"device_mb\": %.3f, \"checksum\": %.9g}\n",
        to_string(a.cfg.variant), prop.name, a.dtype.c_str(), (long long)T, (long long)a.D.N, (long long)din,
        (long long)d, (long long)a.D.r, (long long)a.D.k, (long long)a.D.P, a.base ? "true" : "false",
        a.backward ? "true" : "false", a.repeat, med, *std::min_element(total.begin(), total.end()), median(fwd),
        a.backward ? median(bwd) : 0.0, w.flops, gflops, w.elements * double(sizeof(S)), mb, checksum);
  } else {
    std::printf(
        "radargate bench: variant %s, backend cuda (%s), %s, T=%lld N=%lld d_in=%lld d=%lld r=%lld k=%lld "
        "P=%lld%s\n",
        to_string(a.cfg.variant), prop.name, a.dtype.c_str(), (long long)T, (long long)a.D.N, (long long)din,
        (long long)d, (long long)a.D.r, (long long)a.D.k, (long long)a.D.P, a.base ? ", base" : "");
    std::printf("  %s: median %.6f s over %d runs (min %.6f s)", a.backward ? "forward + backward" : "forward", med,
                a.repeat, *std::min_element(total.begin(), total.end()));
    if (a.backward) std::printf("  [forward %.6f s, backward %.6f s]", median(fwd), median(bwd));
    std::printf("\n  essential work: %.4g GFLOP -> %.2f GFLOP/s\n", w.flops * 1e-9, gflops);
    std::printf("  device memory: %.1f MB (model, inputs, outputs, gradients, workspaces)\n", mb);
  }
  return 0;
}

}  // namespace

int bench_cuda(const CudaBenchRequest& a) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    detail::fail("--backend cuda: no CUDA device is available");
  }
  if (a.dtype == "bf16") return run<__nv_bfloat16>(a);
  if (a.dtype == "f16") return run<__half>(a);
  return run<float>(a);
}

}  // namespace cli
}  // namespace radargate
