"""radargate.torch.RadarGate: gradcheck, agreement with the independent eager maths, training
with AdamW against `radargate run`, and bad input."""

import numpy as np
import pytest
import torch

import radargate_torch as rgt
import safetensors_np as st
from conftest import CASES, case_id, run_cli
from radargate.torch import RadarGate


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(case, backend):
    variant, opts = case
    torch.manual_seed(0)
    m = RadarGate(variant=variant, d_in=5, d=6, experts=3, rank=2, seed=11, dtype=torch.float64, backend=backend,
                  **opts)
    for p in m.parameters():
        p.requires_grad_(True)  # the frozen base too
    params = list(m.parameters())
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def g(x):
        return m(x)

    assert torch.autograd.gradcheck(g, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)
    # the parameters: perturb each in place through the module (the binding notices the change by
    # the version counters) and compare central differences with backward
    y = m(x)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), params)
    eps = 1e-6
    with torch.no_grad():
        for p, gp in zip(params, grads):
            flat = p.view(-1)
            num = torch.empty_like(flat)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                yp = (m(x) * dy).sum()
                flat[i] = old - eps
                ym = (m(x) * dy).sum()
                flat[i] = old
                num[i] = (yp - ym) / (2 * eps)
            assert torch.allclose(gp.view(-1), num, atol=1e-6, rtol=1e-5), (variant, opts)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_function_every_input(case):
    """torch.autograd.gradcheck over x and every parameter at once, through radargate.torch's
    autograd.Function."""
    from radargate.torch import _Binding
    variant, opts = case
    m = RadarGate(variant=variant, d_in=4, d=4, experts=3, rank=2, seed=2, dtype=torch.float64, **opts)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    ps = [p.detach().clone().requires_grad_(True) for p in m.parameters()]

    def f(x, *q):
        # A binding over q itself, made per call: gradcheck perturbs q in place between calls.
        return _Binding(m._config_text, m._names, list(q), "cpu").function.apply(x, *q)

    assert torch.autograd.gradcheck(f, (x, *ps), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_module_matches_eager_pytorch(case):
    variant, opts = case
    m = RadarGate(variant=variant, d_in=9, d=8, experts=4, rank=3, seed=5, dtype=torch.float64, **opts)
    for p in m.parameters():
        p.requires_grad_(True)
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    y = m(x)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.state_dict().items()}
    xr = x.detach().reshape(-1, 9).requires_grad_(True)
    yr = rgt.forward(m.config, params, xr)
    (yr * dy.reshape(-1, 8)).sum().backward()
    assert rel_err(y.reshape(-1, 8), yr) < 1e-9
    assert rel_err(x.grad.reshape(-1, 9), xr.grad) < 1e-9
    for n, p in m.named_parameters():
        assert rel_err(p.grad, params[n].grad) < 1e-9, n


def test_state_dict_keys_are_the_file_names(tmp_path):
    m = RadarGate(variant="radargate", d_in=8, d=8, experts=3, rank=2)
    assert list(m.state_dict()) == ["lora.A", "lora.B", "lora.scale", "map.M", "angle.Wx", "angle.Wv", "angle.Wc",
                                    "angle.U", "angle.bias", "stretch.Wg", "stretch.bg", "stretch.ws", "base.W0",
                                    "base.b0"]
    assert [n for n, p in m.named_parameters() if not p.requires_grad] == ["base.W0", "base.b0"]
    m.save(tmp_path / "m.safetensors")
    tensors, meta = st.load(tmp_path / "m.safetensors")
    assert set(tensors) == set(m.state_dict())
    m2 = RadarGate(variant="radargate", d_in=8, d=8, experts=3, rank=2, seed=9)
    x = torch.randn(4, 8)
    assert not torch.equal(m(x), m2(x))
    m2.load_state_dict(m.state_dict())  # an in-place copy: the next call re-reads the parameters
    assert torch.equal(m(x), m2(x))
    assert list(RadarGate(variant="sum", d_in=4, d=4, experts=2, rank=1, base=False).state_dict()) == \
        ["lora.A", "lora.B", "lora.scale"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_init_equals_the_cli(cli, tmp_path, dtype):
    path = tmp_path / "cli.safetensors"
    run_cli(cli, "init", "--variant", "topk", "--d-in", 9, "--d", 7, "--experts", 5, "--rank", 3, "--topk", 3,
            "--tau", 0.5, "--seed", 8, "--dtype", "F32" if dtype == torch.float32 else "F64", "--output", path)
    tensors, _ = st.load(path)
    m = RadarGate(variant="topk", d_in=9, d=7, experts=5, rank=3, topk=3, tau=0.5, seed=8, dtype=dtype)
    assert set(tensors) == set(m.state_dict())
    for n, t in m.state_dict().items():
        assert torch.equal(t, torch.from_numpy(tensors[n])), n
    assert m.config == RadarGate.load(path).config


def test_trained_with_adamw_then_cli_run(cli, tmp_path):
    torch.manual_seed(0)
    m = RadarGate(variant="radargate", d_in=12, d=10, experts=4, rank=3, seed=3)
    target = torch.nn.Linear(12, 10)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2)
    x = torch.randn(64, 12)
    with torch.no_grad():
        t = target(x)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    path = tmp_path / "trained.safetensors"
    m.save(path)
    xs = torch.randn(7, 12)
    st.save(tmp_path / "in.safetensors", {"x": xs.numpy(), "dy": np.ones((7, 10), np.float32)})
    for backend in ("reference", "cpu"):
        run_cli(cli, "run", "--model", path, "--input", tmp_path / "in.safetensors", "--output",
                tmp_path / "out.safetensors", "--backend", backend, "--backward")
        out, _ = st.load(tmp_path / "out.safetensors")
        xg = xs.clone().requires_grad_(True)
        y = m(xg)
        y.sum().backward()
        assert rel_err(y, torch.from_numpy(out["y"])) < 1e-5
        assert rel_err(xg.grad, torch.from_numpy(out["grad.x"])) < 1e-4
    again = RadarGate.load(path)
    assert torch.equal(again(xs), m(xs))


def test_noncontiguous_and_batched_input():
    m = RadarGate(variant="radargate", d_in=8, d=6, experts=3, rank=2, dtype=torch.float64)
    x = torch.randn(8, 5, dtype=torch.float64).t()  # [5, 8], strided
    assert not x.is_contiguous()
    assert torch.equal(m(x), m(x.contiguous()))
    xb = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    assert m(xb).shape == (2, 3, 4, 6)
    assert torch.equal(m(xb).reshape(-1, 6), m(xb.reshape(-1, 8)))
    assert m(torch.zeros(0, 8, dtype=torch.float64)).shape == (0, 6)


def test_backward_gradients_in_one_buffer():
    """backward hands the gradients over in one buffer and returns views of it: each shaped as its
    tensor, right for a subset of the gradients, and for no tokens at all (x.grad of shape [0, d_in],
    parameter gradients zero)."""
    from radargate import torch as rt
    x, a, b = torch.randn(2, 3), torch.randn(4), torch.randn(1, 2, 2)
    flat = torch.arange(2 * 3 + 4 + 4, dtype=torch.float32)
    for views in (rt._unflatten(flat, [x, a, b]), rt._unflatten_each(flat, [x, a, b])):
        assert [tuple(v.shape) for v in views] == [(2, 3), (4,), (1, 2, 2)]
        assert torch.equal(torch.cat([v.reshape(-1) for v in views]), flat)
    m = RadarGate(variant="radargate", d_in=8, d=6, experts=3, rank=2, dtype=torch.float64)
    m.lora.B.requires_grad_(False)  # a subset: x and all but one parameter
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    (m(x) ** 2).sum().backward()
    assert m.lora.B.grad is None and x.grad.shape == (3, 8)
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.shape == p.shape, n
    m.zero_grad()
    x0 = torch.zeros(0, 8, dtype=torch.float64, requires_grad=True)
    m(x0).sum().backward()
    assert x0.grad.shape == (0, 8)
    assert all(float(p.grad.abs().sum()) == 0 for p in m.parameters() if p.requires_grad)


def test_threads_follow_torch():
    m = RadarGate(variant="radargate", d_in=8, d=8, experts=3, rank=2)
    old = torch.get_num_threads()
    try:
        x = torch.randn(16, 8)
        torch.set_num_threads(1)
        y1 = m(x)
        assert m._binding.core.threads == 1
        torch.set_num_threads(2)
        y2 = m(x)
        assert m._binding.core.threads == 2
        assert torch.allclose(y1, y2, rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(old)


def test_two_forwards_then_two_backwards_and_retain_graph():
    m = RadarGate(variant="radargate", d_in=6, d=6, experts=3, rank=2, dtype=torch.float64)
    x1, x2 = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    l1, l2 = m(x1).sum(), m(x2).square().sum()
    l2.backward(retain_graph=True)
    l1.backward()
    g = m.lora.A.grad.clone()
    m.zero_grad()
    (m(x1).sum() + m(x2).square().sum()).backward()
    assert torch.allclose(g, m.lora.A.grad, rtol=1e-12, atol=1e-12)


def test_bad_input(tmp_path):
    m = RadarGate(variant="radargate", d_in=8, d=6, experts=3, rank=2)
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., 8\] \(d_in = 8\), found \[4, 7\]"):
        m(torch.zeros(4, 7))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .* found torch.float64"):
        m(torch.zeros(4, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32 .* found torch.int64"):
        m(torch.zeros(4, 8, dtype=torch.long))
    with pytest.raises(RuntimeError, match="x: expected a tensor on cpu .* found meta"):
        m(torch.zeros(4, 8, device="meta"))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        m(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        m(torch.tensor(1.0))
    # x changed in place between forward and backward: autograd says so
    x = torch.randn(2, 8, requires_grad=True)
    xx = x * 1
    y = m(xx)
    xx.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # a parameter changed in place between forward and backward: a clear error, not stale gradients
    y = m(torch.randn(2, 8))
    with torch.no_grad():
        m.lora.B.mul_(2)
    with pytest.raises(RuntimeError, match="changed in place .* between its forward and this backward"):
        y.sum().backward()
    # files
    with pytest.raises(ValueError, match="cannot open|No such file|not found"):
        RadarGate.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        RadarGate.load(tmp_path / "junk.safetensors")
    st.save(tmp_path / "noconfig.safetensors", {"lora.A": np.zeros((2, 2, 2), np.float32)})
    with pytest.raises(ValueError, match="missing __metadata__ entry 'radargate.config'"):
        RadarGate.load(tmp_path / "noconfig.safetensors")
    m.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="layer 'q_proj': this is a one-layer file"):
        RadarGate.load(tmp_path / "m.safetensors", layer="q_proj")
    with pytest.raises(ValueError, match="backend"):
        RadarGate(variant="sum", d_in=2, d=2, experts=2, rank=1, backend="gpu")
    with pytest.raises(TypeError, match="missing d, experts"):
        RadarGate(variant="sum", d_in=2, rank=1)
    # a non-finite parameter is refused by save, and the file is not written
    with torch.no_grad():
        m.lora.A[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="tensor 'lora.A': expected finite values, found nan"):
        m.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def _has_cuda_backend():
    from radargate import _core
    return _core.has_cuda


def test_cuda_is_a_clear_error():
    if not torch.cuda.is_available() or _has_cuda_backend():
        pytest.skip("needs a CUDA device and a package built without the CUDA backend")
    m = RadarGate(variant="radargate", d_in=8, d=6, experts=3, rank=2)
    with pytest.raises(RuntimeError, match="no CUDA backend"):
        m(torch.zeros(2, 8, device="cuda"))
    with pytest.raises(RuntimeError, match="no CUDA backend"):
        m.cuda()(torch.zeros(2, 8, device="cuda"))


class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports a CUDA device: the module's device checks without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _cuda_capsule(shape, keep):
    """A DLPack capsule that describes float32 memory on CUDA device 0 (kDLCUDA = 2); the memory
    is host memory, so nothing may read it: the library must refuse it before that."""
    import ctypes

    class DLDevice(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DLDataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                    ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

    class DLManagedTensor(ctypes.Structure):
        _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

    n = len(shape)
    buf = (ctypes.c_float * int(np.prod(shape)))()
    sh = (ctypes.c_int64 * n)(*shape)
    st = (ctypes.c_int64 * n)(*[int(np.prod(shape[i + 1:])) for i in range(n)])
    mt = DLManagedTensor(DLTensor(ctypes.cast(buf, ctypes.c_void_p), DLDevice(2, 0), n, DLDataType(2, 32, 1), sh, st, 0),
                         None, None)
    keep += [buf, sh, st, mt]
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.addressof(mt), b"dltensor", None)


def test_cuda_device_checks_without_a_gpu():
    """Without the CUDA backend, CUDA tensors are refused with a clear error, in the module (its
    device check) and in the library's binding (the DLPack device). With it, the CUDA binding
    refuses host memory. Neither needs a GPU."""
    from radargate import _core
    from radargate._config import PARAM_NAMES
    m = RadarGate(variant="radargate", d_in=8, d=6, experts=3, rank=2)
    x = torch.zeros(2, 8).as_subclass(_CudaLooking)
    assert x.device.type == "cuda"
    if _core.has_cuda:
        with pytest.raises(RuntimeError, match=r"x: expected a tensor on cpu \(the module's device\), found cuda:0"):
            m(x)
        by_name = dict(m.named_parameters())
        arrays = [by_name[n].detach() if n in by_name else None for n in PARAM_NAMES]
        with pytest.raises(TypeError, match=r"array 'lora.A': expected memory on CUDA device 0, found the CPU"):
            _core.CudaLayer32(m._config_text, arrays, 0, 0)
    else:
        with pytest.raises(RuntimeError, match=r"x: on cuda:0, but this build of the radargate package has no CUDA "
                                               r"backend; it runs CPU tensors"):
            m(x)
        keep = []
        core = m._bind().core
        with pytest.raises(TypeError, match=r"array 'x': expected memory on the CPU, found a CUDA device"):
            core.forward(_cuda_capsule((2, 8), keep), torch.empty(2, 6))
        with pytest.raises(TypeError, match=r"array 'y': expected memory on the CPU, found a CUDA device"):
            core.forward(torch.zeros(2, 8), _cuda_capsule((2, 6), keep))
    # the module still works after the refusals
    assert m(torch.ones(2, 8)).shape == (2, 6)


def test_cuda_backend_matches_the_cpu():
    """With the CUDA backend (RADARGATE_PYTHON_CUDA=ON) and a GPU: the module on CUDA gives the
    cpu backend's outputs and gradients to float32 tolerance, on torch's current stream."""
    if not _has_cuda_backend() or not torch.cuda.is_available():
        pytest.skip("needs a package built with the CUDA backend and a CUDA device")
    for variant, opts in CASES:
        torch.manual_seed(0)
        m = RadarGate(variant=variant, d_in=24, d=20, experts=4, rank=3, seed=3, **opts)
        g = RadarGate(variant=variant, d_in=24, d=20, experts=4, rank=3, seed=3, **opts).cuda()
        x = torch.randn(5, 24)
        xg = x.cuda().requires_grad_(True)
        xc = x.clone().requires_grad_(True)
        dy = torch.randn(5, 20)
        yc, yg = m(xc), g(xg)
        assert yg.device.type == "cuda"
        assert rel_err(yg.cpu(), yc) < 1e-4, (variant, opts)
        (yc * dy).sum().backward()
        (yg * dy.cuda()).sum().backward()
        assert rel_err(xg.grad.cpu(), xc.grad) < 1e-4, (variant, opts)
        for (n, pc), (_, pg) in zip(m.named_parameters(), g.named_parameters()):
            if pc.grad is not None:
                assert rel_err(pg.grad.cpu(), pc.grad) < 1e-3, (variant, opts, n)
        with torch.no_grad():
            assert rel_err(g(x.cuda()).cpu(), m(x)) < 1e-4
        # an optimizer step on CUDA: the next call sees the new weights
        opt = torch.optim.AdamW(g.parameters(), lr=1e-2)
        opt.step()
        with torch.no_grad():
            for pc, pg in zip(m.parameters(), g.parameters()):
                pc.copy_(pg.cpu())
            assert rel_err(g(x.cuda()).cpu(), m(x)) < 1e-4
    with pytest.raises(TypeError, match="float32"):
        RadarGate(variant="sum", d_in=4, d=4, experts=2, rank=1, dtype=torch.float64).cuda()(
            torch.zeros(1, 4, dtype=torch.float64, device="cuda"))


def test_load_a_layer_of_many(tmp_path):
    """layer= picks one layer of a file of many layers; without it, the error lists the names."""
    import json

    a = RadarGate(variant="radargate", d_in=6, d=4, experts=3, rank=2, seed=1)
    b = RadarGate(variant="softmax", d_in=6, d=4, experts=3, rank=2, seed=2)
    tensors, layers = {}, []
    for name, m in (("model.layers.0.q_proj", a), ("model.layers.0.v_proj", b)):
        m.save(tmp_path / "one.safetensors")
        t, md = st.load(tmp_path / "one.safetensors")
        tensors.update({name + "." + k: v for k, v in t.items()})
        layers.append({"name": name, "config": json.loads(md["radargate.config"])})
    st.save(tmp_path / "set.safetensors", tensors, {"radargate.layers": json.dumps(layers)})
    with pytest.raises(ValueError, match="model.layers.0.q_proj, model.layers.0.v_proj"):
        RadarGate.load(tmp_path / "set.safetensors")
    v = RadarGate.load(tmp_path / "set.safetensors", layer="model.layers.0.v_proj")
    x = torch.randn(5, 6)
    assert torch.equal(v(x), b(x))
    assert v.config["variant"] == "softmax"
