// radargate.hpp -- umbrella header. Include this; the files under radargate/detail/ are internal.
//
// The fused CPU backend (radargate/cpu.hpp, needs Eigen and xsimd), the file I/O
// (radargate/io/..., needs nlohmann/json) and the geometry (radargate/geometry/..., needs Eigen)
// are included by their own headers so a runtime that wants only the reference layer pulls in no
// dependency at all.
#pragma once

#include "radargate/backend.hpp"
#include "radargate/config.hpp"
#include "radargate/error.hpp"
#include "radargate/layer_config.hpp"
#include "radargate/model.hpp"
#include "radargate/params.hpp"
#include "radargate/reference.hpp"
#include "radargate/version.hpp"
#include "radargate/view.hpp"
