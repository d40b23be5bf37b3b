"""Shared parts of the three experiments (docs/SCIENCE.md): the data, expert pre-training, pool
assembly, and calls to the radargate tool.

Data: scikit-learn's bundled handwritten digits (sklearn.datasets.load_digits: 1797 images of
8x8 pixels, classes 0-9, shipped inside the package; nothing is downloaded). Features are the 64
pixels, standardised with the training split's mean and standard deviation; one fixed stratified
split, 70% train / 30% test. The layer's d = 10 outputs are the class logits.

Experts: one LoRA (rank R) per pair of classes (a, b), pre-trained with
`radargate train --train lora.A,lora.B --loss cross_entropy` on a one-expert model (variant sum)
on the training images of classes a and b only. The pool of N experts of a seed is the first N
pairs of a seeded permutation of the 45 pairs.

Gates: every tensor the variant reads besides the experts, initialised so the untrained layer
mixes the unrotated experts: stretch.Wg random (sd 1/sqrt(d_in), so a top-k gate does not start
on a tie, which it would never leave), stretch.bg and stretch.ws 0; angle.U 0, so every angle
starts at 0, with angle.Wx, Wv, Wc random so that U's gradient is not 0; map.M 0 (the mean over
the other experts).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "python"))
import safetensors_np as st  # noqa: E402

D_IN, D, R, K_ANGLE = 64, 10, 4, 4
P_PLANES = D // 2
PAIRS = [(a, b) for a in range(10) for b in range(a + 1, 10)]

ROTATING = {"rotation_only", "radargate"}
GATE_TENSORS = {
    "sum": [], "uniform": [], "static": ["stretch.bg"],
    "softmax": ["stretch.Wg", "stretch.bg"], "topk": ["stretch.Wg", "stretch.bg"],
    "stretch_only": ["stretch.Wg", "stretch.bg", "stretch.ws"],
    "rotation_only": [], "radargate": ["stretch.Wg", "stretch.bg", "stretch.ws"],
}


class Runner:
    """Runs the radargate tool, records the time spent, prints progress."""

    def __init__(self, binary, workdir, threads=1, quiet=False):
        self.bin = os.path.abspath(binary)
        self.dir = os.path.abspath(workdir)
        self.threads = threads
        self.quiet = quiet
        os.makedirs(self.dir, exist_ok=True)
        self.calls = 0
        self.start = time.time()

    def path(self, *parts):
        p = os.path.join(self.dir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def rg(self, *args, ok_codes=(0,)):
        self.calls += 1
        p = subprocess.run([self.bin] + [str(a) for a in args], capture_output=True, text=True)
        if p.returncode not in ok_codes:
            raise RuntimeError("radargate %s failed (%d): %s" % (" ".join(map(str, args)), p.returncode, p.stderr))
        return p

    def log(self, msg):
        if not self.quiet:
            print("[%6.1f s] %s" % (time.time() - self.start, msg), flush=True)


# --- data ----------------------------------------------------------------------------------------

def digits(limit=None):
    """-> dict with x_train, y_train, x_test, y_test (float32 / int64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1.0
    f = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    data = {"x_train": f(xtr), "y_train": ytr.astype(np.int64), "x_test": f(xte), "y_test": yte.astype(np.int64)}
    if limit:
        data = {k: v[:limit] for k, v in data.items()}
    return data


def write_data(path, x, labels=None, targets=None):
    t = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if labels is not None:
        t["label"] = np.ascontiguousarray(labels, dtype=np.int64)
    if targets is not None:
        t["y"] = np.ascontiguousarray(targets, dtype=np.float32)
    st.save(path, t)
    return path


# --- models --------------------------------------------------------------------------------------

def config(variant, map_mode="learned", bound="pi_tanh", topk=2):
    c = {"variant": variant}
    if variant in ROTATING:
        c.update({"map": map_mode, "bound": bound, "pairing": "adjacent"})
    if variant == "topk":
        c["topk"] = topk
    return c


def save_model(path, cfg, tensors):
    st.save(path, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
            {"radargate.config": json.dumps(cfg)})
    return path


def pool_model(path, variant, A, B, seed, map_mode="learned", bound="pi_tanh", topk=2):
    """A model of `variant` over the frozen experts A [N, R, D_IN], B [N, D, R]."""
    N = A.shape[0]
    rng = np.random.default_rng(1000 + seed)
    cfg = config(variant, map_mode, bound, min(topk, N))
    t = {"lora.A": A, "lora.B": B}
    for name in GATE_TENSORS[variant]:
        t[name] = np.zeros({"stretch.Wg": (N, D_IN), "stretch.bg": (N,), "stretch.ws": (D,)}[name])
    if "stretch.Wg" in t:  # random, so that a top-k gate does not start on a tie (which it never leaves)
        t["stretch.Wg"] = rng.standard_normal((N, D_IN)) / np.sqrt(D_IN)
    if variant in ROTATING:
        if map_mode == "learned":
            t["map.M"] = np.zeros((N, N))
        t["angle.Wx"] = rng.standard_normal((K_ANGLE, D_IN)) / np.sqrt(D_IN)
        t["angle.Wv"] = rng.standard_normal((K_ANGLE, D)) / np.sqrt(D) * 0.1
        t["angle.Wc"] = rng.standard_normal((K_ANGLE, D)) / np.sqrt(D) * 0.1
        t["angle.U"] = np.zeros((P_PLANES, K_ANGLE))
        t["angle.bias"] = np.zeros((N, P_PLANES))
    return save_model(path, cfg, t)


def trainable(variant):
    """The tensors `radargate train` learns by default for a pool model of this variant."""
    names = list(GATE_TENSORS[variant])
    if variant in ROTATING:
        names = ["map.M", "angle.Wx", "angle.Wv", "angle.Wc", "angle.U", "angle.bias"] + names
    return names


# --- experts -------------------------------------------------------------------------------------

def expert_pool(run, data, seed, n, epochs=30):
    """Pre-trains (or reuses) the first n experts of `seed`; -> A [n, R, D_IN], B [n, D, R], pairs."""
    order = np.random.default_rng(seed).permutation(len(PAIRS))
    As, Bs, pairs = [], [], []
    for i in range(n):
        a, b = PAIRS[order[i]]
        out = run.path("experts", "seed%d" % seed, "pair_%d_%d.safetensors" % (a, b))
        if not os.path.exists(out):
            rng = np.random.default_rng(10000 * seed + 100 * a + b)
            init = save_model(run.path("experts", "seed%d" % seed, "init_%d_%d.safetensors" % (a, b)), config("sum"), {
                "lora.A": rng.standard_normal((1, R, D_IN)) / np.sqrt(D_IN),
                "lora.B": rng.standard_normal((1, D, R)) * 0.01})
            sel = (data["y_train"] == a) | (data["y_train"] == b)
            dpath = write_data(run.path("experts", "pair_%d_%d.data.safetensors" % (a, b)), data["x_train"][sel],
                               labels=data["y_train"][sel])
            run.rg("train", "--model", init, "--data", dpath, "--output", out, "--train", "lora.A,lora.B",
                   "--loss", "cross_entropy", "--epochs", epochs, "--batch", 16, "--lr", 0.01, "--schedule", "cosine",
                   "--seed", seed, "--threads", run.threads)
        m, _ = st.load(out)
        As.append(m["lora.A"][0])
        Bs.append(m["lora.B"][0])
        pairs.append((a, b))
    return np.stack(As), np.stack(Bs), pairs


# --- training and evaluation of a pool model -------------------------------------------------------

def train_gate(run, model, train_path, test_path, out, loss, seed, epochs, lr, batch=32):
    """-> the last line of the training log (train_loss, val_loss, val_accuracy, ...), or an
    evaluation of the untrained model when the variant has nothing to learn."""
    names = trainable(json.loads(st.load(model)[1]["radargate.config"])["variant"])
    if not names:
        return None
    log = out + ".log.jsonl"
    if os.path.exists(log):
        os.remove(log)
    run.rg("train", "--model", model, "--data", train_path, "--val", test_path, "--output", out, "--loss", loss,
           "--epochs", epochs, "--batch", batch, "--lr", lr, "--schedule", "cosine", "--warmup", 20, "--clip", 5.0,
           "--seed", seed, "--threads", run.threads, "--log", log)
    lines = [json.loads(l) for l in open(log)]
    return lines[-1]


def outputs(run, model, x):
    """The layer's outputs y [T, D] for x, through `radargate run`."""
    inp = run.path("tmp", "x.safetensors")
    outp = run.path("tmp", "y.safetensors")
    write_data(inp, x)
    run.rg("run", "--model", model, "--input", inp, "--output", outp)
    return st.load(outp)[0]["y"].astype(np.float64)


def ce_and_accuracy(y, labels):
    z = y - y.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(len(labels)), labels]))
    return loss, float(np.mean(np.argmax(y, axis=1) == labels))


def outside_share(run, model, x):
    """Share of tokens whose LoRA output `radargate verify` finds outside the cone of the experts'
    outputs (certified)."""
    inp = run.path("tmp", "vx.safetensors")
    write_data(inp, x)
    p = run.rg("verify", "--model", model, "--input", inp, "--json", "--threads", 1, ok_codes=(0, 3))
    j = json.loads(p.stdout)
    return j["sets"]["lora_cone"]["fraction_outside"], j["sets"]["weighted_sum_cone"]["fraction_outside"]


def mean_std(values):
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt(ms, digits=3):
    return "%.*f ± %.*f" % (digits, ms[0], digits, ms[1])
