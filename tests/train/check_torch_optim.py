#!/usr/bin/python3
"""radargate::train's AdamW and SGD (with clipping and the schedules) against torch.optim.

    check_torch_optim.py OPTIM_REPLAY_BINARY WORKDIR

For each configuration, draws 100 random gradient steps for two float64 tensors, feeds the same
sequence to torch.optim.AdamW / torch.optim.SGD (after torch.nn.utils.clip_grad_norm_, with the
learning rate of each step set from the documented schedule formula) and to the library through
tests/train/optim_replay.cpp, and requires every parameter and state value to agree to 1e-12
relative after 100 steps.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "python"))
import safetensors_np  # noqa: E402

STEPS = 100
TOL = 1e-12


def schedule_lr(kind, lr, warmup, total, s):
    if s < warmup:
        return lr * (s + 1) / warmup
    if kind == "constant":
        return lr
    span = total - warmup
    if span <= 0:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / span)))


CONFIGS = [
    {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-2, "schedule": "constant", "warmup": 0, "clip": 0.0},
    {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
     "schedule": "cosine", "warmup": 10, "clip": 1.0},
    {"optimizer": "adamw", "lr": 5e-2, "weight_decay": 0.0, "schedule": "cosine", "warmup": 0, "clip": 0.0},
    {"optimizer": "sgd", "lr": 1e-2, "weight_decay": 0.0, "schedule": "constant", "warmup": 0, "clip": 0.0},
    {"optimizer": "sgd", "lr": 2e-2, "weight_decay": 1e-3, "momentum": 0.9, "schedule": "cosine", "warmup": 5,
     "clip": 2.0},
    {"optimizer": "sgd", "lr": 1e-2, "weight_decay": 1e-4, "momentum": 0.5, "dampening": 0.1,
     "schedule": "constant", "warmup": 3, "clip": 0.0},
    {"optimizer": "sgd", "lr": 1e-2, "weight_decay": 0.0, "momentum": 0.9, "nesterov": True,
     "schedule": "cosine", "warmup": 0, "clip": 0.5},
]


def run_torch(cfg, p0, p1, g0, g1):
    t0 = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor(p1, dtype=torch.float64, requires_grad=True)
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW([t0, t1], lr=cfg["lr"], betas=(cfg.get("beta1", 0.9), cfg.get("beta2", 0.999)),
                                eps=cfg.get("eps", 1e-8), weight_decay=cfg["weight_decay"], foreach=False)
    else:
        opt = torch.optim.SGD([t0, t1], lr=cfg["lr"], momentum=cfg.get("momentum", 0.0),
                              dampening=cfg.get("dampening", 0.0), weight_decay=cfg["weight_decay"],
                              nesterov=cfg.get("nesterov", False), foreach=False)
    lrs = []
    for s in range(STEPS):
        t0.grad = torch.tensor(g0[s], dtype=torch.float64)
        t1.grad = torch.tensor(g1[s], dtype=torch.float64)
        if cfg["clip"] > 0:
            torch.nn.utils.clip_grad_norm_([t0, t1], cfg["clip"])
        lr = schedule_lr(cfg["schedule"], cfg["lr"], cfg["warmup"], STEPS, s)
        for group in opt.param_groups:
            group["lr"] = lr
        lrs.append(lr)
        opt.step()
    state = {}
    for name, t in (("p0", t0), ("p1", t1)):
        st = opt.state[t]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                state[key + "." + name] = st[key].detach().numpy()
    return t0.detach().numpy(), t1.detach().numpy(), np.array(lrs), state


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if a.size else 0.0


def main():
    binary, workdir = sys.argv[1], sys.argv[2]
    os.makedirs(workdir, exist_ok=True)
    rng = np.random.default_rng(2024)
    worst = 0.0
    failures = []
    for i, cfg in enumerate(CONFIGS):
        p0, p1 = rng.standard_normal(13), rng.standard_normal((3, 4)).reshape(-1)
        # Gradients of varied size, with a few exact zeros (Adam's denominator at eps).
        g0 = rng.standard_normal((STEPS, 13)) * rng.choice([1e-3, 1.0, 5.0], size=(STEPS, 1))
        g1 = rng.standard_normal((STEPS, 12))
        g0[:, 3] = 0.0
        path_in = os.path.join(workdir, "optim_in_%d.safetensors" % i)
        path_out = os.path.join(workdir, "optim_out_%d.safetensors" % i)
        safetensors_np.save(path_in, {"p0": p0, "p1": p1, "g0": g0, "g1": g1}, {"options": json.dumps(cfg)})
        subprocess.run([binary, path_in, path_out], check=True)
        lib, _ = safetensors_np.load(path_out)
        q0, q1, lrs, state = run_torch(cfg, p0, p1, g0, g1)
        errs = {"p0": rel_err(lib["p0"], q0), "p1": rel_err(lib["p1"], q1), "lr": rel_err(lib["lr"], lrs)}
        for k, v in state.items():
            errs[k] = rel_err(lib[k], v)
        e = max(errs.values())
        worst = max(worst, e)
        moved = float(np.max(np.abs(q0 - p0)))
        print("%-6s %-8s warmup %2d clip %-4g: max relative difference %.3g over %s (params moved by up to %.3g)"
              % (cfg["optimizer"], cfg["schedule"], cfg["warmup"], cfg["clip"], e, ",".join(sorted(errs)), moved))
        if not e <= TOL or moved < 1e-3:
            failures.append((cfg, errs))
    if failures:
        for cfg, errs in failures:
            print("FAILED:", json.dumps(cfg), errs)
        sys.exit(1)
    print("torch.optim agreement: worst relative difference %.3g over %d configurations x %d steps (limit %g)"
          % (worst, len(CONFIGS), STEPS, TOL))


if __name__ == "__main__":
    main()
