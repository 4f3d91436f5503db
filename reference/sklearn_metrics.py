#!/usr/bin/env python3
"""reference/sklearn_metrics.py — independent reference values for `vmoer metrics`.

Reads the same CSV files as `vmoer metrics` and prints one JSON object with the
same keys. Ranking metrics come from scikit-learn; the rest follow the written
definitions (docs/vmoer-method.md §3, experiments/metrics.h) in numpy:

  accuracy = sklearn accuracy_score(label, argmax p)       (np.argmax: lowest index on ties)
  nll      = mean -log max(p_label, 1e-12)
  brier    = mean_i sum_c (p_ic - y_ic)^2
  ece/mce  = B bins; width: bin = min(floor(conf*B), B-1); mass: stable sort by
             confidence, rank r -> bin floor(r*B/N)
  auroc    = roc_auc_score(is_ood, score)
  aupr_out = average_precision_score(is_ood, score)
  aupr_in  = average_precision_score(1 - is_ood, -score)
  fpr95_ood_recall = fpr at the first roc_curve(is_ood, score) point with tpr >= 0.95
  fpr95_id_tpr     = the same on roc_curve(1 - is_ood, -score) (OpenOOD's FPR@95)
  roc      = roc_curve(is_ood, score) arrays (drop_intermediate=True)

Probability rows are renormalised to sum to 1. This script does not validate
its input; `vmoer metrics` does.

Usage: sklearn_metrics.py --probs P.csv [--ood O.csv] [--bins 10] [--binning width|mass]
"""
import argparse
import csv
import json

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve


def read_rows(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    return rows[0], rows[1:]


def calibration(conf, correct, bins, binning):
    n = len(conf)
    if binning == "width":
        b = np.minimum(np.floor(conf * bins).astype(np.int64), bins - 1)
    else:
        order = np.argsort(conf, kind="stable")
        b = np.empty(n, dtype=np.int64)
        b[order] = (np.arange(n, dtype=np.int64) * bins) // n
    ece, mce = 0.0, 0.0
    for k in range(bins):
        m = b == k
        nk = int(m.sum())
        if nk == 0:
            continue
        gap = abs(correct[m].mean() - conf[m].mean())
        ece += nk / n * gap
        mce = max(mce, gap)
    return ece, mce


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probs", required=True)
    ap.add_argument("--ood")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--binning", choices=["width", "mass"], default="width")
    args = ap.parse_args()

    _, rows = read_rows(args.probs)
    y = np.array([int(r[0]) for r in rows], dtype=np.int64)
    p = np.array([[float(x) for x in r[1:]] for r in rows], dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    n, k = p.shape
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(n), pred]
    onehot = np.eye(k)[y]
    ece, mce = calibration(conf, (pred == y).astype(np.float64), args.bins, args.binning)
    out = {
        "n": int(n),
        "accuracy": float(accuracy_score(y, pred)),
        "nll": float(np.mean(-np.log(np.maximum(p[np.arange(n), y], 1e-12)))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "ece": float(ece),
        "mce": float(mce),
    }
    if args.ood:
        _, rows = read_rows(args.ood)
        s = np.array([float(r[0]) for r in rows], dtype=np.float64)
        t = np.array([int(r[1]) for r in rows], dtype=np.int64)
        fpr, tpr, thr = roc_curve(t, s)
        fpr_i, tpr_i, _ = roc_curve(1 - t, -s)
        out.update({
            "auroc": float(roc_auc_score(t, s)),
            "aupr_in": float(average_precision_score(1 - t, -s)),
            "aupr_out": float(average_precision_score(t, s)),
            "fpr95_ood_recall": float(fpr[np.argmax(tpr >= 0.95)]),
            "fpr95_id_tpr": float(fpr_i[np.argmax(tpr_i >= 0.95)]),
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()},
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
