// radargate._core.Layer32: the float32 layer (python/src/layer.hpp).
#include "layer.hpp"

namespace radargate {
namespace python {
void bind_layer_f32(nb::module_& m) { bind_layer<float>(m, "Layer32", "Context32"); }
}  // namespace python
}  // namespace radargate
