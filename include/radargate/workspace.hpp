// radargate/workspace.hpp -- caller-owned scratch memory for one forward or backward call.
//
// A backend that takes a Workspace says how many bytes it needs (forward_workspace_bytes,
// backward_workspace_bytes) and then works inside that memory instead of allocating, as cuBLAS
// and Eigen-style APIs do. Host memory for the cpu and reference backends, device memory for the
// cuda backend. Any alignment is accepted (the sizes include the slack to align inside).
#pragma once

#include <cstddef>

namespace radargate {

/// Caller-owned memory for one call: `bytes` bytes at `data`.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

}  // namespace radargate
