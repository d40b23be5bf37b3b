"""radargate.Layer on NumPy arrays, model files and init against the CLI, geometry against
`radargate cone`."""

import json

import numpy as np
import pytest
import torch

import radargate
import radargate_torch as rgt
import safetensors_np as st
from conftest import CASES, case_id, run_cli


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if b.size else 0.0


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_layer_matches_eager_pytorch(case, backend):
    variant, opts = case
    layer = radargate.Layer.init(variant, 10, 12, 4, 3, seed=7, dtype=np.float64, backend=backend, **opts)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 10))
    dy = rng.standard_normal((2, 3, 12))
    y = layer.forward(x)
    grads = layer.backward(dy)
    params = {n: torch.tensor(a, requires_grad=True) for n, a in layer.tensors.items()}
    xt = torch.tensor(x.reshape(-1, 10), requires_grad=True)
    yt = rgt.forward(layer.config, params, xt)
    (yt * torch.tensor(dy.reshape(-1, 12))).sum().backward()
    assert y.shape == (2, 3, 12)
    assert rel_err(y.reshape(-1, 12), yt.detach()) < 1e-9
    assert rel_err(grads["x"].reshape(-1, 10), xt.grad) < 1e-9
    assert set(grads) == {"x", *layer.tensors}
    for n, p in params.items():
        assert rel_err(grads[n], p.grad) < 1e-9, n


def test_float32_layer_and_gradient_selection():
    layer = radargate.Layer.init("radargate", 16, 16, 4, 2, seed=3)
    assert layer.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    g = layer.backward(np.ones_like(y), grads=["lora.B", "x"])
    assert set(g) == {"x", "lora.B"}
    ref = radargate.Layer({k: v for k, v in layer.config.items()},
                          {n: a.astype(np.float64) for n, a in layer.tensors.items()}, backend="reference")
    assert rel_err(y, ref.forward(x.astype(np.float64))) < 1e-5


def test_strided_input_is_accepted():
    layer = radargate.Layer.init("radargate", 8, 8, 3, 2, seed=1, dtype=np.float64)
    xt = np.random.default_rng(2).standard_normal((8, 6)).T  # [6, 8], column-major
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(layer.forward(xt), layer.forward(np.ascontiguousarray(xt)))


def test_weights_changed_rereads_the_arrays():
    layer = radargate.Layer.init("softmax", 6, 6, 3, 2, seed=1, dtype=np.float64)
    x = np.ones((2, 6))
    y0 = layer.forward(x)
    layer.tensors["lora.B"] *= 2.0
    layer.weights_changed()
    y1 = layer.forward(x)
    assert not np.allclose(y0, y1)
    with pytest.raises(RuntimeError, match="no forward"):
        layer.weights_changed()
        layer.backward(np.ones_like(y1))


@pytest.mark.parametrize("dtype", ["F32", "F64"])
def test_init_equals_the_cli(cli, tmp_path, dtype):
    path = tmp_path / "cli.safetensors"
    run_cli(cli, "init", "--variant", "radargate", "--d-in", 12, "--d", 10, "--experts", 3, "--rank", 2,
            "--angle-rank", 3, "--planes", 4, "--pairing", "half", "--seed", 42, "--dtype", dtype, "--output", path)
    tensors, meta = st.load(path)
    layer = radargate.Layer.init("radargate", 12, 10, 3, 2, angle_rank=3, planes=4, pairing="half", seed=42,
                                 dtype=np.float32 if dtype == "F32" else np.float64)
    assert json.loads(meta["radargate.config"]) == layer.config
    assert set(tensors) == set(layer.tensors)
    for n, a in tensors.items():
        np.testing.assert_array_equal(a, layer.tensors[n], err_msg=n)


def test_save_load_round_trip_and_cli_run(cli, tmp_path):
    layer = radargate.Layer.init("stretch_only", 7, 5, 3, 2, seed=5, dtype=np.float64)
    path = tmp_path / "m.safetensors"
    layer.save(path)
    again = radargate.Layer.load(path)
    for n, a in layer.tensors.items():
        np.testing.assert_array_equal(again.tensors[n], a)
    x = np.random.default_rng(4).standard_normal((4, 7))
    st.save(tmp_path / "in.safetensors", {"x": x})
    run_cli(cli, "run", "--model", path, "--input", tmp_path / "in.safetensors", "--output", tmp_path / "o.safetensors")
    out, _ = st.load(tmp_path / "o.safetensors")
    assert rel_err(layer.forward(x), out["y"]) < 1e-12


@pytest.mark.parametrize("hull", [False, True])
def test_geometry_matches_radargate_cone(cli, tmp_path, hull):
    rng = np.random.default_rng(3)
    B, d, N = 40, 4, 3
    V = rng.standard_normal((B, d, N))
    w = rng.random((B, N))
    y = np.einsum("bdn,bn->bd", V, w / w.sum(axis=1, keepdims=True))  # inside (cone and hull) ...
    y[::2] = rng.standard_normal((B // 2, d))           # ... and mostly outside
    st.save(tmp_path / "p.safetensors", {"V": V, "y": y})
    run_cli(cli, "cone", "--input", tmp_path / "p.safetensors", "--output", tmp_path / "a.safetensors",
            "--threads", 1, *(["--hull"] if hull else []))
    ref, _ = st.load(tmp_path / "a.safetensors")
    r = radargate.geometry.hull(V, y) if hull else radargate.geometry.cone(V, y)
    # the same code, compiled for this CPU (fused multiply-adds): the same verdicts, the numbers
    # to rounding
    np.testing.assert_array_equal(r.inside, ref["inside"])
    for mine, theirs in ((r.weights, "lambda"), (r.residual, "residual"), (r.certificate, "certificate"),
                         *(((r.offset, "offset"),) if hull else ())):
        np.testing.assert_allclose(mine, ref[theirs], rtol=1e-10, atol=1e-12, err_msg=theirs)
    assert set(r.verdict) <= {"inside", "outside"} and "inside" in set(r.verdict) and "outside" in set(r.verdict)
    one = (radargate.geometry.hull if hull else radargate.geometry.cone)(V[1], y[1])
    assert one.verdict == r.verdict[1] and one.residual == r.residual[1]
    np.testing.assert_array_equal(one.weights, r.weights[1])


def test_geometry_bad_input():
    with pytest.raises(ValueError, match="expected finite values, found nan"):
        radargate.geometry.cone(np.eye(2), np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"expected shapes"):
        radargate.geometry.cone(np.eye(2), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"y\[0\]|tensor 'y'"):
        radargate.geometry.cone(np.ones((1, 3, 2)), np.ones((1, 2)))


def test_numpy_bad_input(tmp_path):
    layer = radargate.Layer.init("radargate", 8, 6, 3, 2, seed=1)
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., 8\] \(d_in = 8\), found \[4, 7\]"):
        layer.forward(np.zeros((4, 7), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32 .* found float64"):
        layer.forward(np.zeros((4, 8)))
    with pytest.raises(TypeError, match="expected a NumPy array"):
        layer.forward([[0.0] * 8])
    layer.forward(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \[4, 6\]"):
        layer.backward(np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match="not x or a parameter"):
        layer.backward(np.zeros((4, 6), np.float32), grads=["lora.C"])
    with pytest.raises(ValueError, match="variant: expected one of"):
        radargate.Layer.init("radargat", 8, 8, 2, 2)
    with pytest.raises(ValueError, match="does not rotate"):
        radargate.Layer.init("softmax", 8, 8, 2, 2, planes=2)
    with pytest.raises(ValueError, match="tensor 'lora.B': expected shape"):
        t = dict(layer.tensors)
        t["lora.B"] = np.zeros((3, 6, 3), np.float32)
        radargate.Layer(layer.config, t)
    with pytest.raises(ValueError, match="tensor 'map.M': required"):
        radargate.Layer(layer.config, {n: a for n, a in layer.tensors.items() if n != "map.M"})
