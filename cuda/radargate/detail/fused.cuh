// radargate/detail/fused.cuh -- the fused kernels: expand, rotate, gate and sum per output tile,
// and their backward, with no [T, N, d] tensor in global memory (docs/MATH.md gives the maths). One
// file per kernel family under fused/: the shared unit of work (unit.cuh), the output pass, dy into
// slot rows (permute.cuh), the dot pass, the token pass and the column pass.
//
// Work unit: a warp, 16 tokens, one expert i, one "unit" of 16 pair slots (32 coordinates). A unit
// is two plane groups of 8 slots; a plane group is two 16x8 accumulator tiles, A holding the even
// slots and B the odd ones, so lane (g, q) holds both coordinates of slot 2q (tile A) and 2q+1
// (tile B) for tokens g and g+8 -- the rotation of a pair never leaves a lane. In one unit:
//
//   v   = hs_i Bp_i^T              two 16x8 tiles per plane group, k over the rank r
//   pre = z_i Up^T + bias_i        one 16x8 tile per plane group, k over the angle rank k
//   (c, s, dalpha/dpre) = bound_sincos(pre)          u = rotate_pair(c, s, v)
//
// hs_i = s_i A_i x (rank space, from the shrink GEMM) and z_i = Wx x + (Wv B_i) hs_i + sum_j m_ij
// (Wc B_j) hs_j (rank-space angle generation) are per-token inputs of size r and k. Slot row
// R = 32 u + 16 pg + 8 tile + n holds plane 16 u + 8 pg + 2 (n / 2) + tile, side n % 2, i.e.
// coordinate slot_coord(pairing, plane, side, d); slots past P have zero U rows and bias, so angle 0.
//
// Passes (each recomputes u from hs, z; none stores it):
//   output  y = base + sum_i g_i u_i                               tile of tokens x columns
//   dot     p_ti = w . u_ti, w = ws (stretch logits) or dy_t (gate backward), per column block
//   token   per token: dz_ti = U^T dpre_ti, bdu_ti = B_i^T R_i^T du_ti (reductions over d)
//   column  per column: dB_i = sum_t dv_ti hs_ti^T, dU = sum dpre z^T, dbias, dws (over tokens)
// with du_ti = g_ti dy_t (+ dl_ti ws for the stretch gate), dv = R^T du and
// dpre = dalpha/dpre * rotation_angle_grad(du, u).
#pragma once

#include "fused/column.cuh"
#include "fused/dot.cuh"
#include "fused/output.cuh"
#include "fused/permute.cuh"
#include "fused/token.cuh"
#include "fused/unit.cuh"
