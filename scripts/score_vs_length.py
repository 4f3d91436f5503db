#!/usr/bin/env python3
"""Does an OOD score only track how long the prompt is?

usage: /usr/bin/python3 scripts/score_vs_length.py EVAL_DIR [SCORE ...]

Reads EVAL_DIR/scores.csv (written by `vmoer eval`) and prints, per OOD set:
the AUROC of the model-free `length` score, the AUROC of each SCORE (default
mutual_info, entropy), its correlation with length inside each set, and its
AUROC after removing a straight-line fit of the score on length made on the
ID set alone (residual = score − (a·length + b)). A score whose AUROC falls
to ~0.5 once length is removed was measuring length. Needs numpy.
"""
import csv
import os
import sys
from collections import defaultdict

import numpy as np


def auroc(x, y):
    x, y = np.asarray(x, float), np.asarray(y, int)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # average ranks over ties
        m = x == v
        ranks[m] = ranks[m].mean()
    n1 = y.sum()
    n0 = len(y) - n1
    return (ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    scores = sys.argv[2:] or ["mutual_info", "entropy"]
    rows = list(csv.DictReader(open(os.path.join(d, "scores.csv"))))
    sets = defaultdict(list)
    for r in rows:
        sets[(r["set"], r["kind"])].append(r)
    (id_name, _), id_rows = next((k, v) for k, v in sets.items() if k[1] == "id")
    col = lambda rs, c: np.array([float(r[c]) for r in rs])  # noqa: E731
    L0 = col(id_rows, "length")
    print(f"ID set '{id_name}': {len(id_rows)} examples, mean length {L0.mean():.0f}")
    print("| OOD set | n | mean length | AUROC length | " +
          " | ".join(f"AUROC {s} | corr({s}, length) | AUROC {s} without length" for s in scores) + " |")
    print("|---|---|---|---|" + "---|---|---|" * len(scores))
    for (name, kind), rs in sets.items():
        if kind == "id":
            continue
        L1 = col(rs, "length")
        y = np.r_[np.zeros(len(L0)), np.ones(len(L1))]
        cells = [f"{name} ({kind})", str(len(rs)), f"{L1.mean():.0f}", f"{auroc(np.r_[L0, L1], y):.3f}"]
        for s in scores:
            s0, s1 = col(id_rows, s), col(rs, s)
            a, b = np.polyfit(L0, s0, 1)
            corr = np.corrcoef(L1, s1)[0, 1] if s1.std() > 0 and L1.std() > 0 else float("nan")
            cells += [f"{auroc(np.r_[s0, s1], y):.3f}", f"{corr:+.2f}",
                      f"{auroc(np.r_[s0 - (a * L0 + b), s1 - (a * L1 + b)], y):.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
