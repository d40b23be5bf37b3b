#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (committed; run again
only to change them):  fuzz/make_seeds.py BUILD/radargate"""
import json
import os
import struct
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
rg = os.path.abspath(sys.argv[1])


def st(tensors, metadata=None):
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def f32(v):
    return struct.pack("<%df" % len(v), *v)


def f64(v):
    return struct.pack("<%dd" % len(v), *v)


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


tmp = tempfile.mkdtemp()
models = {}
for variant, extra in (("sum", ["--no-base"]), ("softmax", []), ("topk", []), ("radargate", ["--planes", "1"]),
                       ("rotation_only", ["--map", "mean", "--pairing", "half"]), ("stretch_only", [])):
    for dtype in ("F32", "F16"):
        m = os.path.join(tmp, "%s_%s.st" % (variant, dtype))
        subprocess.run([rg, "init", "--variant", variant, "--d-in", "4", "--d", "3" if variant in ("sum", "softmax", "topk") else "4",
                        "--experts", "2", "--rank", "1", "--angle-rank", "1", "--dtype", dtype, "--output", m] + extra
                       if variant in ("radargate", "rotation_only") else
                       [rg, "init", "--variant", variant, "--d-in", "4", "--d", "3", "--experts", "2", "--rank", "1",
                        "--dtype", dtype, "--output", m] + extra, check=True, stdout=subprocess.DEVNULL)
        with open(m, "rb") as f:
            models["%s_%s" % (variant, dtype)] = f.read()
for k, v in models.items():
    put("model", k, v)
    put("safetensors", k, v)
    n = struct.unpack("<Q", v[:8])[0]
    meta = json.loads(v[8:8 + n])["__metadata__"]["radargate.config"]
    put("config", k.split("_F")[0], meta.encode())
put("config", "full", json.dumps({"variant": "radargate", "map": "learned", "bound": "pi_tanh", "pairing": "adjacent",
                                  "normalize": "topk_softmax", "tau": 0.5, "topk": 2}).encode())
put("safetensors", "empty_header", st([]))
put("safetensors", "meta_only", st([], {"a": "b"}))
put("safetensors", "dtypes", st([("a", "F64", [1], f64([1.0])), ("b", "BF16", [2], b"\x80\x3f\x00\x40"),
                                 ("c", "I32", [1], b"\x01\x00\x00\x00"), ("d", "U8", [0], b"")]))
put("activations", "x", st([("x", "F32", [2, 4], f32([0.5] * 8))]))
put("activations", "x_dy", st([("x", "F32", [2, 4], f32([0.5] * 8)), ("dy", "F32", [2, 3], f32([1.0] * 6))]))
put("activations", "t0", st([("x", "F32", [0, 4], b""), ("dy", "F32", [0, 3], b"")]))
put("geometry", "cone_in", st([("V", "F64", [1, 2, 2], f64([1, 0, 0, 1])), ("y", "F64", [1, 2], f64([0.5, 0.5]))]))
put("geometry", "cone_out", st([("V", "F64", [1, 2, 2], f64([1, 0, 0, 1])), ("y", "F64", [1, 2], f64([-0.5, 0.5]))]))
put("geometry", "batch", st([("V", "F32", [2, 3, 2], f32([1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1])),
                             ("y", "F32", [2, 3], f32([1, 1, 0, -1, 0, 0]))]))
put("geometry", "huge", st([("V", "F64", [1, 2, 1], f64([-1.7e308, -1.7e308])), ("y", "F64", [1, 2], f64([1.7e308, 1.7e308]))]))
print("seeds written under", os.path.join(here, "corpus"))
