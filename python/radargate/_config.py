"""Configurations and fresh models, checked as `radargate init` checks its options.

The random values come from the C++ library (radargate::random_model through radargate._core),
so a model made here with a seed holds the very tensors `radargate init --seed` writes.
"""

import json

from . import _core

PARAM_NAMES = tuple(_core.param_names())

# variant -> (rotates, gate has logits)
VARIANTS = {
    "sum": (False, False),
    "uniform": (False, False),
    "static": (False, True),
    "softmax": (False, True),
    "topk": (False, True),
    "stretch_only": (False, True),
    "rotation_only": (True, False),
    "radargate": (True, True),
}


def config_json(config):
    """A configuration (dict or JSON text) as canonical JSON text, validated by the library."""
    if isinstance(config, dict):
        config = json.dumps(config)
    if not isinstance(config, str):
        raise TypeError(f"config: expected a dict or JSON text, found {type(config).__name__}")
    return _core.normalize_config(config)


def _int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, found {type(value).__name__} ({value!r})")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an integer in {rng}, found {value}")
    return value


def init_tensors(variant, d_in, d, experts, rank, angle_rank=None, planes=None, map=None, bound=None,
                 pairing=None, normalize=None, tau=None, topk=None, base=True, seed=0):
    """(config JSON, {name: float64 array}, dims) of a fresh model, as `radargate init` makes it."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {' | '.join(VARIANTS)}, found {variant!r}")
    rotates, logits = VARIANTS[variant]
    big = 1 << 24
    d_in = _int("d_in", d_in, 1, big)
    d = _int("d", d, 1, big)
    experts = _int("experts", experts, 1, 1 << 16)
    rank = _int("rank", rank, 1, big)
    seed = _int("seed", seed, 0, (1 << 63) - 1)
    for name, value in (("angle_rank", angle_rank), ("planes", planes), ("map", map), ("bound", bound),
                        ("pairing", pairing)):
        if value is not None and not rotates:
            raise ValueError(f"{name}: variant '{variant}' does not rotate (only rotation_only and radargate do)")
    for name, value in (("normalize", normalize), ("tau", tau), ("topk", topk)):
        if value is not None and not logits:
            raise ValueError(f"{name}: variant '{variant}' has a gate without logits")
    cfg = {"variant": variant}
    k = P = 0
    if rotates:
        if d < 2:
            raise ValueError(f"d: variant '{variant}' rotates pairs of coordinates, expected d >= 2, found {d}")
        k = _int("angle_rank", 4 if angle_rank is None else angle_rank, 1, big)
        P = _int("planes", d // 2 if planes is None else planes, 1, d // 2)
        for name, value in (("map", map), ("bound", bound), ("pairing", pairing)):
            if value is not None:
                cfg[name] = value
    if normalize is not None:
        cfg["normalize"] = normalize
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"tau: expected a number > 0, found {tau!r}")
        cfg["tau"] = float(tau)
    default_normalize = {"topk": "topk_softmax", "static": "identity"}.get(variant, "softmax")
    topk_softmax = logits and cfg.get("normalize", default_normalize) == "topk_softmax"
    if topk is not None:
        if not topk_softmax:
            raise ValueError(f"topk: only read by normalize topk_softmax, but variant '{variant}' normalizes with "
                             f"{cfg.get('normalize', default_normalize)} (add normalize='topk_softmax')")
        cfg["topk"] = _int("topk", topk, 1, experts)
    elif topk_softmax and experts < 2:
        cfg["topk"] = experts  # the default 2 with a single expert
    text = config_json(cfg)
    tensors = _core.random_model(text, d_in, d, experts, rank, k, P, seed, bool(base))
    return text, tensors
