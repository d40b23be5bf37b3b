// GradPlan (grad_plan.hpp): which links of the backward chain a set of requested gradients needs.
#include <catch2/catch.hpp>

#include "support/testing.hpp"

using namespace radargate;

TEST_CASE("grad plan: links follow the requested gradients", "[plan]") {
  std::vector<double> buf(64);
  const LayerConfig rg = LayerConfig::make(Variant::radargate);
  const LayerConfig sum = LayerConfig::make(Variant::sum);
  const LayerConfig rot = LayerConfig::make(Variant::rotation_only);

  Gradients<double> none;
  GradPlan p = plan_gradients(rg, none);
  CHECK(!p.any());
  CHECK((!p.dv && !p.dz && !p.dlogits));

  Gradients<double> ws;
  ws.stretch_ws = make_view(buf.data(), 4);
  p = plan_gradients(rg, ws);
  CHECK(p.any());
  CHECK(p.asked("stretch.ws"));
  CHECK(!p.asked("lora.B"));
  CHECK((!p.dv && !p.dz && p.dlogits));

  Gradients<double> x;
  x.x = make_view(buf.data(), 2, 4);
  p = plan_gradients(rg, x);
  CHECK((p.x && p.dv && p.dz && p.dlogits));
  p = plan_gradients(sum, x);
  CHECK((p.dv && !p.dz && !p.dlogits));  // no rotation, no logits
  p = plan_gradients(rot, x);
  CHECK((p.dv && p.dz && !p.dlogits));  // uniform gate: no logits

  Gradients<double> u;
  u.angle_U = make_view(buf.data(), 2, 2);
  p = plan_gradients(rot, u);
  CHECK((!p.dv && p.dz && !p.dlogits));
  p = plan_gradients(rg, u);
  CHECK((!p.dv && p.dz && p.dlogits));  // the stretch term reads the rotated outputs
}
