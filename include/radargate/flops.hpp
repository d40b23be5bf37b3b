// radargate/flops.hpp -- the essential work of one layer call, for benchmarks.
//
// "Essential" counts the arithmetic the layer cannot avoid, each quantity computed once, with a
// multiply-add as 2 FLOPs and tanh, sin and cos as 1 FLOP each. Recomputation a backend chooses
// (the cpu backend evaluates the rotated expert outputs once per pass instead of storing them)
// is not counted, so GFLOP/s = essential FLOPs / time compares backends on equal terms. Per call,
// T tokens, Ne experts computed (N, or K for a top-k gate without rotation):
//
//   forward
//     shrink    h_i = A_i x                2 T Ne r d_in
//     expand    v_i = s_i B_i h_i          2 T Ne d r
//     mixture   y += g_i u_i               2 T Ne d
//     gate      Wg x (linear, stretch)     2 T N d_in        ws . u_i (stretch)  2 T N d
//     rotation  Wx x                       2 T k d_in
//               rank-space z_i             4 T N r k + 2 T N^2 k
//               U z_i                      2 T N P k
//               bound, sin, cos            3 T N P
//               rotate the planes          6 T N P
//     base      W0 x + b0                  2 T d d_in + T d        (when present)
//   backward (every gradient)
//     every product above twice (one per operand), the mixture and gate terms as
//     dg_i = dy . u_i (2 T Ne d) and du_i = g_i dy + dl_i ws (2 T Ne d), and the rotation as
//     R^T du, dalpha and the bound's derivative (12 T N P), dbias (T N P); the rank-space
//     weight gradients (dWv, dWc and their share of dB) add 8 N k r d once per call.
//
// Bytes: every parameter, x and y once (forward); for backward also dy, dx and every parameter
// gradient once. A lower bound on memory traffic, for the byte counters of bench/.
#pragma once

#include "layer_config.hpp"
#include "params.hpp"

namespace radargate {

/// FLOPs and the number of tensor elements read or written once.
struct WorkCount {
  double flops = 0;
  double elements = 0;
};

/// Experts computed per token.
inline double experts_computed(const LayerConfig& c, const Dims& D) {
  const bool sparse =
      !c.rotation && c.has_logits() && !c.gate_reads_experts() && c.normalize == Normalize::topk_softmax;
  return sparse ? double(c.topk) : double(D.N);
}

inline WorkCount essential_forward(const LayerConfig& c, const Dims& D, index_t tokens, bool base) {
  const double T = double(tokens), N = double(D.N), r = double(D.r), din = double(D.d_in), d = double(D.d);
  const double k = double(D.k), P = double(D.P), Ne = experts_computed(c, D);
  double f = 2 * T * Ne * r * din + 2 * T * Ne * d * r + 2 * T * Ne * d;
  if (c.gate == GateKind::linear || c.gate == GateKind::stretch) f += 2 * T * N * din;
  if (c.gate == GateKind::stretch) f += 2 * T * N * d;
  if (c.rotation) f += 2 * T * k * din + 4 * T * N * r * k + 2 * T * N * N * k + 2 * T * N * P * k + 9 * T * N * P;
  if (base) f += 2 * T * d * din + T * d;
  double params = N * r * din + N * d * r + N;
  if (c.gate == GateKind::linear || c.gate == GateKind::stretch) params += N * din + N;
  if (c.gate == GateKind::stretch) params += d;
  if (c.rotation) params += N * N + k * din + 2 * k * d + P * k + N * P;
  if (base) params += d * din + d;
  WorkCount w;
  w.flops = f;
  w.elements = params + T * din + T * d;
  return w;
}

inline WorkCount essential_backward(const LayerConfig& c, const Dims& D, index_t tokens, bool base) {
  const double T = double(tokens), N = double(D.N), r = double(D.r), din = double(D.d_in), d = double(D.d);
  const double k = double(D.k), P = double(D.P), Ne = experts_computed(c, D);
  double f = 4 * T * Ne * r * din + 4 * T * Ne * d * r + 2 * T * Ne * d;  // dA, dx; dB, dh; du
  if (c.has_logits()) f += 2 * T * Ne * d;                                // dg
  if (c.gate == GateKind::linear || c.gate == GateKind::stretch) f += 4 * T * N * din;
  if (c.gate == GateKind::stretch) f += 2 * T * N * d;  // dws
  if (c.rotation)
    f += 4 * T * k * din + 8 * T * N * r * k + 4 * T * N * N * k + 4 * T * N * P * k + 13 * T * N * P +
         8 * N * k * r * d;
  if (base) f += 4 * T * d * din + T * d;
  const WorkCount fw = essential_forward(c, D, tokens, base);
  const double params = fw.elements - T * din - T * d;
  WorkCount w;
  w.flops = f;
  w.elements = 2 * params + T * d + 2 * T * din;  // read parameters, x and dy; write gradients and dx
  return w;
}

/// Essential work of forward, plus backward when `backward`.
inline WorkCount essential_work(const LayerConfig& c, const Dims& D, index_t tokens, bool backward, bool base) {
  WorkCount w = essential_forward(c, D, tokens, base);
  if (backward) {
    const WorkCount b = essential_backward(c, D, tokens, base);
    w.flops += b.flops;
    w.elements += b.elements;
  }
  return w;
}

}  // namespace radargate
