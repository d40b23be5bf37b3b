// radargate._core.Layer64: the float64 layer (python/src/layer.hpp).
#include "layer.hpp"

namespace radargate {
namespace python {
void bind_layer_f64(nb::module_& m) { bind_layer<double>(m, "Layer64", "Context64"); }
}  // namespace python
}  // namespace radargate
