#!/usr/bin/python3
"""Command-line tests of `radargate train` (numpy and scripts/python/safetensors_np.py).

    cli_train_tests.py --radargate BIN --workdir DIR CASE

CASEs: usage (bad options), data (every kind of bad data file), model (bad --train, bad state,
divergence), end_to_end (a small run whose loss must fall below a fixed number; same bytes for
the same seed; stopped-and-resumed = uninterrupted; --log; the output runs), tty (the progress bar
on a pseudo-terminal, plain lines otherwise), cuda (--backend cuda: refused without CUDA (--cuda
OFF); with CUDA, against the cpu backend where there is a device).

Every error must be ONE line on stderr (exit code 1, or 2 with the usage line for bad usage),
naming what was wrong, and leave no output file and no temporary file behind.
"""
import argparse
import json
import os
import pty
import select
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "python"))
import safetensors_np as st  # noqa: E402


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Case:
    def __init__(self, binary, workdir, name):
        self.bin = binary
        self.dir = tempfile.mkdtemp(prefix="train_%s_" % name, dir=workdir)
        self.checks = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def rg(self, *args, timeout=120):
        return subprocess.run([self.bin] + [str(a) for a in args], cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *args):
        p = self.rg(*args)
        check(p.returncode == 0, "radargate %s: exit %d: %s" % (" ".join(map(str, args)), p.returncode, p.stderr))
        return p

    def expect_error(self, args, message, code=1, exact=True, output="out.safetensors", stdout_ok=False):
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
            check(any(l.startswith("usage: radargate " + str(args[0])) for l in lines), "%s: no usage line in %r" % (where, p.stderr))
        if exact:
            check(lines[0] == message, "%s:\n  expected message: %s\n  found message:    %s" % (where, message, lines[0]))
        else:
            check(lines[0].startswith(message), "%s:\n  expected a message starting: %s\n  found: %s" % (where, message, lines[0]))
        if not stdout_ok:
            check(p.stdout == "", "%s: expected nothing on stdout, found %r" % (where, p.stdout))
        check(not os.path.exists(self.path(output)), "%s: output file %s exists" % (where, output))
        check(after == before, "%s: the directory changed: before %s, after %s" % (where, before, after))
        self.checks += 1

    def train_error(self, args, message, **kw):
        self.expect_error(["train"] + list(args), "radargate train: error: " + message, **kw)


D_IN, D, N, R = 8, 4, 3, 2


def make_model(c, name="m.safetensors", variant="radargate", extra=()):
    rot = ["--angle-rank", 2] if variant in ("rotation_only", "radargate") else []
    c.ok("init", "--variant", variant, "--d-in", D_IN, "--d", D, "--experts", N, "--rank", R, *rot,
         "--no-base", "--seed", 3, "--output", name, *extra)
    return name


def make_data(c, name, T=96, seed=0, labels=True, targets=False, dtype=np.float32):
    """x [T, d_in]; labels = argmax of a fixed linear map (learnable); y = that map (mse)."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(99).standard_normal((D, D_IN))
    x = rng.standard_normal((T, D_IN))
    z = x @ W.T
    t = {"x": x.astype(dtype)}
    if labels:
        t["label"] = np.argmax(z, axis=1).astype(np.int64)
    if targets:
        t["y"] = (0.3 * z).astype(dtype)
    st.save(c.path(name), t)
    return name


def case_usage(c):
    m = make_model(c)
    d = make_data(c, "d.safetensors")
    base = ["--model", m, "--data", d, "--output", "out.safetensors"]
    u = "radargate train: error: "
    c.expect_error(["train"] + base + ["--loss", "hinge"], u + "option --loss: expected mse | cross_entropy, found 'hinge'", code=2)
    c.expect_error(["train"] + base + ["--optimizer", "adam"], u + "option --optimizer: expected adamw | sgd, found 'adam'", code=2)
    c.expect_error(["train"] + base + ["--schedule", "linear"], u + "option --schedule: expected constant | cosine, found 'linear'", code=2)
    c.expect_error(["train"] + base + ["--momentum", "0.9"], u + "option --momentum: only for --optimizer sgd", code=2)
    c.expect_error(["train"] + base + ["--backend", "reference", "--threads", "2"], u + "option --threads needs --backend cpu", code=2)
    c.expect_error(["train"] + base + ["--epochs", "0"], u + "option --epochs: expected an integer in 1..1000000000, found '0'", code=2)
    c.expect_error(["train"] + base + ["--epochs", "2", "--stop-after", "3"], u + "option --stop-after: expected at most --epochs (2), found 3", code=2)
    c.expect_error(["train"] + base + ["--lr", "-1"], u + "option --lr: expected a number > 0, found -1", code=2)
    c.expect_error(["train"] + base + ["--lr", "nan"], u + "option --lr: expected a finite number, found 'nan'", code=2)
    c.expect_error(["train"] + base + ["--clip", "-1"], u + "option --clip: expected a number >= 0 (0: off), found -1", code=2)
    c.expect_error(["train"] + base + ["--batch", "0"], u + "option --batch: expected an integer in 1..16777216, found '0'", code=2)
    c.expect_error(["train", "--model", m, "--data", d, "--output", d], u + "option --output: '%s' is also an input; choose another file" % d,
                   code=2, output="none")
    c.expect_error(["train"] + base + ["--train", "angle.U,,stretch.bg"],
                   u + "option --train: expected a comma-separated list of names, found 'angle.U,,stretch.bg'", code=2)
    c.expect_error(["train", "--model", m, "--data", d], u + "option --output is required", code=2)


def case_data(c):
    m = make_model(c)
    ce = ["--loss", "cross_entropy"]
    u = "radargate train: error: "

    def bad(name, tensors, message, loss=ce):
        st.save(c.path(name), tensors)
        c.train_error(["--model", m, "--data", name, "--output", "out.safetensors"] + loss, "file '%s': " % name + message)

    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, D_IN)).astype(np.float32)
    lab = np.arange(10, dtype=np.int64) % D
    y = rng.standard_normal((10, D)).astype(np.float32)
    bad("no_x.safetensors", {"label": lab}, "tensor 'x': missing from the file (expected shape [T, 8])")
    bad("no_label.safetensors", {"x": x}, "tensor 'label': missing from the file (--loss cross_entropy needs label [T] class ids)")
    bad("no_y.safetensors", {"x": x}, "tensor 'y': missing from the file (--loss mse needs y [T, d])", loss=[])
    bad("y_with_ce.safetensors", {"x": x, "label": lab, "y": y},
        "tensor 'y': not read by --loss cross_entropy (which reads x and label); use --loss mse or remove it")
    bad("extra.safetensors", {"x": x, "label": lab, "weights": y}, "tensor 'weights': unknown name; expected x [T, d_in] and label [T]")
    bad("x_shape.safetensors", {"x": x[:, :5], "label": lab}, "tensor 'x': expected shape [T, 8] (d_in of the model), found [10, 5]")
    bad("x_rank.safetensors", {"x": x.reshape(-1), "label": lab}, "tensor 'x': expected shape [T, 8] (d_in of the model), found [80]")
    bad("y_shape.safetensors", {"x": x, "y": y[:, :3]}, "tensor 'y': expected shape [10, 4] (T of x, d of the model), found [10, 3]", loss=[])
    bad("y_rows.safetensors", {"x": x, "y": y[:9]}, "tensor 'y': expected shape [10, 4] (T of x, d of the model), found [9, 4]", loss=[])
    bad("label_rows.safetensors", {"x": x, "label": lab[:7]}, "tensor 'label': expected shape [10] (T of x), found [7]")
    hi = lab.copy()
    hi[6] = 4
    bad("label_high.safetensors", {"x": x, "label": hi}, "tensor 'label': expected class ids in 0..3 (d = 4 outputs), found 4 at index [6]")
    lo = lab.astype(np.int32)
    lo[2] = -1
    bad("label_neg.safetensors", {"x": x, "label": lo}, "tensor 'label': expected class ids in 0..3 (d = 4 outputs), found -1 at index [2]")
    bad("label_float.safetensors", {"x": x, "label": lab.astype(np.float32)},
        "tensor 'label': expected an integer dtype (I64, I32, I16, I8, U8, ...) for class ids, found F32")
    xn = x.copy()
    xn[3, 5] = np.nan
    bad("x_nan.safetensors", {"x": xn, "label": lab}, "tensor 'x': expected finite values, found nan at index [3, 5]")
    yi = y.copy()
    yi[1, 2] = -np.inf
    bad("y_inf.safetensors", {"x": x, "y": yi}, "tensor 'y': expected finite values, found -inf at index [1, 2]", loss=[])
    bad("x_int.safetensors", {"x": np.zeros((10, D_IN), np.int32), "label": lab},
        "tensor 'x': expected a floating-point dtype (F64, F32, F16 or BF16), found I32")
    bad("t0.safetensors", {"x": np.zeros((0, D_IN), np.float32), "label": np.zeros(0, np.int64)},
        "tensor 'x': no tokens (shape [0, 8]): expected T >= 1")
    # (The safetensors reader's own wording is checked by tests/cli; here: one line naming the file.)
    open(c.path("empty.safetensors"), "wb").close()
    c.train_error(["--model", m, "--data", "empty.safetensors", "--output", "out.safetensors"] + ce,
                  "file 'empty.safetensors': too short", exact=False)
    c.train_error(["--model", m, "--data", "absent.safetensors", "--output", "out.safetensors"] + ce,
                  "file 'absent.safetensors': cannot open", exact=False)
    # Bad validation data is reported the same way, before any training.
    make_data(c, "good.safetensors")
    st.save(c.path("val_bad.safetensors"), {"x": x, "label": hi})
    c.train_error(["--model", m, "--data", "good.safetensors", "--val", "val_bad.safetensors", "--output", "out.safetensors"] + ce,
                  "file 'val_bad.safetensors': tensor 'label': expected class ids in 0..3 (d = 4 outputs), found 4 at index [6]")
    # An existing output is left as it was when the run fails.
    with open(c.path("keep.safetensors"), "wb") as f:
        f.write(b"previous content")
    c.train_error(["--model", m, "--data", "label_high.safetensors", "--output", "keep.safetensors"] + ce,
                  "file 'label_high.safetensors': tensor 'label': expected class ids in 0..3 (d = 4 outputs), found 4 at index [6]",
                  output="none")
    check(open(c.path("keep.safetensors"), "rb").read() == b"previous content", "the existing output file was changed")


def case_model(c):
    m = make_model(c)
    d = make_data(c, "d.safetensors")
    ce = ["--loss", "cross_entropy"]
    base = ["--model", m, "--data", d, "--output", "out.safetensors"] + ce
    c.train_error(base + ["--train", "angle.U,stretch.W"],
                  "option --train: 'stretch.W' is not a tensor of the model 'm.safetensors' (variant 'radargate'); expected some of "
                  "lora.A,lora.B,lora.scale,map.M,angle.Wx,angle.Wv,angle.Wc,angle.U,angle.bias,stretch.Wg,stretch.bg,stretch.ws")
    u = make_model(c, "u.safetensors", variant="uniform")
    c.train_error(["--model", u, "--data", d, "--output", "out.safetensors"] + ce,
                  "option --train: the model 'u.safetensors' (variant 'uniform') has no gate or angle tensors, which is what is "
                  "trained by default; name the tensors to train, e.g. --train lora.A,lora.B")
    make_data(c, "not_a_model.safetensors", labels=False, targets=True)
    c.train_error(["--model", "not_a_model.safetensors", "--data", d, "--output", "out.safetensors"] + ce,
                  "file 'not_a_model.safetensors': missing __metadata__ entry 'radargate.config' (the layer configuration, a JSON object "
                  "with at least \"variant\"); not a radargate model file?")
    # Divergence: no output, the epoch and step named.
    c.train_error(base + ["--train", "lora.B", "--lr", "1e200", "--optimizer", "sgd", "--momentum", "0"],
                  "training diverged: the ", exact=False, stdout_ok=True)
    p = c.rg("train", *base, "--train", "lora.B", "--lr", "1e200", "--optimizer", "sgd", "--momentum", "0")
    msg = p.stderr.strip()
    check(" at epoch 1, step " in msg and "of 3 (global step" in msg, "divergence message names no epoch and step: %r" % msg)
    check("-nan" not in msg, "divergence message prints a NaN's sign: %r" % msg)
    # States: wrong settings, nothing left to do, not a state.
    c.ok("train", *base, "--epochs", 3, "--stop-after", 1, "--state", "s.safetensors", "--lr", "0.01")
    os.remove(c.path("out.safetensors"))
    c.train_error(base + ["--epochs", 3, "--resume", "s.safetensors", "--lr", "0.02"],
                  "file 's.safetensors': training state: setting 'lr' was 0.01 in the saved run, this run has 0.02; "
                  "resume with the same settings")
    c.train_error(base + ["--epochs", 3, "--resume", "s.safetensors", "--lr", "0.01", "--batch", "16"],
                  "file 's.safetensors': training state: setting 'batch' was 32 in the saved run, this run has 16; "
                  "resume with the same settings")
    c.train_error(base + ["--epochs", 1, "--resume", "s.safetensors", "--lr", "0.01"],
                  "file 's.safetensors': training state: setting 'total_steps' was 9 in the saved run, this run has 3; "
                  "resume with the same settings")
    make_data(c, "d_other.safetensors", seed=5)
    c.train_error(["--model", m, "--data", "d_other.safetensors", "--output", "out.safetensors"] + ce +
                  ["--epochs", 3, "--resume", "s.safetensors", "--lr", "0.01"],
                  "file 's.safetensors': training state: setting 'train_data_fnv1a' was ", exact=False)
    c.train_error(base + ["--epochs", 3, "--resume", m, "--lr", "0.01"],
                  "file 'm.safetensors': missing __metadata__ entry 'radargate.train_state'; not a training state written by "
                  "'radargate train --state'?")


def train_args(m, d, out, *extra, epochs=8, seed=7):
    return ["train", "--model", m, "--data", d, "--output", out, "--loss", "cross_entropy", "--epochs", epochs, "--lr", 0.05,
            "--schedule", "cosine", "--warmup", 3, "--seed", seed, *extra]


def case_end_to_end(c):
    m = make_model(c)
    d = make_data(c, "d.safetensors", T=200, seed=1)
    v = make_data(c, "v.safetensors", T=100, seed=2)
    # Experts and a softmax gate together on a linearly separable 4-class task: the loss must fall
    # well below log(4) = 1.386 (a fixed bar: a regression that breaks learning fails here).
    sm = make_model(c, "sm.safetensors", variant="softmax")
    args = train_args(sm, d, "a.safetensors", "--val", v, "--train", "lora.A,lora.B,stretch.Wg,stretch.bg",
                      "--log", "log.jsonl", "--clip", 5, "--batch", 16, epochs=10)
    p = c.ok(*args)
    lines = [json.loads(l) for l in open(c.path("log.jsonl"))]
    check(len(lines) == 10, "expected 10 log lines, found %d" % len(lines))
    for k in ("epoch", "steps", "train_loss", "val_loss", "val_accuracy", "lr", "tokens_per_s", "seconds"):
        check(k in lines[0], "log line has no %r: %r" % (k, lines[0]))
    first, last = lines[0]["train_loss"], lines[-1]["train_loss"]
    print("end-to-end: train loss %.4f -> %.4f, val loss %.4f, val accuracy %.3f"
          % (first, last, lines[-1]["val_loss"], lines[-1]["val_accuracy"]))
    check(last < 0.2, "train loss after 10 epochs: expected < 0.2, found %.4f" % last)
    check(lines[-1]["val_accuracy"] > 0.85, "val accuracy: expected > 0.85, found %.3f" % lines[-1]["val_accuracy"])
    check(p.stdout.count("epoch ") >= 10 and "\r" not in p.stdout and p.stderr == "", "plain per-epoch lines expected: %r" % p.stdout)
    # Default --train: gate and angles only; the experts stay as they were.
    c.ok(*train_args(m, d, "g.safetensors"))
    before, _ = st.load(c.path(m))
    after, meta = st.load(c.path("g.safetensors"))
    check("radargate.config" in meta, "the output is not a model file")
    for k in before:
        same = np.array_equal(before[k], after[k])
        frozen = k in ("lora.A", "lora.B", "lora.scale")
        check(same == frozen, "tensor %s: %s" % (k, "changed although frozen" if frozen else "not trained"))
    # Same seed -> same bytes; another seed -> other bytes; 2 threads is deterministic too.
    c.ok(*train_args(sm, d, "a2.safetensors", "--val", v, "--train", "lora.A,lora.B,stretch.Wg,stretch.bg", "--log", "log2.jsonl",
                     "--clip", 5, "--batch", 16, epochs=10))
    check(open(c.path("a.safetensors"), "rb").read() == open(c.path("a2.safetensors"), "rb").read(), "same seed, other bytes")
    c.ok(*train_args(m, d, "t1.safetensors", "--threads", 2))
    c.ok(*train_args(m, d, "t2.safetensors", "--threads", 2))
    check(open(c.path("t1.safetensors"), "rb").read() == open(c.path("t2.safetensors"), "rb").read(), "2 threads: other bytes")
    c.ok(*train_args(m, d, "s8.safetensors", seed=8))
    check(open(c.path("g.safetensors"), "rb").read() != open(c.path("s8.safetensors"), "rb").read(), "another seed, same bytes")
    # Stopped after epoch 3 and resumed = uninterrupted (model and state), for both optimizers.
    for opt in (["--optimizer", "adamw"], ["--optimizer", "sgd", "--momentum", "0.8"]):
        c.ok(*train_args(m, d, "full.safetensors", "--state", "full_state.safetensors", *opt))
        c.ok(*train_args(m, d, "part.safetensors", "--state", "part_state.safetensors", "--stop-after", 3, *opt))
        c.ok(*train_args(m, d, "resumed.safetensors", "--resume", "part_state.safetensors", "--state", "part_state.safetensors", *opt))
        for a, b in (("full.safetensors", "resumed.safetensors"), ("full_state.safetensors", "part_state.safetensors")):
            check(open(c.path(a), "rb").read() == open(c.path(b), "rb").read(), "%s: %s and %s differ" % (opt[1], a, b))
        check(open(c.path("part.safetensors"), "rb").read() != open(c.path("full.safetensors"), "rb").read(),
              "the stopped run's output equals the full run's")
    # The reference backend trains too, and the result is a model that run and verify read.
    c.ok(*train_args(m, d, "ref.safetensors", "--backend", "reference", epochs=2))
    st.save(c.path("in.safetensors"), {"x": np.zeros((2, D_IN), np.float32)})
    c.ok("run", "--model", "a.safetensors", "--input", "in.safetensors", "--output", "y.safetensors")
    # mse on an F64 model.
    m64 = make_model(c, "m64.safetensors", extra=("--dtype", "F64"))
    make_data(c, "r.safetensors", T=120, labels=False, targets=True, dtype=np.float64)
    p = c.ok("train", "--model", m64, "--data", "r.safetensors", "--output", "r_out.safetensors", "--epochs", 6, "--lr", 0.03,
             "--train", "lora.A,lora.B,stretch.Wg", "--log", "r.jsonl")
    r = [json.loads(l) for l in open(c.path("r.jsonl"))]
    print("end-to-end mse (F64): train loss %.4f -> %.4f" % (r[0]["train_loss"], r[-1]["train_loss"]))
    check(r[-1]["train_loss"] < 0.5 * r[0]["train_loss"], "mse loss did not halve: %r" % [e["train_loss"] for e in r])
    out, _ = st.load(c.path("r_out.safetensors"))
    check(out["lora.A"].dtype == np.float64, "F64 model written as %s" % out["lora.A"].dtype)
    c.checks += 1


def case_tty(c):
    m = make_model(c)
    d = make_data(c, "d.safetensors", T=64)
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(c.dir)
        os.execv(c.bin, [c.bin] + [str(a) for a in train_args(m, d, "o.safetensors", epochs=2)])
    out = b""
    while True:
        try:
            r, _, _ = select.select([fd], [], [], 60)
            if not r:
                break
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    check(os.WEXITSTATUS(status) == 0, "train on a terminal failed: %r" % text)
    check("\r" in text and "[" in text and "tok/s" in text and "left" in text, "no progress bar on a terminal: %r" % text)
    check("epoch 2/2: train loss" in text, "no epoch line on a terminal: %r" % text)
    c.checks += 1


def case_bench(c):
    """radargate bench --train-step: one JSON line, a finite loss, its usage errors."""
    base = ["bench", "--variant", "radargate", "--tokens", 16, "--experts", 3, "--d-in", 32, "--d", 32, "--rank", 4,
            "--angle-rank", 4, "--repeat", 2]
    j = json.loads(c.ok(*base, "--train-step", "--json").stdout)
    check(j["train_step"] is True and j["optimizer"] == "adamw" and np.isfinite(j["last_loss"]), "bench --train-step: %r" % j)
    check(j["trained"] == "map.M,angle.Wx,angle.Wv,angle.Wc,angle.U,angle.bias,stretch.Wg,stretch.bg,stretch.ws",
          "bench --train-step trains %r" % j["trained"])
    j = json.loads(c.ok(*base, "--train-step", "--train", "lora.A,lora.B", "--backend", "reference", "--json").stdout)
    check(j["trained"] == "lora.A,lora.B" and j["backend"] == "reference", "bench --train: %r" % j)
    u = "radargate bench: error: "
    c.expect_error(base + ["--train", "lora.A"], u + "option --train needs --train-step", code=2, output="none")
    c.expect_error(base + ["--train-step", "--backward"], u + "option --backward: a --train-step already runs backward",
                   code=2, output="none")
    c.expect_error(base + ["--train-step", "--train", "angle.X"],
                   u + "option --train: 'angle.X' is not a tensor of a 'radargate' model; expected some of "
                   "lora.A,lora.B,lora.scale,map.M,angle.Wx,angle.Wv,angle.Wc,angle.U,angle.bias,stretch.Wg,stretch.bg,"
                   "stretch.ws", output="none")


def case_layers(c):
    """A file of many layers: --layer picks the one to train; the output is the whole file with that
    layer trained and every other layer's tensors unchanged; without --layer, one error naming them."""
    a = make_model(c, "a.safetensors", variant="radargate")
    b = make_model(c, "b.safetensors", variant="softmax")
    tensors, meta = {}, []
    for name, path in (("model.layers.0.q_proj", a), ("model.layers.0.v_proj", b)):
        t, md = st.load(c.path(path))
        for k, v in t.items():
            tensors[name + "." + k] = v
        meta.append({"name": name, "config": json.loads(md["radargate.config"])})
    st.save(c.path("set.safetensors"), tensors, {"radargate.layers": json.dumps(meta)})
    d = make_data(c, "d.safetensors", T=64, seed=1)
    c.train_error(["--model", "set.safetensors", "--data", d, "--output", "out.safetensors"],
                  "", exact=False)
    p = c.rg("train", "--model", "set.safetensors", "--data", d, "--output", "x.safetensors")
    check("model.layers.0.q_proj" in p.stderr and "model.layers.0.v_proj" in p.stderr,
          "the error must list the layers: %r" % p.stderr)
    c.ok("train", "--model", "set.safetensors", "--layer", "model.layers.0.v_proj", "--data", d,
         "--output", "out.safetensors", "--loss", "cross_entropy", "--epochs", 2, "--lr", 0.05)
    out, md = st.load(c.path("out.safetensors"))
    check(sorted(out) == sorted(tensors), "the output must hold every tensor of the input: %s" % sorted(out))
    check([e["name"] for e in json.loads(md["radargate.layers"])] == [e["name"] for e in meta],
          "the output must keep the layer list")
    for k in tensors:
        same = np.array_equal(np.asarray(out[k]), np.asarray(tensors[k]))
        trained = k.startswith("model.layers.0.v_proj.stretch.")
        check(same != trained, "%s: expected %s" % (k, "trained" if trained else "unchanged"))
    c.checks += 3
    st.save(c.path("in.safetensors"), {"x": st.load(c.path(d))[0]["x"]})
    c.ok("run", "--model", "out.safetensors", "--layer", "model.layers.0.v_proj", "--input", "in.safetensors",
         "--output", "y.safetensors")


def case_cuda(c):
    """--backend cuda: refused in a build without CUDA (usage error, nothing written); in a CUDA build
    without a device, one error line and nothing written; with a device, the run agrees with the
    cpu backend (float32 tolerance), repeats its bytes, and refuses an F64 model."""
    m = make_model(c)
    d = make_data(c, "d.safetensors", T=200, seed=1)
    u = "radargate train: error: "
    args = train_args(m, d, "out.safetensors", "--backend", "cuda", "--state", "st.safetensors", "--log", "log.jsonl",
                      epochs=4)
    c.expect_error(["train", "--model", m, "--data", d, "--output", "out.safetensors", "--backend", "gpu"],
                   u + "option --backend: expected reference | cpu | cuda, found 'gpu'", code=2)
    if not c.cuda_build:
        c.expect_error(args, u + "option --backend: cuda needs a build with the CUDA toolkit (cmake -DRADARGATE_ENABLE_CUDA=ON)",
                       code=2)
        return
    c.expect_error(["train", "--model", m, "--data", d, "--output", "out.safetensors", "--backend", "cuda",
                    "--threads", "2"], u + "option --threads needs --backend cpu", code=2)
    m64 = make_model(c, "m64.safetensors", extra=("--dtype", "F64"))
    c.train_error(["--model", m64, "--data", d, "--output", "out.safetensors", "--backend", "cuda"],
                  "option --backend: cuda trains in float32, and the model '%s' is F64; use --backend cpu or reference, "
                  "or a model file of F32, F16 or BF16" % m64)
    before = sorted(os.listdir(c.dir))
    p = c.rg(*args)
    if p.returncode != 0:
        # A CUDA build on a machine without a usable device: one line, nothing written.
        check(sorted(os.listdir(c.dir)) == before, "a failed --backend cuda run left files: %s" % sorted(os.listdir(c.dir)))
        c.expect_error(args, u + "--backend cuda: expected a CUDA device, found none", exact=False)
        return
    check(p.stdout.splitlines()[0].find("backend cuda, ") > 0, "first line names the backend: %r" % p.stdout)
    for f in ("out.safetensors", "st.safetensors", "log.jsonl"):
        check(os.path.exists(c.path(f)), "--backend cuda wrote no %s" % f)
    c.ok(*train_args(m, d, "again.safetensors", "--backend", "cuda", epochs=4))
    check(open(c.path("out.safetensors"), "rb").read() == open(c.path("again.safetensors"), "rb").read(),
          "--backend cuda: two runs with the same seed differ")
    # Against the cpu backend with SGD (AdamW divides by the gradients' own size, which would blow up
    # float32 rounding in entries whose gradient is nearly zero).
    sgd = ["train", "--model", m, "--data", d, "--loss", "cross_entropy", "--epochs", 4, "--optimizer", "sgd", "--lr", 0.01,
           "--seed", 7]
    c.ok(*sgd, "--output", "sgd_cuda.safetensors", "--backend", "cuda")
    c.ok(*sgd, "--output", "sgd_cpu.safetensors", "--backend", "cpu")
    init = st.load(c.path(m))[0]
    gpu, cpu = st.load(c.path("sgd_cuda.safetensors"))[0], st.load(c.path("sgd_cpu.safetensors"))[0]
    for name in cpu:
        a, b, s0 = gpu[name].astype(np.float64), cpu[name].astype(np.float64), init[name].astype(np.float64)
        moved = np.linalg.norm(b - s0)
        if moved == 0:
            check(np.array_equal(a, b), "%s: frozen on cpu, changed on cuda" % name)
            continue
        e = np.linalg.norm(a - b) / moved
        check(e <= 5e-2, "%s: |cuda - cpu| / |cpu update| = %.3g" % (name, e))
    c.checks += 4


CASES = {"cuda": case_cuda, "layers": case_layers, "usage": case_usage, "bench": case_bench, "data": case_data, "model": case_model, "end_to_end": case_end_to_end, "tty": case_tty}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--cuda", default="OFF", help="ON when the tool was built with CUDA (case cuda)")
    ap.add_argument("case", choices=sorted(CASES))
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    c = Case(os.path.abspath(a.radargate), a.workdir, a.case)
    c.cuda_build = a.cuda.upper() in ("ON", "1", "TRUE", "YES")
    try:
        CASES[a.case](c)
    except Failure as e:
        print("FAILED (%s): %s" % (a.case, e))
        sys.exit(1)
    print("%s: %d checks passed" % (a.case, c.checks))


if __name__ == "__main__":
    main()
