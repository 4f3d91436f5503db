#!/usr/bin/env python3
"""Figures for `vmoer reproduce`, drawn from the CSVs it writes.

usage: /usr/bin/python3 scripts/plot.py RESULTS_DIR
       /usr/bin/python3 scripts/plot.py --train RUN_DIR [RUN_DIR ...]

Writes RESULTS_DIR/fig_reliability.png, fig_stability.png, fig_roc.png and
fig_expert_load.png; with --train, the training curves of `vmoer train` runs
(their log.jsonl) into the first RUN_DIR's fig_training.png: loss and task
loss (validation NLL as points), the normalised KL term, and the expert-load
CV per MoE layer, against the step, with each run's wall time. Needs
matplotlib (Debian python3-matplotlib).
"""
import csv
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reliability(d):
    data = defaultdict(list)
    for r in rows(os.path.join(d, "reliability.csv")):
        data[r["method"]].append(r)
    methods = list(data)
    n = len(methods)
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        # pool seeds: weighted by counts
        bins = defaultdict(lambda: [0, 0.0, 0.0])
        for r in data[m]:
            key = (float(r["bin_lo"]), float(r["bin_hi"]))
            c = int(r["count"])
            bins[key][0] += c
            bins[key][1] += c * float(r["confidence"])
            bins[key][2] += c * float(r["accuracy"])
        keys = sorted(bins)
        mids = [(lo + hi) / 2 for lo, hi in keys]
        width = [hi - lo for lo, hi in keys]
        acc = [bins[k][2] / bins[k][0] if bins[k][0] else 0 for k in keys]
        ax.bar(mids, acc, width=width, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        ax.set_title(m)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "fig_reliability.png"), dpi=110)
    plt.close(fig)


def stability(d):
    # columns shared / independent / distribution (experiments/eval.cpp): solid
    # lines independent router noise (the routing as used), dashed shared noise
    data = {k: defaultdict(lambda: defaultdict(list)) for k in ("independent", "shared")}
    for r in rows(os.path.join(d, "stability.csv")):
        if r["layer"] == "mean":
            if "jaccard" in r:  # results written before issue 16: shared noise only
                r = dict(r, shared=r["jaccard"], independent="nan")
            for k in data:
                if r[k] != "nan":
                    data[k][r["method"]][float(r["gamma"])].append(float(r[k]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    methods = list(dict.fromkeys(list(data["independent"]) + list(data["shared"])))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for k, style in (("independent", "-"), ("shared", "--")):
        for m, g in data[k].items():
            xs = sorted(g)
            ax.plot(xs, [sum(g[x]) / len(g[x]) for x in xs], marker="o", linestyle=style, color=colour[m],
                    label=f"{m} ({k})")
    ax.set_xscale("log")
    ax.set_xlabel("noise level γ (σ = γ · mean embedding norm)")
    ax.set_ylabel("Jaccard of top-K sets (clean vs noisy)")
    ax.set_title("Routing stability")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "fig_stability.png"), dpi=110)
    plt.close(fig)


def roc(d):
    data = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for r in rows(os.path.join(d, "roc.csv")):
        key = (r["method"], r["seed"])
        xs, ys = data[r["ood_set"]][key]
        xs.append(float(r["fpr"]))
        ys.append(float(r["tpr"]))
    sets = sorted(data)
    fig, axes = plt.subplots(1, len(sets), figsize=(3.4 * len(sets), 3.4), squeeze=False)
    for ax, s in zip(axes.flat, sets):
        seen = set()
        for (m, seed), (xs, ys) in data[s].items():
            ax.plot(xs, ys, lw=1, label=m if m not in seen else None)
            seen.add(m)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_title(f"{s} (entropy score)")
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "fig_roc.png"), dpi=110)
    plt.close(fig)


def expert_load(d):
    data = defaultdict(lambda: defaultdict(float))
    layers, experts = set(), set()
    for r in rows(os.path.join(d, "expert_load.csv")):
        l, e = int(r["layer"]), int(r["expert"])
        data[r["method"]][(l, e)] += float(r["count"])
        layers.add(l)
        experts.add(e)
    methods = list(data)
    L, E = sorted(layers), sorted(experts)
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.8), squeeze=False)
    for ax, m in zip(axes.flat, methods):
        grid = []
        for l in L:
            tot = sum(data[m][(l, e)] for e in E) or 1.0
            grid.append([data[m][(l, e)] / tot for e in E])
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(L)), [str(l) for l in L])
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="share of assignments")
    fig.savefig(os.path.join(d, "fig_expert_load.png"), dpi=110)
    plt.close(fig)


def log_records(run_dir):
    """The step records of RUN_DIR/log.jsonl; a resumed run's repeated steps keep the last."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot.py: {path} is missing (not a `vmoer train` output folder?)")
    by_step = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if "step" in r and "loss" in r:
                by_step[r["step"]] = r
            elif "step" in r and "val_nll" in r and r["step"] in by_step:
                by_step[r["step"]]["val_nll"] = r["val_nll"]
    return [by_step[k] for k in sorted(by_step)]


def training(run_dirs):
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for d in run_dirs:
        recs = log_records(d)
        if not recs:
            sys.exit(f"plot.py: {d}/log.jsonl has no step records")
        name = os.path.basename(os.path.normpath(d))
        secs = recs[-1].get("seconds")
        label = name + (f" ({secs / 60:.1f} min)" if secs is not None else "")
        steps = [r["step"] for r in recs]
        line, = ax[0].plot(steps, [r["loss"] for r in recs], label=label + " loss")
        ax[0].plot(steps, [r["task_loss"] for r in recs], "--", color=line.get_color(), alpha=0.6)
        val = [(r["step"], r["val_nll"]) for r in recs if "val_nll" in r]
        if val:
            ax[0].plot(*zip(*val), "o", color=line.get_color(), label=name + " val NLL")
        ax[1].plot(steps, [r["kl"] for r in recs], color=line.get_color(), label=name)
        layers = defaultdict(list)
        for r in recs:
            for L in r.get("layers", []):
                layers[L["layer"]].append((r["step"], L["cv"]))
        for l, pts in sorted(layers.items()):
            ax[2].plot(*zip(*pts), label=f"{name} layer {l}", alpha=0.8)
    ax[0].set(xlabel="step", ylabel="loss (solid), task loss (dashed)", title="objective")
    ax[1].set(xlabel="step", ylabel="KL / n (--kl-norm)", title="KL term (before β)")
    ax[2].set(xlabel="step", ylabel="CV of expert load", title="expert load per MoE layer")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(run_dirs[0], "fig_training.png")
    fig.savefig(out, dpi=110)
    print(f"plot.py: {out}")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--train":
        training(sys.argv[2:])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    for name, fn in [("reliability.csv", reliability), ("stability.csv", stability), ("roc.csv", roc),
                     ("expert_load.csv", expert_load)]:
        if not os.path.exists(os.path.join(d, name)):
            sys.exit(f"plot.py: {os.path.join(d, name)} is missing (run vmoer reproduce first)")
        fn(d)
    print(f"plot.py: figures written to {d}")


if __name__ == "__main__":
    main()
