"""RadarGate in eager PyTorch: the layer of docs/MATH.md, written the way a PyTorch user would.

It materialises the [T, N, d] expert outputs and leaves gradients to autograd, so it serves as an
independent oracle for the C++ backends and as their eager-mode peer in benchmarks. It runs on any
device and in any floating dtype the inputs carry (float64, float32, bfloat16, ...).

For one token x (the code works on a batch [T, ...]):

    v_i   = s_i B_i A_i x                                   lora.A [N,r,d_in], lora.B [N,d,r], lora.scale [N]
    c_i   = sum_{j != i} m_ij v_j                           m = softmax_{j != i}(M[i,:]) | 1/(N-1); c = 0 if N == 1
    z_i   = Wx x + Wv v_i + Wc c_i                          angle.Wx [k,d_in], angle.Wv/Wc [k,d]
    a_i   = bound(U z_i + bias_i)                           angle.U [P,k], angle.bias [N,P]; bound = id | pi*tanh
    vt_i  = R(a_i) v_i    plane m = (a, b): vt[a] = cos v[a] - sin v[b], vt[b] = sin v[a] + cos v[b]
            planes (2m, 2m+1) ("adjacent") or (m, m + floor(d/2)) ("half"), m < P; other coords unchanged
    u_i   = vt_i if the variant rotates, else v_i
    g     = 1 | 1/N | normalize(l / tau)                    per the gate kind (table below)
            l = bg (static) | Wg x + bg (linear) | Wg x + bg + [ws . u_i]_i (stretch)
    y     = W0 x + b0 + sum_i g_i u_i                       base.W0 [d,d_in], base.b0 [d] (optional)

    normalize = softmax | sigmoid | topk_softmax(K) | identity
    topk_softmax(K): softmax over the K largest logits (ties: the lower index wins), 0 elsewhere.

Absent optional tensors are zero (Wg, bg, ws, Wx, Wv, Wc, bias), one (lora.scale) or off (W0, b0).
"""

import json
import math

import torch

__all__ = ["VARIANTS", "PARAM_NAMES", "resolve_config", "forward", "plane_indices"]

# variant -> (rotation, gate kind, default normalize)
VARIANTS = {
    "sum": (False, "none", None),
    "uniform": (False, "uniform", None),
    "static": (False, "static", "identity"),
    "softmax": (False, "linear", "softmax"),
    "topk": (False, "linear", "topk_softmax"),
    "stretch_only": (False, "stretch", "softmax"),
    "rotation_only": (True, "uniform", None),
    "radargate": (True, "stretch", "softmax"),
}

PARAM_NAMES = (
    "lora.A", "lora.B", "lora.scale", "map.M",
    "angle.Wx", "angle.Wv", "angle.Wc", "angle.U", "angle.bias",
    "stretch.Wg", "stretch.bg", "stretch.ws",
    "base.W0", "base.b0",
)

_CHOICES = {
    "map": ("learned", "mean"),
    "bound": ("none", "pi_tanh"),
    "pairing": ("adjacent", "half"),
    "normalize": ("softmax", "sigmoid", "topk_softmax", "identity"),
}


def resolve_config(config):
    """The `radargate.config` dict (or its JSON text) with every default of docs/FORMAT.md filled
    in, plus the derived fields `rotation` and `gate`. Raises ValueError on a bad field."""
    if isinstance(config, (str, bytes)):
        config = json.loads(config)
    cfg = dict(config)
    variant = cfg.get("variant")
    if variant not in VARIANTS:
        raise ValueError(f"config field 'variant': expected one of {' | '.join(VARIANTS)}, found {variant!r}")
    rotation, gate, default_normalize = VARIANTS[variant]
    cfg.setdefault("map", "learned")
    cfg.setdefault("bound", "pi_tanh")
    cfg.setdefault("pairing", "adjacent")
    if cfg.get("normalize") is None:
        cfg["normalize"] = default_normalize or "identity"
    cfg.setdefault("tau", 1.0)
    cfg.setdefault("topk", 2)
    for field, allowed in _CHOICES.items():
        if cfg[field] not in allowed:
            raise ValueError(f"config field '{field}': expected one of {' | '.join(allowed)}, found {cfg[field]!r}")
    tau = float(cfg["tau"])
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"config field 'tau': expected a finite number > 0, found {cfg['tau']!r}")
    cfg["tau"] = tau
    if not isinstance(cfg["topk"], int) or cfg["topk"] < 1:
        raise ValueError(f"config field 'topk': expected an integer in 1..N, found {cfg['topk']!r}")
    cfg["rotation"] = rotation
    cfg["gate"] = gate
    return cfg


def plane_indices(pairing, d, P, device=None):
    """Coordinate index tensors (a, b) of the P rotation planes."""
    m = torch.arange(P, device=device)
    if pairing == "adjacent":
        return 2 * m, 2 * m + 1
    return m, m + d // 2


def _normalize(kind, logits, topk):
    """Gate weights from logits [T, N] along the expert axis."""
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    if kind == "identity":
        return logits
    # topk_softmax: a stable descending sort keeps equal logits in index order, so on ties the
    # lower index is selected.
    N = logits.shape[-1]
    if topk > N:
        raise ValueError(f"config field 'topk': expected a value in 1..{N} (N), found {topk}")
    order = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices[..., :topk]
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, True)
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def _relational_map(mode, params, v):
    """c_i = sum_{j != i} m_ij v_j for v [T, N, d]."""
    N = v.shape[1]
    if N == 1:
        return torch.zeros_like(v)
    eye = torch.eye(N, dtype=torch.bool, device=v.device)
    if mode == "learned":
        if "map.M" not in params:
            raise ValueError("tensor 'map.M' is required when map is \"learned\" and the variant rotates")
        m = torch.softmax(params["map.M"].masked_fill(eye, float("-inf")), dim=-1)
    else:
        m = (~eye).to(v.dtype) / (N - 1)
    return torch.einsum("ij,tjd->tid", m, v)


def _rotate(cfg, params, x, v):
    """vt_i = R(alpha_i) v_i for v [T, N, d]."""
    if "angle.U" not in params:
        raise ValueError("tensor 'angle.U' is required when the variant rotates")
    U = params["angle.U"]
    T, N, d = v.shape
    P, k = U.shape
    if P > d // 2:
        raise ValueError(f"tensor 'angle.U': expected at most floor(d/2) = {d // 2} rows (planes), found {P}")
    z = x.new_zeros(T, N, k)
    if "angle.Wx" in params:
        z = z + (x @ params["angle.Wx"].T)[:, None, :]
    if "angle.Wv" in params:
        z = z + v @ params["angle.Wv"].T
    if "angle.Wc" in params:
        z = z + _relational_map(cfg["map"], params, v) @ params["angle.Wc"].T
    pre = z @ U.T
    if "angle.bias" in params:
        pre = pre + params["angle.bias"]
    alpha = math.pi * torch.tanh(pre) if cfg["bound"] == "pi_tanh" else pre
    a, b = plane_indices(cfg["pairing"], d, P, device=v.device)
    va, vb = v[..., a], v[..., b]
    cos, sin = torch.cos(alpha), torch.sin(alpha)
    return v.index_copy(-1, a, cos * va - sin * vb).index_copy(-1, b, sin * va + cos * vb)


def forward(config, params, x):
    """y [T, d] of the layer for x [T, d_in]. `params` maps the file names of docs/FORMAT.md
    ("lora.A", "angle.U", ...) to tensors; absent optional tensors take their defaults. Set
    requires_grad on whatever tensors need gradients and call backward on a function of y."""
    cfg = resolve_config(config)
    A, B = params["lora.A"], params["lora.B"]
    N = A.shape[0]

    h = torch.einsum("nri,ti->tnr", A, x)                      # [T, N, r]
    v = torch.einsum("ndr,tnr->tnd", B, h)                     # [T, N, d]
    if "lora.scale" in params:
        v = v * params["lora.scale"][:, None]

    u = _rotate(cfg, params, x, v) if cfg["rotation"] else v

    gate = cfg["gate"]
    if gate == "none":
        g = None
    elif gate == "uniform":
        g = torch.full((x.shape[0], N), 1.0 / N, dtype=u.dtype, device=u.device)
    else:
        logits = x.new_zeros(x.shape[0], N)
        if "stretch.bg" in params:
            logits = logits + params["stretch.bg"]
        if gate in ("linear", "stretch") and "stretch.Wg" in params:
            logits = logits + x @ params["stretch.Wg"].T
        if gate == "stretch" and "stretch.ws" in params:
            logits = logits + u @ params["stretch.ws"]
        g = _normalize(cfg["normalize"], logits / cfg["tau"], cfg["topk"])

    y = u.sum(dim=1) if g is None else torch.einsum("tn,tnd->td", g, u)
    if "base.W0" in params:
        y = y + x @ params["base.W0"].T
    if "base.b0" in params:
        y = y + params["base.b0"]
    return y
