#!/usr/bin/python3
"""The hostile-input catalogue: files and options built to break the radargate tool.

    hostile_tests.py --radargate BIN --workdir DIR CLASS      (CLASS: see CLASSES, or "all")

Every case is generated here, at test time (standard library only), and run against the built
tool. For every bad input the test checks:
  - the exit code (1: bad input, 2: bad usage);
  - exactly one error line ("radargate CMD: error: ...", no control byte in it) that holds the
    fragments the case names: what was wrong, what was expected, what was found; nothing on stdout;
  - that the directory is exactly as it was: no file created, changed or removed (names, sizes,
    modification times and contents, hidden files included);
  - bounded time and memory: each command runs under an address-space limit (RLIMIT_AS) and a
    CPU-time limit, and must finish within a wall-clock budget.
Some classes also check a verdict or an output of a command that must succeed.

Environment: RADARGATE_HOSTILE_SANITIZED=1 (set by scripts/test-sanitize) drops the address-space
limit, which AddressSanitizer's shadow memory cannot run under (the sanitizer's own
hard_rss_limit_mb takes its place), and multiplies the time budgets by 8.
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

SANITIZED = os.environ.get("RADARGATE_HOSTILE_SANITIZED") == "1"
SLOW = 8.0 if SANITIZED else 1.0
MEM_LIMIT = 1 << 30          # 1 GiB of address space per command
TIME_BUDGET = 10.0           # seconds of wall time per command (times SLOW)

# --- safetensors files, written byte by byte -----------------------------------------------------------

SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1}
FMT = {"F64": "d", "F32": "f", "F16": "e", "I32": "i"}


def pack(dtype, values):
    return struct.pack("<%d%s" % (len(values), FMT[dtype]), *values)


def header_file(path, header, data=b"", pad=b" "):
    """Writes a file whose header is `header` (bytes, or a JSON-able object), padded to 8 bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += pad * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def st_write(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    header_file(path, header, b"".join(t[3] for t in tensors))


def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return meta, [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in items]


def H(text):
    """8-byte size + header text, with the right size."""
    return struct.pack("<Q", len(text)) + text


def nested(depth, inner="0", open_="[", close="]"):
    """A JSON value nested `depth` deep, built without recursion."""
    return open_ * depth + inner + close * depth


# --- the harness ---------------------------------------------------------------------------------------

class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def limits():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    cpu = int(60 * SLOW)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def snapshot(d):
    out = {}
    for name in os.listdir(d):
        p = os.path.join(d, name)
        st = os.lstat(p)
        digest = ""
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                # Large (sparse) files: the first 64 MiB with size and mtime.
                for _ in range(64):
                    block = f.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
            digest = h.hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            digest = "-> " + os.readlink(p)
        out[name] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


class Case:
    def __init__(self, radargate, workdir, name):
        self.bin = radargate
        self.dir = tempfile.mkdtemp(prefix="hostile_%s_" % name, dir=workdir)
        self.checks = 0
        self.slowest = (0.0, "")

    def path(self, name):
        return os.path.join(self.dir, name)

    def rg(self, *args, budget=TIME_BUDGET):
        t0 = time.monotonic()
        try:
            p = subprocess.run([self.bin] + [str(a) for a in args], cwd=self.dir, capture_output=True,
                               timeout=budget * SLOW * 3, preexec_fn=limits)
        except subprocess.TimeoutExpired:
            raise Failure("radargate %s: still running after %.0f s (a hang?)" % (" ".join(map(str, args))[:200], budget * SLOW * 3))
        dt = time.monotonic() - t0
        where = "radargate %s" % " ".join(str(a) for a in args)[:200]
        check(p.returncode >= 0, "%s: killed by signal %d (stderr: %r)" % (where, -p.returncode, p.stderr[-2000:]))
        check(dt <= budget * SLOW, "%s: took %.1f s, budget %.1f s" % (where, dt, budget * SLOW))
        if dt > self.slowest[0]:
            self.slowest = (dt, where[:80])
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        return p

    def ok(self, *args, budget=TIME_BUDGET):
        p = self.rg(*args, budget=budget)
        check(p.returncode == 0, "radargate %s: expected success, found exit %d: %s" % (" ".join(map(str, args)), p.returncode, p.stderr))
        return p

    def init(self, *args, model="m.safetensors", inputs="in.safetensors", tokens=4):
        args = list(args) + ["--output", model]
        if inputs:
            args += ["--write-input", inputs, "--tokens", tokens]
        self.ok("init", *args)
        return model, inputs

    def error(self, args, fragments, code=1, budget=TIME_BUDGET):
        """The tool must fail with exit `code`, one error line holding every fragment, nothing on
        stdout, and leave the directory exactly as it was."""
        before = snapshot(self.dir)
        p = self.rg(*args, budget=budget)
        after = snapshot(self.dir)
        where = "radargate %s" % " ".join(str(a) for a in args)[:300]
        lines = p.stderr.splitlines()
        check(p.returncode == code, "%s: expected exit code %d, found %d (stderr: %r)" % (where, code, p.returncode, p.stderr[:2000]))
        check(len(lines) >= 1, "%s: expected an error line, found nothing" % where)
        first = lines[0]
        if code == 1:
            check(len(lines) == 1, "%s: expected exactly one line on stderr, found %d: %r" % (where, len(lines), p.stderr[:2000]))
        else:
            check(any(l.startswith("usage: radargate ") for l in lines[1:]), "%s: expected a usage line, found %r" % (where, p.stderr))
        check(first.startswith("radargate %s: error: " % args[0]), "%s: expected 'radargate %s: error: ...', found %r" % (where, args[0], first))
        check(all(0x20 <= ord(ch) != 0x7f for ch in first), "%s: control character in the message %r" % (where, first))
        check(len(first) < 1000, "%s: a message of %d characters" % (where, len(first)))
        for frag in fragments:
            check(frag in first, "%s:\n  expected the message to hold: %s\n  found: %s" % (where, frag, first))
        check(p.stdout == "", "%s: expected nothing on stdout, found %r" % (where, p.stdout[:300]))
        check(after == before, "%s: the directory changed:\n  before %s\n  after  %s" % (
            where, sorted(before), sorted(after)) if sorted(after) != sorted(before) else
            "%s: a file changed: %s" % (where, [k for k in before if before[k] != after.get(k)]))
        self.checks += 1
        return first

    def run_error(self, model, inputs, fragments, extra=(), **kw):
        return self.error(["run", "--model", model, "--input", inputs, "--output", "out.safetensors"] + list(extra),
                          fragments, **kw)


RG = ["--variant", "radargate", "--d-in", 6, "--d", 8, "--experts", 3, "--rank", 2, "--seed", 5]
TINY = ["--variant", "softmax", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1, "--seed", 1]


def with_header(c, name, header, data=b"", pad=b" "):
    header_file(c.path(name), header, data, pad)
    return name


def x_file(c, name, T=4, d_in=4, dtype="F32", extra=None):
    ts = [("x", dtype, [T, d_in], pack(dtype, [0.5] * (T * d_in)))]
    st_write(c.path(name), ts + (extra or []))
    return name


# --- classes ---------------------------------------------------------------------------------------------

def class_headers(c):
    m, i = c.init(*TINY)
    with open(c.path(m), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    for name, content, frags in (
        ("empty.st", b"", ["too short for the 8-byte header size", "expected at least 8 bytes", "found 0", "empty file"]),
        ("seven.st", b"\x01" * 7, ["expected at least 8 bytes, found 7"]),
        ("bigger.st", struct.pack("<Q", 1000) + b"{}", ["header size 1000 bytes is larger than the file", "expected at most 2"]),
        ("huge.st", struct.pack("<Q", (1 << 64) - 1) + b"{}" * 4, ["exceeds the limit of 100000000 bytes", "18446744073709551615"]),
        ("one.st", struct.pack("<Q", 1) + b"{", ["header of 1 bytes: expected a JSON object"]),
        ("array.st", struct.pack("<Q", 8) + b"[1, 2]  ", ["expected a JSON object starting with '{', found byte 0x5b"]),
        ("space.st", struct.pack("<Q", 8) + b"   {}   ", ["expected a JSON object starting with '{', found byte 0x20"]),
        # NUL padding then garbage: JSON text holds no NUL, whatever follows it.
        ("nul.st", struct.pack("<Q", 16) + b"{}\0\0\0\0garbage!!!", ["expected JSON text padded with spaces, found byte 0x00 at offset 10"]),
        ("nulonly.st", struct.pack("<Q", 8) + b"{}\0\0\0\0\0\0", ["found byte 0x00 at offset 10"]),
        ("trailing.st", H(b"{} {}"), ["header is not valid JSON"]),
        ("badutf8.st", H(b'{"\xff\xfe": 1}'), ["header is not valid JSON"]),
        ("ctrl.st", H(b'{"\x1b":1}'), ["header is not valid JSON"]),
        ("cut.st", raw[:8 + n // 2], ["larger than the file"]),
    ):
        with open(c.path(name), "wb") as f:
            f.write(content)
        c.run_error(name, i, frags)
    # Keys repeated: a tensor name, a field of one entry, a metadata key.
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    with_header(c, "dupname.st", ('{"x":%s,"x":%s}' % (entry, entry)).encode(), pack("F32", [1.0]))
    c.run_error(m, "dupname.st", ["header: name 'x' appears more than once"])
    with_header(c, "dupfield.st", b'{"x":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}}', pack("F32", [1.0]))
    c.run_error(m, "dupfield.st", ["key 'dtype' appears more than once (in 'x')"])
    with_header(c, "dupmeta.st", ('{"__metadata__":{"a":"1","a":"2"},"x":%s}' % entry).encode(), pack("F32", [1.0]))
    c.run_error(m, "dupmeta.st", ["key 'a' appears more than once (in '__metadata__')"])
    with_header(c, "dupmeta2.st", ('{"__metadata__":{},"__metadata__":{},"x":%s}' % entry).encode(), pack("F32", [1.0]))
    c.run_error(m, "dupmeta2.st", ["name '__metadata__' appears more than once"])
    with_header(c, "metaint.st", ('{"__metadata__":{"a":5},"x":%s}' % entry).encode(), pack("F32", [1.0]))
    c.run_error(m, "metaint.st", ["'__metadata__' key 'a': expected a string value, found a non-negative integer (5)"])
    with_header(c, "metaarr.st", ('{"__metadata__":[],"x":%s}' % entry).encode(), pack("F32", [1.0]))
    c.run_error(m, "metaarr.st", ["'__metadata__': expected an object of strings, found array"])
    with_header(c, "entrynum.st", b'{"x":5}')
    c.run_error(m, "entrynum.st", ["tensor 'x': expected an object with dtype, shape and data_offsets, found a non-negative integer"])
    for field in ("dtype", "shape", "data_offsets"):
        e = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        del e[field]
        with_header(c, "no%s.st" % field, {"x": e}, pack("F32", [1.0]))
        c.run_error(m, "no%s.st" % field, ["tensor 'x': missing '%s'" % field])
    # Deep nesting (a structured generator: far beyond a fuzzer's length limit). The parser is
    # iterative and the messages never print a nested value, so depth costs only time.
    for where in ("data_offsets", "shape", "__metadata__", "unknown"):
        deep = nested(100000)
        if where == "__metadata__":
            text = '{"__metadata__":{"k":%s},"x":%s}' % (deep, entry)
            frag = "'__metadata__' key 'k': expected a string value, found array"
        elif where == "unknown":
            text = '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":%s}}' % deep
            frag = None
        else:
            e = json.loads(entry)
            text = json.dumps({"x": e}).replace(json.dumps(e[where]), "[%s]" % deep, 1)
            frag = "'%s': expected non-negative integers, found array" % where
        name = "deep_%s.st" % where.strip("_")
        with_header(c, name, text.encode(), pack("F32", [1.0]))
        if frag:
            c.run_error(m, name, [frag])
        else:
            # An unknown field is skipped whatever it holds (as the reference reader does): the
            # input is then judged on its tensors, and x [1] has the wrong shape.
            c.run_error(m, name, ["tensor 'x': expected shape [T, 4] (d_in = 4), found [1]"])
    # Many entries: the header parse is linear (80k entries once took 84 s).
    for count, tail in ((80000, ""), (400000, "")):
        body = ",".join('"t%d":{}' % k for k in range(count))
        with_header(c, "many%d.st" % count, ("{%s}" % body).encode())
        c.run_error(m, "many%d.st" % count, ["tensor 't0': missing 'dtype'"], budget=5)
    # 80k valid empty tensors, then a repeated name at the end: every entry is parsed first.
    body = ",".join('"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % k for k in range(80000))
    with_header(c, "manyvalid.st", ("{%s,\"t5\":{}}" % body).encode())
    c.run_error(m, "manyvalid.st", ["header: name 't5' appears more than once"], budget=5)


def class_offsets(c):
    m, i = c.init(*TINY)
    four = pack("F32", [1.0])
    for name, offsets, data, frags in (
        ("rev.st", [4, 0], four, ["'data_offsets': expected begin <= end, found [4, 0]"]),
        ("past.st", [0, 8], four, ["'data_offsets' [0, 8] out of range: the data section has 4 bytes"]),
        ("neg.st", [-1, 4], four, ["'data_offsets': expected non-negative integers, found a negative integer (-1)"]),
        ("flt.st", [0.0, 4], four, ["'data_offsets': expected non-negative integers, found number (0.0)"]),
        ("str.st", ["0", 4], four, ["'data_offsets': expected non-negative integers, found string (\"0\")"]),
        ("three.st", [0, 4, 8], four, ["'data_offsets': expected an array [begin, end], found an array of more than 2"]),
        ("one.st", [0], four, ["'data_offsets': expected an array [begin, end], found an array of 1 element"]),
        ("max.st", [0, (1 << 64) - 1], four, ["out of range"]),
        ("over.st", [0, 1 << 64], four, ["expected non-negative integers, found number (18446744073709551616)"]),
        ("obj.st", {"begin": 0}, four, ["'data_offsets': expected an array [begin, end], found object"]),
    ):
        with_header(c, name, {"x": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}, data)
        c.run_error(m, name, frags)
    # Overlap, gap and trailing bytes between two tensors.
    for name, b, frags in (
        ("overlap.st", [0, 4], ["overlap"]),
        ("gap.st", [8, 12], ["bytes [4, 8) of the data section belong to no tensor"]),
    ):
        with_header(c, name, {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                              "dy": {"dtype": "F32", "shape": [1], "data_offsets": b}}, pack("F32", [1.0] * 3))
        c.run_error(m, name, frags)
    with_header(c, "trail.st", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, pack("F32", [1.0] * 2))
    c.run_error(m, "trail.st", ["4 trailing bytes: the data section has 8 bytes, the tensors cover 4"])


def class_shapes(c):
    m, i = c.init(*TINY)
    big = 1 << 62
    for name, shape, frags in (
        ("neg.st", [-1, 4], ["'shape': expected non-negative integers, found a negative integer (-1)"]),
        ("flt.st", [1.5, 4], ["'shape': expected non-negative integers, found number (1.5)"]),
        # The same rule for a zero wherever it stands: the non-zero extents must multiply to a
        # representable count.
        ("big0last.st", [big, 4, 0], ["shape [4611686018427387904, 4, 0] is too large"]),
        ("big0first.st", [0, big, 4], ["shape [0, 4611686018427387904, 4] is too large"]),
        ("big0mid.st", [big, 0, 4], ["is too large"]),
        ("wrap.st", [1 << 32, 1 << 32], ["is too large"]),
        ("max.st", [(1 << 64) - 1], ["shape [18446744073709551615] is too large"]),
        ("int63.st", [(1 << 63) - 1, 0], ["found data_offsets"]),  # representable: judged by its byte count
        ("rank.st", [1] * 65, ["'shape': expected at most 64 dimensions, found more"]),
        ("bytes.st", [3, 4], ["expected 48 bytes (shape [3, 4] of F32), found data_offsets [0, 64] = 64 bytes"]),
        ("nested.st", [[4], 4], ["'shape': expected non-negative integers, found array"]),
        ("notarray.st", 16, ["'shape': expected an array of non-negative integers, found a non-negative integer"]),
    ):
        data = pack("F32", [0.0] * 16)
        with_header(c, name, {"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, len(data)]}}, data)
        c.run_error(m, name, frags)
    # Shapes that are valid safetensors but wrong for the model or the input.
    x_file(c, "x5.st", d_in=5)
    c.run_error(m, "x5.st", ["tensor 'x': expected shape [T, 4] (d_in = 4), found [4, 5]"])
    st_write(c.path("x3d.st"), [("x", "F32", [1, 4, 4], pack("F32", [0.0] * 16))])
    c.run_error(m, "x3d.st", ["tensor 'x': expected shape [T, 4] (d_in = 4), found [1, 4, 4]"])
    meta, ts = st_read(c.path(m))
    st_write(c.path("rank.m.st"), [(n, d, [1] + s if n == "lora.B" else s, b) for n, d, s, b in ts], meta)
    c.run_error("rank.m.st", i, ["tensor 'lora.B': expected a rank-3 tensor, found shape [1, 2, 4, 1]"])


def class_dtypes(c):
    m, i = c.init(*TINY)
    meta, ts = st_read(c.path(m))
    for name, edit, frags in (
        ("i32.st", lambda n, d: "I32" if n == "lora.A" else d, ["tensor 'lora.A': expected a floating-point dtype (F64, F32, F16 or BF16), found I32"]),
        ("mixed.st", lambda n, d: "F16" if n == "lora.B" else d, ["tensor 'lora.B': expected dtype F32 (the dtype of 'lora.A'), found F16"]),
    ):
        out = []
        for n, d, s, b in ts:
            nd = edit(n, d)
            nb = b if SIZE[nd] == SIZE[d] else b[:len(b) * SIZE[nd] // SIZE[d]]
            out.append((n, nd, s, nb))
        st_write(c.path(name), out, meta)
        c.run_error(name, i, frags)
    for name, dtype, frags in (
        ("lower.st", "f32", ["'dtype': expected a safetensors dtype (F64, F32, F16, BF16, I64, ...), found \"f32\""]),
        ("num.st", 32, ["'dtype': expected a string, found a non-negative integer (32)"]),
        ("null.st", None, ["'dtype': expected a string, found null"]),
        ("arr.st", ["F32"], ["'dtype': expected a string, found array"]),
        ("long.st", "F" * 5000, ["found \"" + "F" * 48 + "...\""]),
    ):
        with_header(c, name, {"x": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}, pack("F32", [1.0]))
        c.run_error(m, name, frags)
    x_file(c, "x64.st", dtype="F64")
    c.run_error(m, "x64.st", ["tensor 'x': expected dtype F32 (the model's dtype), found F64"])
    st_write(c.path("u8.st"), [("x", "U8", [4, 4], bytes(16))])
    c.run_error(m, "u8.st", ["tensor 'x': expected dtype F32 (the model's dtype), found U8"])


def config_model(c, name, config, base="m.safetensors"):
    meta, ts = st_read(c.path(base))
    st_write(c.path(name), ts, {"radargate.config": config if isinstance(config, str) else json.dumps(config)})
    return name


def class_configs(c):
    m, i = c.init(*TINY)
    topk_m, _ = c.init("--variant", "topk", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1, model="topk.safetensors", inputs=None)
    pre = "__metadata__ 'radargate.config': "
    for name, config, frags, base in (
        ("dupvar.st", '{"variant": "softmax", "variant": "sum"}', ["config: key 'variant' appears more than once"], m),
        ("deep.st", '{"variant": "softmax", "tau": %s}' % nested(100000), ["config: nested deeper than 16 levels"], m),
        ("deepobj.st", nested(100000, "1", '{"a":', "}"), ["config: nested deeper than 16 levels"], m),
        ("notjson.st", "{variant: softmax}", ["config: not valid JSON"], m),
        ("array.st", "[1, 2]", ["config: expected a JSON object, found array ([1,2])"], m),
        ("bigarray.st", "[" + ",".join(["1"] * 100000) + "]", ["found array ([1,1,1,", "...)"], m),
        ("topk_softmax.st", {"variant": "softmax", "topk": 2}, ["config field 'topk': only read by normalize topk_softmax", "normalizes with softmax", "found 2"], m),
        ("topk_huge.st", '{"variant": "topk", "topk": 18446744073709551615}', ["config field 'topk': expected a value in 1..N, found 18446744073709551615"], topk_m),
        ("topk_zero.st", {"variant": "topk", "topk": 0}, ["config field 'topk': expected a value in 1..N, found 0"], topk_m),
        ("topk_neg.st", {"variant": "topk", "topk": -3}, ["found -3"], topk_m),
        ("topk_big.st", {"variant": "topk", "topk": 3}, ["topk", "found 3"], topk_m),
        ("tau_sub.st", {"variant": "softmax", "tau": 1e-310}, ["config field 'tau': expected a normal number", "found 1e-310"], m),
        ("tau_zero.st", {"variant": "softmax", "tau": 0}, ["config field 'tau': expected a normal number", "found 0"], m),
        ("tau_str.st", {"variant": "softmax", "tau": "1"}, ["config field 'tau': expected a number, found string (\"1\")"], m),
        ("tau_sum.st", {"variant": "sum", "tau": 1}, ["config field 'tau': variant 'sum' has a gate without logits"], m),
        ("map_sum.st", {"variant": "softmax", "map": "mean"}, ["config field 'map': variant 'softmax' does not rotate"], m),
        ("field.st", {"variant": "softmax", "colour\n": "red"}, ["config field 'colour\\x0a': unknown"], m),
        ("ansi.st", {"variant": "\x1b[31mradargate\x1b[0m"}, ["config field 'variant'", "\\x1b[31mradargate"], m),
        ("novariant.st", {"map": "mean"}, ["config field 'variant': required, but it is missing"], m),
    ):
        config_model(c, name, config, base)
        c.run_error(name, i, [pre + frags[0] if frags[0].startswith("config") else frags[0]] + frags[1:])
    meta, ts = st_read(c.path(m))
    st_write(c.path("nometa.st"), ts, {"format": "pt"})
    c.run_error("nometa.st", i, ["missing __metadata__ entry 'radargate.config'"])
    # Options that build a configuration are held to the same rules.
    init = ["init", "--d-in", 4, "--d", 4, "--experts", 2, "--rank", 1, "--output", "new.st"]
    c.error(init + ["--variant", "softmax", "--topk", 2], ["option --topk: only read by normalize topk_softmax"], code=2)
    c.error(init + ["--variant", "softmax", "--tau", "1e-310"], ["option --tau: expected a number in double's normal range, found '1e-310' (it underflows)"], code=2)
    c.error(init + ["--variant", "topk", "--topk", "18446744073709551615"], ["option --topk: expected an integer in 1..2, found '18446744073709551615'"], code=2)


def class_zero_dimensions(c):
    m, i = c.init(*TINY)
    meta, ts = st_read(c.path(m))

    def zero(dim):
        out = []
        for n, d, s, b in ts:
            s = list(s)
            if n in ("lora.A", "lora.B", "lora.scale", "stretch.Wg", "stretch.bg") and dim == "N":
                s[0] = 0
            elif n == "lora.A" and dim == "r":
                s[1] = 0
            elif n == "lora.B" and dim == "r":
                s[2] = 0
            n_el = 1
            for e in s:
                n_el *= e
            out.append((n, d, s, b[:n_el * SIZE[d]]))
        return out

    for dim, frag in (("N", "tensor 'lora.A': expected at least one expert (N >= 1), found N = 0"),
                      ("r", "tensor 'lora.A': expected rank r >= 1, found r = 0")):
        st_write(c.path("zero%s.st" % dim), zero(dim), meta)
        c.run_error("zero%s.st" % dim, i, [frag])
    # Zero tokens: a valid (empty) computation for run, refused by verify and cone.
    x_file(c, "t0.st", T=0)
    c.ok("run", "--model", m, "--input", "t0.st", "--output", "y0.st")
    _, ys = st_read(c.path("y0.st"))
    check([(n, s) for n, _, s, _ in ys] == [("y", [0, 4])], "run on T = 0: %r" % ys)
    os.unlink(c.path("y0.st"))
    c.error(["verify", "--model", m, "--input", "t0.st"], ["tensor 'x': expected at least one token, found shape [0, 4]"])
    for shape, frag in (([0, 2, 2], "B, d, N >= 1"), ([1, 0, 2], "B, d, N >= 1"), ([1, 2, 0], "B, d, N >= 1")):
        n_v = shape[0] * shape[1] * shape[2]
        st_write(c.path("g.st"), [("V", "F64", shape, pack("F64", [1.0] * n_v)), ("y", "F64", shape[:2], pack("F64", [1.0] * shape[0] * shape[1]))])
        c.error(["cone", "--input", "g.st", "--output", "out.st"], [frag])
    init = ["init", "--variant", "sum", "--output", "new.st"]
    c.error(init + ["--d-in", 0, "--d", 4, "--experts", 2, "--rank", 1], ["option --d-in: expected an integer in 1..16777216, found '0'"], code=2)
    c.error(init + ["--d-in", 4, "--d", 4, "--experts", 0, "--rank", 1], ["option --experts: expected an integer in 1..65536, found '0'"], code=2)


def class_truncations(c):
    m, i = c.init(*RG)
    with open(c.path(m), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    cuts = sorted(set([0, 1, 7, 8, 9, 8 + n // 3, 8 + n - 1, 8 + n, 8 + n + 1, (8 + n + len(raw)) // 2, len(raw) - 1]))
    for cut in cuts:
        with open(c.path("cut.st"), "wb") as f:
            f.write(raw[:cut])
        first = c.run_error("cut.st", i, ["file 'cut.st': "])
        if cut >= 8 + n:
            check("out of range" in first or "no tensors" in first, "cut at %d: %s" % (cut, first))
        os.unlink(c.path("cut.st"))
    with open(c.path(i), "rb") as f:
        rawi = f.read()
    with open(c.path("icut.st"), "wb") as f:
        f.write(rawi[:-3])
    c.run_error(m, "icut.st", ["(file truncated?)"])


def class_nonfinite(c):
    m, i = c.init(*TINY)
    meta, ts = st_read(c.path(m))
    _, xs = st_read(c.path(i))
    for name, target, value, extra, frag in (
        ("xnan.st", "x", float("nan"), [], "tensor 'x': expected finite values, found nan at index [0, 1]"),
        # dy is checked whenever present, not only with --backward.
        ("dyinf.st", "dy", float("inf"), [], "tensor 'dy': expected finite values, found inf at index [0, 1]"),
        ("dyinfb.st", "dy", -float("inf"), ["--backward"], "tensor 'dy': expected finite values, found -inf at index [0, 1]"),
    ):
        out = [(n, d, s, pack(d, [value if (n == target and k == 1) else v for k, v in enumerate(struct.unpack("<%df" % (len(b) // 4), b))])) for n, d, s, b in xs]
        st_write(c.path(name), out)
        c.run_error(m, name, [frag], extra=extra)
    out = [(n, d, s, pack(d, [float("nan")] + [0.0] * (len(b) // 4 - 1)) if n == "lora.B" else b) for n, d, s, b in ts]
    st_write(c.path("bnan.st"), out, meta)
    c.run_error("bnan.st", i, ["tensor 'lora.B': expected finite values, found nan at index [0, 0, 0]"])
    # Finite weights so large that the output overflows: an error, and nothing is written.
    out = [(n, d, s, pack(d, [3e38] * (len(b) // 4)) if n in ("lora.A", "lora.B", "base.W0") else b) for n, d, s, b in ts]
    st_write(c.path("huge.st"), out, meta)
    for backend in ("cpu", "reference"):
        c.run_error("huge.st", i, ["output 'y': expected finite values, found", "the computation overflowed", "nothing was written"],
                    extra=["--backend", backend])
    # A gradient that overflows (y finite): a base layer with large weights and a tiny x.
    # Cone and hull: data whose norms overflow double is never "inside".
    V = [-1.7e308, -1.7e308]
    y = [1.7e308, 1.7e308]
    st_write(c.path("g.st"), [("V", "F64", [1, 2, 1], pack("F64", V)), ("y", "F64", [1, 2], pack("F64", y))])
    for hull in ([], ["--hull"]):
        c.ok("cone", "--input", "g.st", "--output", "ans.st", *hull)
        _, ans = st_read(c.path("ans.st"))
        inside = dict((t[0], t[3]) for t in ans)["inside"]
        check(inside[0] != 1, "cone %s with overflowing norms: verdict inside" % hull)
        os.unlink(c.path("ans.st"))
    # The same data scaled down is outside.
    st_write(c.path("g2.st"), [("V", "F64", [1, 2, 1], pack("F64", [-1.7, -1.7])), ("y", "F64", [1, 2], pack("F64", [1.7, 1.7]))])
    c.ok("cone", "--input", "g2.st", "--output", "ans.st")
    _, ans = st_read(c.path("ans.st"))
    check(dict((t[0], t[3]) for t in ans)["inside"][0] == 0, "scaled-down cone: expected outside")
    os.unlink(c.path("ans.st"))
    st_write(c.path("ginf.st"), [("V", "F64", [1, 2, 1], pack("F64", [float("inf"), 0.0])), ("y", "F64", [1, 2], pack("F64", [1.0, 1.0]))])
    c.error(["cone", "--input", "ginf.st", "--output", "ans.st"], ["tensor 'V': expected finite values, found inf at index [0, 0, 0]"])


def class_outputs(c):
    m, i = c.init(*TINY)
    os.link(c.path(m), c.path("hard.st"))
    os.symlink(m, c.path("sym.st"))
    run = ["run", "--model", m, "--input", i]
    for out, other in ((m, "--model"), ("./" + m, "--model"), (i, "--input"), ("hard.st", "--model"), ("sym.st", "--model"),
                       (os.path.join(c.dir, i), "--input")):
        c.error(run + ["--output", out], ["option --output: expected a file other than %s" % other, "it would be replaced"], code=2)
    c.error(["cone", "--input", i, "--output", i], ["option --output: expected a file other than --input"], code=2)
    init = ["init"] + TINY
    c.error(init + ["--output", "a.st", "--write-input", "a.st"], ["option --write-input: expected a file other than --output ('a.st'), found the same file 'a.st'"], code=2)
    c.error(init + ["--output", m, "--write-input", "./" + m], ["option --write-input: expected a file other than --output"], code=2)
    # A failed --write-input keeps the model that existed before (and writes neither file).
    c.error(init + ["--output", m, "--write-input", "nodir/in.st"], ["output 'nodir/in.st': cannot create a temporary file in 'nodir'"])
    os.mkdir(c.path("adir"))
    c.error(init + ["--output", m, "--write-input", "adir"], ["output 'adir': expected a new file or a regular file to replace, found a directory"])
    c.error(run + ["--output", "adir"], ["output 'adir': expected a new file or a regular file to replace, found a directory"])
    c.error(run + ["--output", "/dev/null"], ["output '/dev/null': expected a new file or a regular file to replace, found a character device"])
    c.error(run + ["--output", "adir/"], ["output 'adir/': expected a file name, found a directory path"])
    # A stale temporary file of ours (its writer is gone) is removed after a successful write, and
    # reported; one whose writer still runs, or that is recent, is kept.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = ".o.st.tmp.%d.0.123" % dead.pid
    live = ".o.st.tmp.%d.0.456" % os.getpid()
    recent = ".o.st.tmp.%d.1.789" % dead.pid
    other = ".o.st.tmp.x.0.1"
    for name in (stale, live, recent, other):
        with open(c.path(name), "wb") as f:
            f.write(b"partial")
    old = time.time() - 3600
    for name in (stale, live, other):
        os.utime(c.path(name), (old, old))
    p = c.ok(*run, "--output", "o.st")
    check(not os.path.exists(c.path(stale)), "stale temporary file not removed")
    check(all(os.path.exists(c.path(n)) for n in (live, recent, other)), "a temporary file that is not stale was removed")
    check(p.stderr.count("\n") == 1 and "note: removed '" in p.stderr and stale in p.stderr, "stale removal not reported: %r" % p.stderr)
    # SIGKILL during a write leaves the destination whole: the old file or the complete new one.
    args = ["init", "--variant", "sum", "--d-in", "512", "--d", "512", "--experts", "64", "--rank", "16"]
    c.ok(*args, "--output", "big.st")
    c.ok(*args, "--seed", "9", "--output", "big9.st")
    with open(c.path("big.st"), "rb") as f:
        old_bytes = f.read()
    with open(c.path("big9.st"), "rb") as f:
        new_bytes = f.read()
    for delay in (0.001, 0.01, 0.03, 0.1, 0.3):
        p = subprocess.Popen([c.bin] + args + ["--seed", "9", "--output", "big.st"], cwd=c.dir, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait()
        with open(c.path("big.st"), "rb") as f:
            got = f.read()
        check(got in (old_bytes, new_bytes), "SIGKILL after %.3f s left a partial destination (%d bytes)" % (delay, len(got)))
    c.checks += 1


def class_files(c):
    m, i = c.init(*TINY)
    run = ["run", "--input", i, "--output", "out.st", "--model"]
    c.error(run + ["/dev/zero"], ["file '/dev/zero': expected a regular file, found a character device"])
    c.error(run + ["/dev/null"], ["file '/dev/null': expected a regular file, found a character device"])
    c.error(run + ["."], ["file '.': expected a regular file, found a directory"])
    c.error(run + ["absent.st"], ["file 'absent.st': cannot open: No such file or directory"])
    fifo = os.path.join(tempfile.mkdtemp(dir=os.path.dirname(c.dir)), "fifo")
    os.mkfifo(fifo)
    c.error(run + [fifo], ["expected a regular file, found a FIFO"])
    shutil.rmtree(os.path.dirname(fifo))
    c.error(["run", "--model", m, "--output", "out.st", "--input", "/dev/zero"], ["file '/dev/zero': expected a regular file"])
    c.error(["cone", "--input", "/dev/urandom", "--output", "out.st"], ["file '/dev/urandom': expected a regular file"])
    # A sparse file far larger than the memory allowed is refused before it is read.
    with open(c.path("sparse.st"), "wb") as f:
        f.write(struct.pack("<Q", 8) + b"{}      ")
        f.truncate(64 << 30)
    limit = "bytes (the memory this process may use), found a larger file"
    if not SANITIZED:
        c.error(run + ["sparse.st"], [limit])
    # Paths with control characters are printed escaped.
    c.error(run + ["bad\nname\x1b[2J.st"], ["file 'bad\\x0aname\\x1b[2J.st': cannot open"])


def class_names(c):
    m, i = c.init(*TINY)
    for name, shown in (("x\ny", "x\\x0ay"), ("\x1b[31mred", "\\x1b[31mred"), ("a\x00b", "a\\x00b"), ("caf\u00e9", "caf\\xc3\\xa9"),
                        ("back\\slash", "back\\\\slash"), ("radargate run: error: spoof", "radargate run: error: spoof")):
        st_write(c.path("n.st"), [("x", "F32", [4, 4], pack("F32", [0.0] * 16)), (name, "F32", [0], b"")])
        first = c.run_error(m, "n.st", ["tensor '%s': unknown input name; expected x [T, d_in] or dy [T, d]" % shown])
        check(first.count("error:") == 1 or "spoof" in name, "spoofed message: %r" % first)
        meta, ts = st_read(c.path(m))
        st_write(c.path("nm.st"), ts + [(name, "F32", [0], b"")], meta)
        c.run_error("nm.st", i, ["tensor '%s': unknown parameter name" % shown])


def class_init_limits(c):
    base = ["init", "--variant", "sum", "--output", "new.st"]
    for dims, frag in (
        ([16777216, 16777216, 65536, 16777216], "found one that needs more than 2^64 bytes (its parameter count overflows)"),
        ([16777216, 16777216, 65536, 1], "found one that needs "),          # about 2 PB
        ([1 << 20, 1 << 20, 8, 1 << 16], "found one that needs "),          # about 8 TB
        ([16384, 16384, 1, 1], None),                                       # 2 GB: over the 1 GiB limit here
    ):
        if frag is None and SANITIZED:
            continue
        c.error(base + ["--d-in", dims[0], "--d", dims[1], "--experts", dims[2], "--rank", dims[3]],
                ["expected a model that fits in memory", frag or "found one that needs"])
    # The input file of --write-input counts too: 2^24 tokens of width 2^25.
    c.error(base + ["--d-in", 1 << 24, "--d", 1 << 24, "--experts", 1, "--rank", 1, "--write-input", "in.st", "--tokens", 1 << 24],
            ["expected a model that fits in memory"])


def class_run_memory(c):
    # A 0.5 MB sum model and an 8 KB input: the default backend runs it in bounded memory.
    c.init("--variant", "sum", "--d-in", 256, "--d", 256, "--experts", 64, "--rank", 4, "--no-base", tokens=8)
    p = c.ok("run", "--model", "m.safetensors", "--input", "in.safetensors", "--output", "o.st", "--backward")
    check("backend cpu" in p.stdout, "the default backend of run: %r" % p.stdout)
    c.init("--variant", "sum", "--d-in", 256, "--d", 256, "--experts", 64, "--rank", 4, "--no-base", tokens=2048,
           model="m2.safetensors", inputs="in2.safetensors")
    c.ok("run", "--model", "m2.safetensors", "--input", "in2.safetensors", "--output", "o2.st")


def adapter_dir(c, name, config, modules=("model.layers.0.self_attn.q_proj",)):
    """A PEFT-style adapter directory: adapter_config.json (text, or a JSON-able object) and valid
    lora_A [2, 4] / lora_B [4, 2] tensors for each module."""
    d = c.path(name)
    os.mkdir(d)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))
    ts = []
    for m in modules:
        ts.append(("base_model.model.%s.lora_A.weight" % m, "F32", [2, 4], pack("F32", [0.25] * 8)))
        ts.append(("base_model.model.%s.lora_B.weight" % m, "F32", [4, 2], pack("F32", [0.5] * 8)))
    st_write(os.path.join(d, "adapter_model.safetensors"), ts)
    return name


def class_peft(c):
    imp = ["import-peft", "--variant", "sum", "--output", "out.st", "--quiet", "--adapter"]
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    # Nesting beyond any fuzzer's length limit, where a recursive printer would overflow the stack.
    for field in ("r", "rank_pattern", "target_modules"):
        deep = json.dumps(cfg)[:-1] + ', "%s": %s}' % (field, nested(100000))
        if field == "r":
            deep = '{"peft_type": "LORA", "lora_alpha": 4, "r": %s}' % nested(100000)
        c.error(imp + [adapter_dir(c, "deep_" + field, deep)], ["adapter_config.json: nested deeper than 16 levels"])
    c.error(imp + [adapter_dir(c, "dup", '{"r": 2, "r": 3, "lora_alpha": 4}')],
            ["key 'r' appears more than once in one object"])
    # A configuration that is not a regular file, or too large, is refused before it is read.
    d = adapter_dir(c, "zero", cfg)
    os.remove(os.path.join(c.path(d), "adapter_config.json"))
    os.symlink("/dev/zero", os.path.join(c.path(d), "adapter_config.json"))
    c.error(imp + [d], ["adapter_config.json': expected a regular file, found something else"])
    d = adapter_dir(c, "big", cfg)
    with open(os.path.join(c.path(d), "adapter_config.json"), "ab") as f:
        f.truncate(65 << 20)
    c.error(imp + [d], ["expected at most 67108864 bytes of JSON, found 68157440"])
    # Pattern keys: catastrophic backtracking for re / std::regex is linear here; constructs the
    # matcher does not read, and names with control bytes, are refused with the key escaped.
    long_module = "model." + "a" * 20000 + ".q_proj"
    for i, key in enumerate(("(a*)*b", "(a|aa)+$", "(?:a+a+)+c")):
        d = adapter_dir(c, "slow%d" % i, dict(cfg, rank_pattern={key: 3}), (long_module,))
        c.ok("import-peft", "--variant", "sum", "--quiet", "--adapter", d, "--output", "ok%d.st" % i, budget=10)
    c.error(imp + [adapter_dir(c, "look", dict(cfg, rank_pattern={"(?=q)q_proj": 2}))],
            ["pattern key '(?=q)q_proj' is not a regular expression this importer reads",
             "group syntax '(?=' (lookaround, flags, ...) that this matcher does not read"])
    c.error(imp + [adapter_dir(c, "nest", dict(cfg, rank_pattern={"(" * 5000 + "q" + ")" * 5000: 2}))],
            ["groups nested deeper than 32 levels"])
    c.error(imp + [adapter_dir(c, "count", dict(cfg, rank_pattern={"(q{1000}){1000}": 2}))],
            ["compiles to more than 20000 steps"])
    c.error(imp + [adapter_dir(c, "many", dict(cfg, rank_pattern={"k%d{900}" % i: 2 for i in range(300)}))],
            ["keys compile to more than 200000 matching steps in all (300 keys)"])
    c.error(imp + [adapter_dir(c, "ctl", dict(cfg, rank_pattern={"q\n\x1b[2Jproj": 0}))],
            ["rank_pattern 'q\\x0a\\x1b[2Jproj': expected an integer >= 1, found 0"])


CLASSES = ["headers", "offsets", "shapes", "dtypes", "configs", "zero_dimensions", "truncations", "nonfinite", "outputs",
           "files", "names", "init_limits", "run_memory", "peft"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("cls", choices=CLASSES + ["all"])
    a = ap.parse_args()
    status = 0
    for name in (CLASSES if a.cls == "all" else [a.cls]):
        c = Case(os.path.abspath(a.radargate), a.workdir, name)
        t0 = time.monotonic()
        try:
            globals()["class_" + name](c)
        except Failure as e:
            print("FAIL %s: %s\n(files kept in %s)" % (name, e, c.dir), file=sys.stderr)
            status = 1
            continue
        print("ok %s: %d checks in %.1f s (slowest command %.2f s: %s)" % (name, c.checks, time.monotonic() - t0, c.slowest[0], c.slowest[1]))
        shutil.rmtree(c.dir)
    return status


if __name__ == "__main__":
    sys.exit(main())
