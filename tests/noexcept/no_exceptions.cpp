// Built with -fno-exceptions: the reference and cpu backends run forward and backward, and bad
// input reaches the installed error handler (never a throw) with its one-line message.
//   no_exceptions ok        a valid layer, forward and backward on both backends; exit 0
//   no_exceptions bad-cpu   a cpu layer over inconsistent shapes (d = 7 from lora.B, P = 4): the handler exits 3
//   no_exceptions bad-ref   the same on the reference backend
//   no_exceptions default   no handler: the message goes to stderr and the program aborts
#include <radargate/cpu.hpp>
#include <radargate/reference.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if RG_EXCEPTIONS
#error "tests/noexcept: expected a build without exceptions (-fno-exceptions)"
#endif

using namespace radargate;

namespace {
void on_error(const char* message, void* user) {
  std::printf("handler (%s): %s\n", static_cast<const char*>(user), message);
  std::fflush(stdout);
  std::_Exit(3);
}

template <class L>
int run(index_t d_b) {
  const index_t T = 3, d_in = 8, d = 8, N = 2, r = 2, k = 2, P = 4;
  std::vector<float> A(N * r * d_in, 0.1f), B(N * d_b * r, 0.2f), U(P * k, 0.3f), M(N * N, 0.0f), ws(d, 0.01f);
  std::vector<float> x(T * d_in, 1.0f), y(T * d), dy(T * d, 1.0f), dx(T * d_in);
  for (std::size_t i = 0; i < A.size(); ++i) A[i] *= float(int(i % 5) - 2);
  Params<float> p;
  p.lora_A = make_view(static_cast<const float*>(A.data()), N, r, d_in);
  p.lora_B = make_view(static_cast<const float*>(B.data()), N, d_b, r);
  p.map_M = make_view(static_cast<const float*>(M.data()), N, N);
  p.angle_U = make_view(static_cast<const float*>(U.data()), P, k);
  p.stretch_ws = make_view(static_cast<const float*>(ws.data()), d);
  const LayerConfig cfg = LayerConfig::make(Variant::radargate);
  L layer(cfg, p);
  auto ctx = layer.forward(make_view(static_cast<const float*>(x.data()), T, d_in), make_view(y.data(), T, d));
  Gradients<float> g;
  g.x = make_view(dx.data(), T, d_in);
  layer.backward(ctx, make_view(static_cast<const float*>(dy.data()), T, d), g);
  std::printf("y[0] = %.6f, dx[0] = %.6f\n", double(y[0]), double(dx[0]));
  return y[0] == y[0] && dx[0] == dx[0] ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "ok";
  static_assert(!exceptions_enabled(), "built without exceptions");
  if (std::strcmp(mode, "ok") == 0) {
    set_error_handler(on_error, const_cast<char*>("ok"));
    const int a = run<Layer<float, backend::reference>>(8), b = run<Layer<float, backend::cpu>>(8);
    return a || b;
  }
  if (std::strcmp(mode, "bad-cpu") == 0) {
    set_error_handler(on_error, const_cast<char*>("cpu"));
    run<Layer<float, backend::cpu>>(7);
  } else if (std::strcmp(mode, "bad-ref") == 0) {
    set_error_handler(on_error, const_cast<char*>("reference"));
    run<Layer<float, backend::reference>>(7);
  } else if (std::strcmp(mode, "default") == 0) {
    run<Layer<float, backend::cpu>>(7);
  }
  std::printf("not reached: the bad layer was built\n");
  return 1;
}
