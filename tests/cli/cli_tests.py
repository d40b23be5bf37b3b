#!/usr/bin/python3
"""Command-line tests of `radargate run` / `radargate init` (standard library only).

    cli_tests.py --radargate BIN --workdir DIR CASE

Each CASE is one class of bad input from docs/FORMAT.md (or the happy path). For every bad input
the test asserts the exact one-line message (which names the file, the tensor or field, the
expected and the found value), the exit code, and that neither the output file nor any temporary
file was left in the directory.
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

# --- a minimal safetensors reader / writer, independent of the C++ one ------------------------------

FMT = {"F64": "d", "F32": "f", "F16": "e", "I32": "i"}
SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1}


def st_read(path):
    """-> (metadata dict, list of (name, dtype, shape, bytes)) in data order."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return meta, [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in items]


def st_write(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))


def pack(dtype, values):
    if dtype == "BF16":
        return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)
    return struct.pack("<%d%s" % (len(values), FMT[dtype]), *values)


def unpack(dtype, b):
    if dtype == "BF16":
        return [struct.unpack("<f", b"\0\0" + b[i:i + 2])[0] for i in range(0, len(b), 2)]
    return list(struct.unpack("<%d%s" % (len(b) // SIZE[dtype], FMT[dtype]), b))


def numel(shape):
    n = 1
    for e in shape:
        n *= e
    return n


# --- the harness -------------------------------------------------------------------------------------

class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Case:
    def __init__(self, radargate, workdir, name):
        self.bin = radargate
        self.dir = tempfile.mkdtemp(prefix="cli_%s_" % name, dir=workdir)
        self.checks = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def rg(self, *args):
        return subprocess.run([self.bin] + [str(a) for a in args], cwd=self.dir, capture_output=True, text=True,
                              timeout=60)

    def init(self, *args, model="m.safetensors", inputs="in.safetensors", tokens=4):
        args = list(args) + ["--output", model]
        if inputs:
            args += ["--write-input", inputs, "--tokens", tokens]
        p = self.rg("init", *args)
        check(p.returncode == 0, "init failed: %s" % p.stderr)
        return model, inputs

    def expect_error(self, args, message, code=1, output="out.safetensors", exact=True):
        """Runs the tool, which must fail with `message` (the whole first stderr line), exit `code`,
        print nothing on stdout, and leave the directory exactly as it was."""
        before = sorted(os.listdir(self.dir))
        p = self.rg(*args)
        after = sorted(os.listdir(self.dir))
        lines = p.stderr.splitlines()
        where = "radargate %s" % " ".join(str(a) for a in args)
        check(p.returncode == code, "%s: expected exit code %d, found %d (stderr: %r)" % (where, code, p.returncode, p.stderr))
        check(len(lines) >= 1, "%s: expected a message on stderr, found nothing" % where)
        if code == 1:
            check(len(lines) == 1, "%s: expected one line on stderr, found %d: %r" % (where, len(lines), p.stderr))
        else:
            check(any(l.startswith("usage: radargate ") for l in lines), "%s: expected a usage line, found %r" % (where, p.stderr))
        if exact:
            check(lines[0] == message, "%s:\n  expected message: %s\n  found message:    %s" % (where, message, lines[0]))
        else:
            check(lines[0].startswith(message), "%s:\n  expected a message starting: %s\n  found: %s" % (where, message, lines[0]))
        check(p.stdout == "", "%s: expected nothing on stdout, found %r" % (where, p.stdout))
        check(not os.path.exists(self.path(output)), "%s: output file %s exists" % (where, output))
        check(after == before, "%s: the directory changed (left-over files?): before %s, after %s" % (where, before, after))
        self.checks += 1

    def run_error(self, model, inputs, message, extra=(), **kw):
        self.expect_error(["run", "--model", model, "--input", inputs, "--output", "out.safetensors"] + list(extra),
                          "radargate run: error: " + message, **kw)

    def rewrite(self, src, dst, edit=None, metadata=None):
        """Copies a safetensors file, letting edit(name, dtype, shape, bytes) return a replacement
        tuple, None to drop the tensor, or a list of tuples."""
        meta, ts = st_read(self.path(src))
        out = []
        for t in ts:
            r = edit(*t) if edit else t
            if r is None:
                continue
            out.extend(r if isinstance(r, list) else [r])
        st_write(self.path(dst), out, meta if metadata is None else metadata)
        return dst


VARIANTS = "sum | uniform | static | softmax | topk | stretch_only | rotation_only | radargate"
RG = ["--variant", "radargate", "--d-in", 6, "--d", 8, "--experts", 3, "--rank", 2, "--seed", 5]


def case_missing_tensor(c):
    m, i = c.init(*RG)
    c.rewrite(m, "no_u.safetensors", lambda n, *t: None if n == "angle.U" else (n,) + t)
    c.run_error("no_u.safetensors", i, "file 'no_u.safetensors': tensor 'angle.U': required by variant 'radargate', but it is missing")
    c.rewrite(i, "no_dy.safetensors", lambda n, *t: None if n == "dy" else (n,) + t)
    c.run_error(m, "no_dy.safetensors", "file 'no_dy.safetensors': tensor 'dy': missing from the file (backward needs dy [4, 8])",
                extra=["--backward"])
    c.rewrite(i, "no_x.safetensors", lambda n, *t: None if n == "x" else (n,) + t)
    c.run_error(m, "no_x.safetensors", "file 'no_x.safetensors': tensor 'x': missing from the file (expected shape [T, 6])")


def case_wrong_shape(c):
    m, i = c.init(*RG)
    c.rewrite(i, "x5.safetensors", lambda n, d, s, b: (n, d, [4, 5], b[:4 * 5 * 4]) if n == "x" else (n, d, s, b))
    c.run_error(m, "x5.safetensors", "file 'x5.safetensors': tensor 'x': expected shape [T, 6] (d_in = 6), found [4, 5]")
    c.rewrite(i, "dy7.safetensors", lambda n, d, s, b: (n, d, [4, 7], b[:4 * 7 * 4]) if n == "dy" else (n, d, s, b))
    c.run_error(m, "dy7.safetensors", "file 'dy7.safetensors': tensor 'dy': expected shape [T, 8] (d = 8), found [4, 7]",
                extra=["--backward"])
    c.rewrite(m, "b3.safetensors",
              lambda n, d, s, b: (n, d, [3, 8, 3], b + b[:3 * 8 * 4]) if n == "lora.B" else (n, d, s, b))
    c.run_error("b3.safetensors", i, "file 'b3.safetensors': tensor 'lora.B': expected shape [3, 8, 2], found [3, 8, 3]")
    c.rewrite(m, "ws.safetensors", lambda n, d, s, b: (n, d, [8, 1], b) if n == "stretch.ws" else (n, d, s, b))
    c.run_error("ws.safetensors", i, "file 'ws.safetensors': tensor 'stretch.ws': expected a rank-1 tensor, found shape [8, 1]")


def case_wrong_dtype(c):
    m, i = c.init(*RG)
    c.rewrite(i, "x64.safetensors", lambda n, d, s, b: (n, "F64", s, pack("F64", unpack(d, b))))
    c.run_error(m, "x64.safetensors", "file 'x64.safetensors': tensor 'x': expected dtype F32 (the model's dtype), found F64")
    c.rewrite(m, "b64.safetensors", lambda n, d, s, b: (n, "F64", s, pack("F64", unpack(d, b))) if n == "lora.B" else (n, d, s, b))
    c.run_error("b64.safetensors", i, "file 'b64.safetensors': tensor 'lora.B': expected dtype F32 (the dtype of 'lora.A'), found F64")
    c.rewrite(m, "a32.safetensors", lambda n, d, s, b: (n, "I32", s, b) if n == "lora.A" else (n, d, s, b))
    c.run_error("a32.safetensors", i,
                "file 'a32.safetensors': tensor 'lora.A': expected a floating-point dtype (F64, F32, F16 or BF16), found I32")


def case_truncated_file(c):
    m, i = c.init(*RG)
    with open(c.path(m), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    _, ts = st_read(c.path(m))
    last = ts[-1]  # the tensor at the end of the data section
    data_size = len(raw) - 8 - n - 4
    begin = data_size + 4 - len(last[3])
    with open(c.path("cut.safetensors"), "wb") as f:
        f.write(raw[:-4])
    c.run_error("cut.safetensors", i,
                "file 'cut.safetensors': tensor '%s': 'data_offsets' [%d, %d] out of range: the data section has %d bytes "
                "(file truncated?)" % (last[0], begin, begin + len(last[3]), data_size))
    with open(c.path("six.safetensors"), "wb") as f:
        f.write(raw[:6])
    c.run_error("six.safetensors", i,
                "file 'six.safetensors': too short for the 8-byte header size: expected at least 8 bytes, found 6")
    with open(c.path(i), "rb") as f:
        rawi = f.read()
    with open(c.path("in_cut.safetensors"), "wb") as f:
        f.write(rawi[:-1])
    c.run_error(m, "in_cut.safetensors",
                "file 'in_cut.safetensors': tensor 'dy': 'data_offsets' [96, 224] out of range: the data section has 223 bytes "
                "(file truncated?)")


def case_corrupt_header(c):
    m, i = c.init(*RG)
    with open(c.path(m), "rb") as f:
        raw = bytearray(f.read())
    (n,) = struct.unpack("<Q", bytes(raw[:8]))
    end = raw.rindex(b"}", 8, 8 + n)  # the header object's closing brace
    raw[end] = ord(",")
    with open(c.path("junk.safetensors"), "wb") as f:
        f.write(raw)
    c.run_error("junk.safetensors", i, "file 'junk.safetensors': header is not valid JSON: [json.exception.parse_error.101]",
                exact=False)
    raw[8] = ord("[")
    with open(c.path("array.safetensors"), "wb") as f:
        f.write(raw)
    c.run_error("array.safetensors", i,
                "file 'array.safetensors': header: expected a JSON object starting with '{', found byte 0x5b")
    # A well-formed JSON header with a missing field.
    xs = pack("F32", [0.0] * 24)
    header = json.dumps({"x": {"shape": [4, 6], "data_offsets": [0, len(xs)]}}).encode()
    with open(c.path("nodtype.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + xs)
    c.run_error(m, "nodtype.safetensors", "file 'nodtype.safetensors': tensor 'x': missing 'dtype'")
    # The configuration entry is not JSON.
    c.rewrite(m, "badcfg.safetensors", metadata={"radargate.config": "{variant: radargate}"})
    c.run_error("badcfg.safetensors", i,
                "file 'badcfg.safetensors': __metadata__ 'radargate.config': config: not valid JSON: ", exact=False)


def case_header_larger_than_file(c):
    m, i = c.init(*RG)
    with open(c.path(m), "rb") as f:
        raw = f.read()
    for name, size in (("big.safetensors", len(raw)), ("huge.safetensors", 1 << 40)):
        with open(c.path(name), "wb") as f:
            f.write(struct.pack("<Q", size) + raw[8:])
    c.run_error("big.safetensors", i,
                "file 'big.safetensors': header size %d bytes is larger than the file: expected at most %d bytes after the "
                "8-byte size (file truncated?)" % (len(raw), len(raw) - 8))
    c.run_error("huge.safetensors", i,
                "file 'huge.safetensors': header size 1099511627776 bytes exceeds the limit of 100000000 bytes "
                "(corrupt or not a safetensors file)")


def case_non_finite(c):
    m, i = c.init(*RG)

    def poison(target, index, value):
        def edit(n, d, s, b):
            if n != target:
                return (n, d, s, b)
            v = unpack(d, b)
            v[index] = value
            return (n, d, s, pack(d, v))
        return edit

    c.rewrite(i, "xnan.safetensors", poison("x", 1 * 6 + 2, float("nan")))
    c.run_error(m, "xnan.safetensors", "file 'xnan.safetensors': tensor 'x': expected finite values, found nan at index [1, 2]")
    c.rewrite(i, "dyinf.safetensors", poison("dy", 3 * 8 + 7, -float("inf")))
    c.run_error(m, "dyinf.safetensors", "file 'dyinf.safetensors': tensor 'dy': expected finite values, found -inf at index [3, 7]",
                extra=["--backward"])
    c.rewrite(m, "anan.safetensors", poison("lora.A", 1 * 12 + 0 * 6 + 4, float("inf")))
    c.run_error("anan.safetensors", i,
                "file 'anan.safetensors': tensor 'lora.A': expected finite values, found inf at index [1, 0, 4]")
    # An F16 model whose value overflows half precision to inf.
    m16, i16 = c.init(*RG, "--dtype", "F16", model="m16.safetensors", inputs="in16.safetensors")
    c.rewrite(m16, "u16.safetensors", poison("angle.U", 5, float("inf")))
    c.run_error("u16.safetensors", i16, "file 'u16.safetensors': tensor 'angle.U': expected finite values, found inf at index [1, 1]")


def case_unknown_variant(c):
    m, i = c.init(*RG)
    c.rewrite(m, "radar.safetensors", metadata={"radargate.config": json.dumps({"variant": "radar"})})
    c.run_error("radar.safetensors", i,
                "file 'radar.safetensors': __metadata__ 'radargate.config': config field 'variant': expected one of %s, "
                "found \"radar\"" % VARIANTS)
    c.rewrite(m, "nocfg.safetensors", metadata={"format": "pt"})
    c.run_error("nocfg.safetensors", i,
                "file 'nocfg.safetensors': missing __metadata__ entry 'radargate.config' (the layer configuration, a JSON "
                "object with at least \"variant\"); not a radargate model file?")
    c.rewrite(m, "field.safetensors", metadata={"radargate.config": json.dumps({"Variant": "radargate"})})
    c.run_error("field.safetensors", i,
                "file 'field.safetensors': __metadata__ 'radargate.config': config field 'Variant': unknown; expected one of "
                "variant, map, bound, pairing, normalize, tau, topk")
    c.expect_error(["init", "--variant", "radar", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1,
                    "--output", "new.safetensors"],
                   "radargate init: error: option --variant: expected one of %s, found \"radar\"" % VARIANTS,
                   code=2, output="new.safetensors")


def case_bad_usage(c):
    m, i = c.init("--variant", "softmax", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1)
    c.expect_error(["run"], "radargate run: error: option --model is required", code=2)
    c.expect_error(["run", "--model", m, "--input", i, "--output", "out.safetensors", "--bogus"],
                   "radargate run: error: unknown option '--bogus'", code=2)
    c.expect_error(["run", "--model", m, "--input", i, "--output", "out.safetensors", "--grads", "x"],
                   "radargate run: error: option --grads needs --backward", code=2)
    c.expect_error(["run", "--model", m, "--input", i, "--output", "out.safetensors", "--backward", "--grads", "x,,lora.A"],
                   "radargate run: error: option --grads: expected a comma-separated list of names, found 'x,,lora.A'", code=2)
    c.run_error(m, i, "option --grads: 'angle.U' is not an input or a parameter of the model 'm.safetensors' (variant "
                "'softmax'); expected some of x,lora.A,lora.B,lora.scale,stretch.Wg,stretch.bg,base.W0,base.b0",
                extra=["--backward", "--grads", "x,angle.U"])
    c.expect_error(["run", "--model", m, "--input", i, "--output", "nodir/out.safetensors"],
                   "radargate run: error: output 'nodir/out.safetensors': cannot create a temporary file in 'nodir': "
                   "No such file or directory", output="nodir")
    c.expect_error(["run", "--model", "absent.safetensors", "--input", i, "--output", "out.safetensors"],
                   "radargate run: error: file 'absent.safetensors': cannot open: No such file or directory")
    init = ["init", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1, "--output", "new.safetensors"]
    c.expect_error(init + ["--variant", "softmax", "--d-in", 5],
                   "radargate init: error: option --d-in given more than once", code=2, output="new.safetensors")
    c.expect_error(["init", "--variant", "softmax", "--d-in", "abc", "--d", 4, "--experts", 2, "--rank", 1,
                    "--output", "new.safetensors"],
                   "radargate init: error: option --d-in: expected an integer in 1..16777216, found 'abc'", code=2,
                   output="new.safetensors")
    c.expect_error(init + ["--variant", "softmax", "--planes", 2],
                   "radargate init: error: option --planes: variant 'softmax' does not rotate (only rotation_only and "
                   "radargate do)", code=2, output="new.safetensors")
    c.expect_error(init + ["--variant", "sum", "--normalize", "softmax"],
                   "radargate init: error: option --normalize: variant 'sum' has a gate without logits (none)", code=2,
                   output="new.safetensors")
    c.expect_error(init + ["--variant", "topk", "--topk", 3],
                   "radargate init: error: option --topk: expected an integer in 1..2, found '3'", code=2,
                   output="new.safetensors")
    c.expect_error(init + ["--variant", "radargate", "--planes", 3],
                   "radargate init: error: option --planes: expected an integer in 1..2, found '3'", code=2,
                   output="new.safetensors")
    c.expect_error(init + ["--variant", "radargate", "--dtype", "I32"],
                   "radargate init: error: option --dtype: expected one of F64 | F32 | F16 | BF16, found \"I32\"", code=2,
                   output="new.safetensors")
    c.expect_error(init + ["--variant", "softmax", "--write-input", "nodir/in.safetensors"],
                   "radargate init: error: output 'nodir/in.safetensors': cannot create a temporary file in 'nodir': "
                   "No such file or directory", output="new.safetensors")
    for cmd in ("run", "init"):
        p = c.rg(cmd, "--help")
        check(p.returncode == 0 and p.stdout.startswith("usage: radargate %s " % cmd) and "--output FILE" in p.stdout,
              "%s --help: exit %d, stdout %r" % (cmd, p.returncode, p.stdout[:200]))


def case_happy_path(c):
    # Every dtype and a few variants: names, shapes, dtypes; --grads selects.
    for dtype in ("F32", "F64", "F16", "BF16"):
        for variant, extra in (("radargate", ["--planes", 3, "--pairing", "half"]), ("topk", []), ("sum", ["--no-base"]),
                               ("rotation_only", ["--map", "mean"])):
            m, i = c.init("--variant", variant, "--d-in", 5, "--d", 7, "--experts", 3, "--rank", 2, "--seed", 3,
                          "--dtype", dtype, *extra, model="m.safetensors", inputs="in.safetensors", tokens=4)
            meta, mts = st_read(c.path(m))
            check(json.loads(meta["radargate.config"])["variant"] == variant, "config: %r" % meta)
            check(all(t[1] == dtype for t in mts), "model dtypes: %r" % [(t[0], t[1]) for t in mts])
            shapes = {t[0]: t[2] for t in mts}
            p = c.rg("run", "--model", m, "--input", i, "--output", "y.safetensors")
            check(p.returncode == 0, "run: %s" % p.stderr)
            _, ts = st_read(c.path("y.safetensors"))
            check([(t[0], t[1], t[2]) for t in ts] == [("y", dtype, [4, 7])], "forward output: %r" % [t[:3] for t in ts])
            check(all(math.isfinite(v) for v in unpack(dtype, ts[0][3])), "y not finite")
            p = c.rg("run", "--model", m, "--input", i, "--output", "g.safetensors", "--backward")
            check(p.returncode == 0, "run --backward: %s" % p.stderr)
            _, gs = st_read(c.path("g.safetensors"))
            want = {"y": [4, 7], "grad.x": [4, 5]}
            want.update({"grad." + k: v for k, v in shapes.items()})
            check({t[0]: t[2] for t in gs} == want, "%s %s backward output: %r, expected %r" % (variant, dtype, {t[0]: t[2] for t in gs}, want))
            check(all(t[1] == dtype for t in gs), "output dtypes")
            # The cpu backend (run's default) may take another kernel path when it keeps what
            # backward needs; with FMA kernels the two agree to rounding, not bit for bit. The
            # reference backend computes y one way only: the same bytes.
            ya, yb = unpack(dtype, ts[0][3]), unpack(dtype, gs[0][3])
            tol = {"F64": 1e-13, "F32": 1e-5}.get(dtype, 1e-2)
            scale = max(1.0, max(abs(v) for v in ya))
            check(max(abs(u - v) for u, v in zip(ya, yb)) <= tol * scale,
                  "y differs between run and run --backward beyond rounding")
            p = c.rg("run", "--model", m, "--input", i, "--output", "yr.safetensors", "--backend", "reference")
            q = c.rg("run", "--model", m, "--input", i, "--output", "gr.safetensors", "--backend", "reference", "--backward")
            check(p.returncode == 0 and q.returncode == 0, "run --backend reference: %s %s" % (p.stderr, q.stderr))
            check(st_read(c.path("yr.safetensors"))[1][0][3] == st_read(c.path("gr.safetensors"))[1][0][3],
                  "reference backend: y differs between run and run --backward")
            p = c.rg("run", "--model", m, "--input", i, "--output", "s.safetensors", "--backward", "--grads", "lora.A,x")
            check(p.returncode == 0, "run --grads: %s" % p.stderr)
            _, ss = st_read(c.path("s.safetensors"))
            check([t[0] for t in ss] == ["y", "grad.x", "grad.lora.A"], "--grads output: %r" % [t[0] for t in ss])
            check(dict((t[0], t[3]) for t in ss)["grad.lora.A"] == dict((t[0], t[3]) for t in gs)["grad.lora.A"],
                  "grad.lora.A differs with --grads")
            if variant == "radargate" and dtype == "F32":
                check("angle.U" in shapes and shapes["angle.U"] == [3, 4], "angle.U shape %r" % shapes.get("angle.U"))
            c.checks += 1
    # Numbers: the sum variant without base is y = sum_i s_i B_i A_i x; grad.x = sum_i s_i A_i^T B_i^T dy.
    m, i = c.init("--variant", "sum", "--d-in", 3, "--d", 4, "--experts", 2, "--rank", 2, "--seed", 9, "--dtype", "F64",
                  "--no-base", model="s.safetensors", inputs="si.safetensors", tokens=3)
    p = c.rg("run", "--model", m, "--input", i, "--output", "so.safetensors", "--backward")
    check(p.returncode == 0, p.stderr)
    M = {t[0]: unpack(t[1], t[3]) for t in st_read(c.path(m))[1]}
    X = {t[0]: unpack(t[1], t[3]) for t in st_read(c.path(i))[1]}
    O = {t[0]: unpack(t[1], t[3]) for t in st_read(c.path("so.safetensors"))[1]}
    A, B, s = M["lora.A"], M["lora.B"], M.get("lora.scale", [1.0, 1.0])
    for t in range(3):
        x = X["x"][3 * t:3 * t + 3]
        dy = X["dy"][4 * t:4 * t + 4]
        y = [0.0] * 4
        gx = [0.0] * 3
        for e in range(2):
            h = [sum(A[e * 6 + q * 3 + a] * x[a] for a in range(3)) for q in range(2)]
            bt = [sum(B[e * 8 + o * 2 + q] * dy[o] for o in range(4)) for q in range(2)]
            for o in range(4):
                y[o] += s[e] * sum(B[e * 8 + o * 2 + q] * h[q] for q in range(2))
            for a in range(3):
                gx[a] += s[e] * sum(A[e * 6 + q * 3 + a] * bt[q] for q in range(2))
        for o in range(4):
            check(abs(O["y"][4 * t + o] - y[o]) <= 1e-12 * (1 + abs(y[o])), "y[%d, %d]: %r vs %r" % (t, o, O["y"][4 * t + o], y[o]))
        for a in range(3):
            check(abs(O["grad.x"][3 * t + a] - gx[a]) <= 1e-12 * (1 + abs(gx[a])), "grad.x[%d, %d]" % (t, a))
    # Determinism: the same command writes the same bytes.
    p = c.rg("run", "--model", m, "--input", i, "--output", "so2.safetensors", "--backward")
    with open(c.path("so.safetensors"), "rb") as f1, open(c.path("so2.safetensors"), "rb") as f2:
        check(f1.read() == f2.read(), "two runs differ")
    c.checks += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("case")
    a = ap.parse_args()
    fn = globals().get("case_" + a.case)
    if fn is None:
        print("unknown case %r" % a.case, file=sys.stderr)
        return 2
    c = Case(os.path.abspath(a.radargate), a.workdir, a.case)
    try:
        fn(c)
    except Failure as e:
        print("FAIL %s: %s\n(files kept in %s)" % (a.case, e, c.dir), file=sys.stderr)
        return 1
    print("ok %s: %d checks" % (a.case, c.checks))
    shutil.rmtree(c.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
