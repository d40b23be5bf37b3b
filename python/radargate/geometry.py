"""Cone and hull membership with certificates, as `radargate cone` computes them.

    r = radargate.geometry.cone(V, y)      # V [d, N] (the experts' outputs as columns), y [d]
    r.verdict        "inside" | "outside" | "undetermined"
    r.weights        lambda [N] >= 0, the nearest combination V lambda (hull: sums to one)
    r.residual       ||V lambda - y||, the distance to the cone (hull)
    r.certificate    outside: the unit separating direction w (zeros inside)
    r.offset         hull only: b = max_j w . v_j (0 inside)

Batches: V [B, d, N] with y [B, d], or one V [d, N] with many points y [B, d]; each field then
gains a leading [B] axis, verdict becomes an array of strings, and inside holds the CLI's codes
(1 inside, 0 outside, 2 undetermined). Every verdict comes from a certificate re-checked against
V and y (docs/GEOMETRY.md); "undetermined" means none verified, never a guess.
"""

import numpy as np

from . import _core

_VERDICTS = np.array(["outside", "inside", "undetermined"])


class Membership:
    """The answer of cone() or hull(); see the module's documentation."""

    __slots__ = ("set", "verdict", "inside", "weights", "residual", "certificate", "offset")

    def __init__(self, **fields):
        for k, v in fields.items():
            setattr(self, k, v)

    def __repr__(self):
        return (f"Membership(set={self.set!r}, verdict={self.verdict!r}, residual={self.residual!r}, "
                f"weights={self.weights!r})")


def _as_float(a, name):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real floating-point (or integer) array, found dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    bad = np.argwhere(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name}: expected finite values, found {a[tuple(bad[0])]} at index {list(bad[0])}")
    return a


def _membership(V, y, hull, tol, dual_tol, threads):
    V = _as_float(V, "V")
    y = _as_float(y, "y")
    single = False
    if V.ndim == 2 and y.ndim == 1:
        V, y, single = V[None], y[None], True
    elif V.ndim == 2 and y.ndim == 2:
        if y.shape[1] != V.shape[0]:
            raise ValueError(f"y: expected shape [B, {V.shape[0]}] (the rows of V {list(V.shape)}), found "
                             f"{list(y.shape)}")
        V = np.broadcast_to(V, (y.shape[0],) + V.shape)
    elif V.ndim != 3 or y.ndim != 2:
        raise ValueError(f"V, y: expected shapes [d, N] and [d], [d, N] and [B, d], or [B, d, N] and [B, d]; found "
                         f"{list(V.shape)} and {list(y.shape)}")
    lam, res, inside, cert, off = _core.membership(V, y, hull, float(tol), float(dual_tol), int(threads))
    verdict = _VERDICTS[inside]
    fields = dict(set="hull" if hull else "cone", verdict=verdict, inside=inside, weights=lam, residual=res,
                  certificate=cert, offset=off if hull else None)
    if single:
        fields = {k: (v[0] if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
        fields["verdict"] = str(fields["verdict"])
        fields["residual"] = float(fields["residual"])
        if hull:
            fields["offset"] = float(fields["offset"])
    return Membership(**fields)


def cone(V, y, *, tol=1e-9, dual_tol=1e-9, threads=1):
    """Is y in the cone {V lambda : lambda >= 0}? See the module's documentation."""
    return _membership(V, y, False, tol, dual_tol, threads)


def hull(V, y, *, tol=1e-9, threads=1):
    """Is y in the convex hull {V lambda : lambda >= 0, sum lambda = 1}? See the module's documentation."""
    return _membership(V, y, True, tol, 1e-9, threads)
