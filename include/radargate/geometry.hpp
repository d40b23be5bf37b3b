// radargate/geometry.hpp -- the geometry of mixing experts (docs/GEOMETRY.md). Needs Eigen
// (link radargate::cpu).
//
//   radargate/geometry/nnls.hpp        min ||V lambda - y||, lambda >= 0        (Lawson–Hanson)
//   radargate/geometry/hull.hpp        nearest point of conv(V)                 (Wolfe)
//   radargate/geometry/cone.hpp        cone / hull membership with certificates, distances, batches
//   radargate/geometry/expansion.hpp   does a layer's output leave the cone of its experts?
#pragma once

#include "radargate/geometry/cone.hpp"
#include "radargate/geometry/expansion.hpp"
#include "radargate/geometry/hull.hpp"
#include "radargate/geometry/nnls.hpp"
