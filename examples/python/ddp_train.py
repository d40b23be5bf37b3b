#!/usr/bin/env python3
"""Data-parallel training of a RadarGate layer with torch.nn.parallel.DistributedDataParallel.

Every process holds the same layer (same seed) and trains on its own shard of each batch; DDP
averages the gradients across processes after each backward, so every process takes the same
AdamW step as one process would on the whole batch.

    python3 ddp_train.py                      # 2 processes on this machine, gloo, CPU
    python3 ddp_train.py --check              # ... then one process on the combined batches, and
                                              #     compare the parameters (exit 1 if they differ)
    torchrun --nproc-per-node 2 ddp_train.py  # the same, started by torchrun (also across machines:
                                              # docs/PYTHON.md)

Options: --world-size, --steps, --batch (the combined batch), --dtype float32|float64, --save FILE
(rank 0 writes the trained layer as a model file that `radargate run` reads).
"""

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from radargate.torch import RadarGate

SHAPE = dict(variant="radargate", d_in=16, d=12, experts=4, rank=3, seed=1)


def batches(args, dtype):
    """The combined batches (x, target) of every step, the same in every process."""
    g = torch.Generator().manual_seed(1234)
    teacher = torch.randn(SHAPE["d"], SHAPE["d_in"], generator=g, dtype=dtype) / SHAPE["d_in"] ** 0.5
    out = []
    for _ in range(args.steps):
        x = torch.randn(args.batch, SHAPE["d_in"], generator=g, dtype=dtype)
        out.append((x, torch.tanh(x @ teacher.T)))
    return out


def make(args, dtype):
    model = RadarGate(**SHAPE, dtype=dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    return model, opt


def train(model, opt, data, shard):
    """args.steps AdamW steps on the mean squared error; `shard(x)` picks this process's rows."""
    for x, t in data:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(shard(x)), shard(t))
        loss.backward()
        opt.step()
    return loss.item()


def worker(rank, world, args, init):
    """One process of the data-parallel run. `init` is None under torchrun (env:// then)."""
    torch.set_num_threads(args.threads)  # the library's threads follow torch's
    backend = "nccl" if torch.cuda.is_available() and args.nccl else "gloo"
    if init is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    if backend == "nccl":  # one GPU per process; needs the package's CUDA backend (docs/PYTHON.md)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        model = RadarGate(**SHAPE, dtype=dtype).to(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
        ddp = DDP(model, device_ids=[device.index])
        data = [(x.to(device), t.to(device)) for x, t in batches(args, dtype)]
    else:
        model, opt = make(args, dtype)
        ddp = DDP(model)
        data = batches(args, dtype)
    per = args.batch // world
    loss = train(ddp, opt, data, lambda a: a[rank * per:(rank + 1) * per])
    print(f"rank {rank}/{world}: {args.steps} steps, last shard loss {loss:.6f}", flush=True)
    if rank == 0 and args.out:
        torch.save({n: p.detach().cpu().clone() for n, p in model.state_dict().items()}, args.out)
    if rank == 0 and args.save:
        model.save(args.save)
        print(f"rank 0: wrote {args.save}", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="the combined batch, split evenly across processes")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    ap.add_argument("--threads", type=int, default=1, help="torch (and radargate) threads per process")
    ap.add_argument("--nccl", action="store_true", help="use NCCL and one GPU per process when CUDA is available "
                    "(needs the package's CUDA backend, float32: --dtype float32)")
    ap.add_argument("--check", action="store_true",
                    help="compare with one process on the combined batches; exit 1 on a difference")
    ap.add_argument("--save", help="rank 0 writes the trained layer to this model file")
    args = ap.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        args.out = None
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, None)
        return 0
    if args.world_size < 1 or args.batch % args.world_size:
        ap.error(f"--batch ({args.batch}) must be a multiple of --world-size ({args.world_size})")
    with tempfile.TemporaryDirectory() as tmp:
        args.out = os.path.join(tmp, "ddp.pt")
        init = "file://" + os.path.join(tmp, "rendezvous")
        torch.multiprocessing.spawn(worker, args=(args.world_size, args, init), nprocs=args.world_size, join=True)
        if not args.check:
            return 0
        ddp_params = torch.load(args.out)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, opt = make(args, dtype)
    loss = train(model, opt, batches(args, dtype), lambda a: a)
    worst, worst_name = 0.0, None
    for n, p in model.state_dict().items():
        q = ddp_params[n]
        err = float((p - q).abs().max() / max(float(p.abs().max()), 1e-300))
        if err >= worst:
            worst, worst_name = err, n
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    ok = worst <= tol
    print(f"single process on the combined batch: loss {loss:.6f}; largest relative difference of a parameter "
          f"after {args.steps} steps: {worst:.3e} ({worst_name}), tolerance {tol:g}: {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
