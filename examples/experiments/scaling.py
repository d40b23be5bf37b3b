#!/usr/bin/python3
"""Experiment (b): scaling the number of LoRAs (docs/SCIENCE.md).

A pool of N frozen experts, each pre-trained on one pair of digit classes, N = 5, 10, 20, 40; the
gate (and, for the rotating variants, the angle generator) is trained for the full 10-class
classification with the experts frozen. Test accuracy against N for uniform, softmax, topk,
stretch_only, rotation_only and radargate, mean ± std over the seeds.

    /usr/bin/python3 examples/experiments/scaling.py --radargate build/radargate [--seeds 3]
        [--workdir /tmp/radargate-experiments] [--results docs/science] [--tiny]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

VARIANTS = ["uniform", "softmax", "topk", "stretch_only", "rotation_only", "radargate"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--radargate", required=True)
    ap.add_argument("--workdir", default="/tmp/radargate-experiments")
    ap.add_argument("--results", default=os.path.join(C.ROOT, "docs", "science"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--sizes", default="5,10,20,40")
    ap.add_argument("--tiny", action="store_true", help="a smoke test: 200 images, N = 2, 3, 1 seed, 2 epochs")
    ap.add_argument("--replot", action="store_true", help="redraw the table and figure from the results' JSON")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.tiny:
        a.seeds, a.epochs, sizes = 1, 2, [2, 3]
    tag = "scaling_tiny" if a.tiny else "scaling"
    if a.replot:
        with open(os.path.join(a.results, tag + ".json")) as f:
            j = json.load(f)
        report(a, j["sizes"], j["seeds"], j["results"], tag)
        return
    run = C.Runner(a.radargate, a.workdir)
    data = C.digits(limit=200 if a.tiny else None)
    tr = C.write_data(run.path("digits_train.safetensors"), data["x_train"], labels=data["y_train"])
    te = C.write_data(run.path("digits_test.safetensors"), data["x_test"], labels=data["y_test"])
    results = {}  # variant -> N -> list over seeds of {test_accuracy, test_loss, train_loss}
    for seed in range(a.seeds):
        A, B, pairs = C.expert_pool(run, data, seed, max(sizes), epochs=2 if a.tiny else 30)
        run.log("seed %d: %d experts ready (pairs %s ...)" % (seed, len(pairs), pairs[:5]))
        for n in sizes:
            for v in VARIANTS:
                model = C.pool_model(run.path("b", "seed%d" % seed, "%s_N%d.safetensors" % (v, n)), v, A[:n], B[:n], seed)
                out = run.path("b", "seed%d" % seed, "%s_N%d.trained.safetensors" % (v, n))
                last = C.train_gate(run, model, tr, te, out, "cross_entropy", seed, a.epochs, a.lr)
                if last is None:  # nothing to learn: evaluate the pool as it is
                    loss, acc = C.ce_and_accuracy(C.outputs(run, model, data["x_test"]), data["y_test"])
                    tl, _ = C.ce_and_accuracy(C.outputs(run, model, data["x_train"]), data["y_train"])
                    r = {"test_accuracy": acc, "test_loss": loss, "train_loss": tl}
                else:
                    r = {"test_accuracy": last["val_accuracy"], "test_loss": last["val_loss"], "train_loss": last["train_loss"]}
                results.setdefault(v, {}).setdefault(str(n), []).append(r)
                run.log("seed %d N %2d %-13s test accuracy %.4f  test loss %.4f  train loss %.4f"
                        % (seed, n, v, r["test_accuracy"], r["test_loss"], r["train_loss"]))
    os.makedirs(a.results, exist_ok=True)
    with open(os.path.join(a.results, tag + ".json"), "w") as f:
        json.dump({"sizes": sizes, "seeds": a.seeds, "epochs": a.epochs, "lr": a.lr, "results": results}, f, indent=1)
    report(a, sizes, a.seeds, results, tag)
    run.log("done: %d tool calls; results in %s" % (run.calls, a.results))


def report(a, sizes, seeds, results, tag):
    """The table (markdown) and the figure of test accuracy against N."""
    lines = ["| variant | " + " | ".join("N = %d" % n for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for v in VARIANTS:
        cells = [C.fmt(C.mean_std([r["test_accuracy"] for r in results[v][str(n)]])) for n in sizes]
        lines.append("| %s | %s |" % (v, " | ".join(cells)))
    table = "\n".join(lines)
    with open(os.path.join(a.results, tag + ".md"), "w") as f:
        f.write("Test accuracy (mean ± std over %d seeds)\n\n%s\n" % (seeds, table))
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for v in VARIANTS:
        ms = [C.mean_std([r["test_accuracy"] for r in results[v][str(n)]]) for n in sizes]
        ax.errorbar(sizes, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=v)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlabel("N (frozen experts, one per pair of classes)")
    ax.set_ylabel("test accuracy (10 classes)")
    ax.set_title("digits: gate trained over N frozen LoRA experts (%d seeds)" % seeds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.results, tag + ".png"), dpi=110)


if __name__ == "__main__":
    main()
