// radargate/detail/small.cuh -- the CUDA backend's small kernels, one file per family under
// kernels/: weights into kernel layout (once per weight update), rank-space work per token, the
// gate, reductions over tokens and the gradient writers. None of them touches a [T, N, d] tensor.
//
// Rank space (per token t, expert i; hs = s_i h_i, h = A_i x from the shrink GEMM F = X Wst^T):
//   w_ti  = (Wc B_i) hs_ti                     [k]
//   z_ti  = Wx x_t + (Wv B_i) hs_ti + sum_{j != i} m_ij w_tj
// Backward in rank space (dz from the token pass, bdu = B_i^T R_i^T du_ti from the token pass):
//   dzc_ti = sum_j m_ji dz_tj
//   bdv_ti = bdu_ti + (Wv B_i)^T dz_ti + (Wc B_i)^T dzc_ti        (= B_i^T dv_ti)
//   dh_ti  = s_i bdv_ti      dscale_i = sum_t bdv_ti . h_ti       dm_ij = sum_t dz_ti . w_tj
//   Gv_i   = sum_t dz_ti hs_ti^T    Gc_i = sum_t dzc_ti hs_ti^T    (k x r)
//   dWv    = sum_i Gv_i B_i^T       dWc = sum_i Gc_i B_i^T
//   dB_i   = dBrot_i + Wv^T Gv_i + Wc^T Gc_i
#pragma once

#include "kernels/gate.cuh"
#include "kernels/prep.cuh"
#include "kernels/rank_backward.cuh"
#include "kernels/rank_forward.cuh"
#include "kernels/reduce.cuh"
#include "kernels/writers.cuh"
