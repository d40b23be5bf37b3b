// radargate/version.hpp -- the library's version. CMakeLists.txt reads it from here, so the
// package version and the headers' cannot disagree.
#pragma once

#define RADARGATE_VERSION_MAJOR 0
#define RADARGATE_VERSION_MINOR 2
#define RADARGATE_VERSION_PATCH 0

/// major * 10000 + minor * 100 + patch, for #if comparisons.
#define RADARGATE_VERSION (RADARGATE_VERSION_MAJOR * 10000 + RADARGATE_VERSION_MINOR * 100 + RADARGATE_VERSION_PATCH)

namespace radargate {
/// The version as "major.minor.patch".
inline constexpr const char* version_string = "0.2.0";
}  // namespace radargate
