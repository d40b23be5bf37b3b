// radargate/grad_plan.hpp -- what a backward call must compute, decided once from the
// configuration and the requested gradients, for every backend.
//
// Backward runs the chain y <- u_i <- (v_i, theta_i) <- (h_i, z_i) <- x in reverse (docs/MATH.md).
// Only the links that lead to a requested gradient are needed:
//
//   dv       dL/dv_i, the experts' outputs      for x, lora.A, lora.B, lora.scale
//   dz       dL/dz_i, the angle generator's     for the rank-space angle inputs (rotation only):
//            inputs                             the map, angle.Wx/Wv/Wc/U/bias, and everything dv needs
//   dlogits  dL/dl, the gate's logits           for stretch.Wg/bg/ws and everything upstream of u
//
// A backend reads the plan and adds its own refinements (the CUDA backend's passes, the cpu
// backend's strategies); it never decides these three again.
#pragma once

#include "layer_config.hpp"
#include "param_table.hpp"
#include "params.hpp"

namespace radargate {

struct GradPlan {
  bool x = false;                // dL/dx asked for
  bool param[param_count] = {};  // dL/dparam asked for, by param_table row
  bool dv = false;               // the chain down to the experts' outputs
  bool dz = false;               // the chain down to the angle inputs (rotation only)
  bool dlogits = false;          // the chain through the gate's logits (gates with logits)

  /// Was the gradient of this parameter (param_table's file name) asked for?
  bool asked(const char* name) const {
    for (int i = 0; i < param_count; ++i)
      if (std::string(name) == param_table[i].name) return param[i];
    return false;
  }
  /// Anything to do at all (besides zeroing in overwrite mode)?
  bool any() const {
    if (x) return true;
    for (bool p : param)
      if (p) return true;
    return false;
  }
};

/// The plan of a backward call of a layer with configuration c asked for gradients g.
template <class S>
GradPlan plan_gradients(const LayerConfig& c, const Gradients<S>& g) {
  GradPlan n;
  n.x = g.x.present();
  int row = 0;
  for_each_param(g, [&](const char*, const auto& v) { n.param[row++] = v.present(); });
  n.dv = g.x.present() || g.lora_A.present() || g.lora_B.present() || g.lora_scale.present();
  n.dz = c.rotation && (n.dv || g.map_M.present() || g.angle_Wx.present() || g.angle_Wv.present() ||
                        g.angle_Wc.present() || g.angle_U.present() || g.angle_bias.present());
  n.dlogits =
      c.has_logits() && (n.dv || n.dz || g.stretch_Wg.present() || g.stretch_bg.present() || g.stretch_ws.present());
  return n;
}

namespace detail {
// The names the backends have used for the plan.
using BackwardNeeds = GradPlan;
template <class S>
GradPlan backward_needs(const LayerConfig& c, const Gradients<S>& g) {
  return plan_gradients(c, g);
}
}  // namespace detail

}  // namespace radargate
