// Two translation units that both include the CUDA backend must link into one program: a header-only
// library may not define a symbol with external linkage in each unit that includes it (the
// non-template kernels are static for this reason). The build (tests/gpu/CMakeLists.txt) compiles this file
// through link_unit_1.cu and link_unit_2.cu and links the two objects; the program is never run.
#include <radargate/cuda.cuh>

#ifndef RG_LINK_UNIT
#error "define RG_LINK_UNIT as 1 or 2"
#endif

#define RG_CAT2(a, b) a##b
#define RG_CAT(a, b) RG_CAT2(a, b)

// Instantiates forward and backward in this unit, as any user of the backend does.
void RG_CAT(use_backend_, RG_LINK_UNIT)(const radargate::LayerConfig& cfg, const radargate::Params<float>& p,
                                        radargate::View<const float, 2> x, radargate::View<float, 2> y,
                                        radargate::View<const float, 2> dy, const radargate::Gradients<float>& g,
                                        radargate::Workspace fw, radargate::Workspace bw) {
  radargate::Layer<float, radargate::backend::cuda> layer(cfg, p);
  const auto ctx = layer.forward(x, y, fw);
  layer.backward(ctx, dy, g, radargate::GradMode::overwrite, bw);
}

#if RG_LINK_UNIT == 2
int main(int argc, char**) { return argc > 100 ? 1 : 0; }
#endif
