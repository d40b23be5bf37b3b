"""radargate.Layer: one RadarGate layer on NumPy arrays (forward and the library's backward)."""

import json

import numpy as np

from . import _config, _core

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}


def _core_class(dtype):
    return _core.Layer32 if np.dtype(dtype) == np.float32 else _core.Layer64


def load_model(path, layer=None):
    """(config dict, file dtype, {name: array}) of a model file's layer: float64 arrays for F64
    files, float32 for F32, F16 and BF16 files. `layer` names one layer of a file of many layers
    (required when it holds several). Raises ValueError naming what is wrong with the file."""
    text, dtype, tensors = _core.load_model(str(path), "" if layer is None else str(layer))
    return json.loads(text), dtype, tensors


def save_model(path, config, tensors, dtype="F32"):
    """Writes a model file the CLI reads, whole or not at all (validated first). `tensors` maps
    file names ("lora.A", ...) to float32 or float64 arrays; dtype is F32, F64, F16 or BF16."""
    _core.save_model(str(path), _config.config_json(config), dict(tensors), dtype)


class Layer:
    """A layer over NumPy arrays.

        layer = radargate.Layer.load("m.safetensors")             # or Layer.init(variant=..., ...)
        y = layer.forward(x)                                       # x [..., d_in] -> y [..., d]
        grads = layer.backward(dy)                                 # {"x": dL/dx, "lora.A": ..., ...}

    Arrays cross into C++ without copies; x may have any strides. The parameters are the arrays
    in `layer.tensors` (C-contiguous, one dtype): after writing into them in place, call
    `weights_changed()`. backward() uses the context of the latest forward().
    """

    def __init__(self, config, tensors, backend="cpu", threads=1):
        text = _config.config_json(config)
        if not isinstance(tensors, dict) or not tensors:
            raise TypeError("tensors: expected a dict of parameter name -> array")
        arrays = {}
        dtype = None
        for name, a in tensors.items():
            if name not in _config.PARAM_NAMES:
                raise ValueError(f"tensor '{name}': unknown parameter name; expected one of "
                                 f"{', '.join(_config.PARAM_NAMES)}")
            a = np.asarray(a)
            if a.dtype not in _DTYPES:
                raise TypeError(f"tensor '{name}': expected dtype float32 or float64, found {a.dtype}")
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                raise TypeError(f"tensor '{name}': expected dtype {dtype} (that of the other tensors), found {a.dtype}")
            arrays[name] = np.ascontiguousarray(a)
        self.config = json.loads(text)
        self.tensors = arrays
        self.dtype = dtype
        self._core = _core_class(dtype)(text, [arrays.get(n) for n in _config.PARAM_NAMES], backend, int(threads))
        self._ctx = None
        self._x_shape = None

    @classmethod
    def load(cls, path, layer=None, backend="cpu", threads=1):
        """The layer of a model file (F64 files in float64, the others in float32)."""
        config, _, tensors = load_model(path, layer)
        return cls(config, tensors, backend=backend, threads=threads)

    @classmethod
    def init(cls, variant, d_in, d, experts, rank, *, dtype=np.float32, backend="cpu", threads=1, **options):
        """A fresh layer initialised as `radargate init` does (options: angle_rank, planes, map,
        bound, pairing, normalize, tau, topk, base, seed)."""
        text, tensors = _config.init_tensors(variant, d_in, d, experts, rank, **options)
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, found {dtype}")
        return cls(text, {n: a.astype(dtype) for n, a in tensors.items()}, backend=backend, threads=threads)

    @property
    def dims(self):
        """{"d_in", "d", "N", "r", "k", "P"}."""
        return dict(self._core.dims)

    @property
    def backend(self):
        return self._core.backend

    @property
    def threads(self):
        return self._core.threads

    @threads.setter
    def threads(self, n):
        self._core.set_threads(int(n))

    def weights_changed(self):
        """Re-reads the parameter arrays after they were changed in place."""
        self._core.weights_changed()
        self._ctx = None

    def _check(self, a, name, width, width_name):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a NumPy array, found {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype} (the layer's), found {a.dtype}")
        if a.ndim < 1 or a.shape[-1] != width:
            raise ValueError(f"{name}: expected shape [..., {width}] ({width_name} = {width}), found {list(a.shape)}")
        return a.reshape(-1, width)

    def forward(self, x):
        """y [..., d] for x [..., d_in]; keeps what backward needs."""
        dims = self._core.dims
        x2 = self._check(x, "x", dims["d_in"], "d_in")
        y = np.empty((x2.shape[0], dims["d"]), dtype=self.dtype)
        self._ctx = self._core.forward(x2, y)
        self._x_shape = x.shape
        return y.reshape(x.shape[:-1] + (dims["d"],))

    def backward(self, dy, grads=None):
        """{"x": dL/dx, name: dL/dparam} for L = sum(dy * y) of the latest forward. `grads` picks
        which ("x" and parameter names; default: all)."""
        if self._ctx is None:
            raise RuntimeError("backward: no forward to go back through (call forward first, and again after "
                               "weights_changed())")
        dims = self._core.dims
        dy2 = self._check(dy, "dy", dims["d"], "d")
        if dy2.shape[0] != self._ctx.tokens:
            raise ValueError(f"dy: expected shape {list(self._x_shape[:-1]) + [dims['d']]} (that of y), found "
                             f"{list(dy.shape)}")
        wanted = ["x"] + list(self.tensors) if grads is None else list(grads)
        for g in wanted:
            if g != "x" and g not in self.tensors:
                raise ValueError(f"grads: '{g}' is not x or a parameter of this layer; expected some of "
                                 f"{', '.join(['x'] + list(self.tensors))}")
        out = {}
        gx = None
        if "x" in wanted:
            gx = np.empty((dy2.shape[0], dims["d_in"]), dtype=self.dtype)
        slots = []
        for n in _config.PARAM_NAMES:
            if n in wanted:
                out[n] = np.empty_like(self.tensors[n])
                slots.append(out[n])
            else:
                slots.append(None)
        self._core.backward(self._ctx, dy2, gx, slots, False)
        if gx is not None:
            out = {"x": gx.reshape(self._x_shape), **out}
        return out

    def save(self, path, dtype=None):
        """Writes the layer as a model file (dtype: F32, F64, F16 or BF16; default: the layer's)."""
        save_model(path, self.config, self.tensors, dtype or _DTYPES[self.dtype])
