#!/usr/bin/env python3
"""The issue-17 study: tables, verdicts and figures from `vmoer reproduce` folders.

usage: /usr/bin/python3 scripts/study.py STUDY_DIR --out OUT_DIR

STUDY_DIR holds one folder per `vmoer reproduce` run, named by convention:
  <regime>-main       the default configuration, several fine-tuning seeds
                      (--seeds 3 --reseed-from finetune)
  <regime>-s<k>-...   the screening: seed 1, one factor per run (--ablate);
                      its default is <regime>-s0-default if present, else
                      the main run's seed 1 (the same stages: --stages)
  <regime>-best       the best combination per router, several seeds; or
  <regime>-best-*     one folder per router (their kept levels differ),
                      merged; baselines without stage 2 (sample-k,
                      mc-dropout) borrowed from <regime>-main where they
                      evaluated the same fine-tuned models
  <regime>-single-*   the best single factor per router (by validation NLL),
                      merged the same way (a follow-up, see RESULTS.md)
<regime> is "std" (the standard quick plan) or "oc" (--plan overconfident).

Writes OUT_DIR/study.md (every table below), OUT_DIR/study.json (the same
numbers), fig_ece_vs_det.png, fig_reliability_<regime>.png and
fig_stability_<regime>.png. Every number is read from a results.json; nothing
here trains or evaluates. Needs matplotlib (Debian python3-matplotlib).

Definitions (also in study.md):
  effect vs det      per fine-tuning seed s: d_s = m_router(s) - m_det(s);
                     reported: mean_s d_s ± std_s d_s (sample std), and the
                     relative change mean_s d_s / mean_s m_det(s).
  "> 2 std"          |mean d| > 2 · std d (paired over seeds).
  verdict            holds: the paper's direction, > 2 std against det AND
                     against det+ts (ECE, NLL; det+ts = det for stability and
                     FLOPs, and for AUROC temperature scaling changes little),
                     and at least half the paper's relative size;
                     holds in direction only: the paper's direction (mean)
                     but not all of the above;
                     does not hold: the opposite direction or no change.
  best router        per claim, the router with the best mean effect ON THE
                     TEST SPLIT among mfvr, fcvr, vtsr: a choice made after
                     seeing the results, so optimistic for the paper.
  screening choice   per router and factor, the level with the lowest
                     validation-split NLL (seed 1); a level is kept only if it
                     beats the default's validation NLL by more than 0.002
                     (below that, the default stays); the best combination
                     joins the kept levels. The test split is never read.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import statistics as st
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REGIMES = {"std": "standard (quick plan: det well calibrated)",
           "oc": "over-confident (--plan overconfident)",
           "vis": "vision track (quick ViT-MoE on Fashion-MNIST)"}
TRACK = {"std": "text", "oc": "text", "vis": "vision"}
BAYES = ["mfvr", "fcvr", "vtsr"]
BASELINES = ["det", "det+ts", "sample-k", "mc-dropout"]
GAMMA = 0.01
# The paper's headline claims: (key, label, paper's relative change, better direction)
CLAIMS = [
    ("stab_ind", "routing stability (Jaccard γ = 0.01, independent draws)", +0.38, +1),
    ("stab_dist", "routing stability (Jaccard γ = 0.01, top-K of the routing distribution)", +0.38, +1),
    ("ece", "calibration error (ECE)", -0.94, -1),
    ("auroc_near", "OOD AUROC, near (predictive entropy)", +0.12, +1),
    ("auroc_far", "OOD AUROC, far (predictive entropy)", +0.12, +1),
    ("auroc_near_mi", "OOD AUROC, near (router's mutual information vs det's entropy)", +0.12, +1),
    ("auroc_far_mi", "OOD AUROC, far (router's mutual information vs det's entropy)", +0.12, +1),
    ("auroc_near_mi@mc-dropout", "OOD AUROC, near (router's MI vs mc-dropout's MI: the same score without a Bayesian router)", +0.12, +1),
    ("auroc_far_mi@mc-dropout", "OOD AUROC, far (router's MI vs mc-dropout's MI)", +0.12, +1),
    ("flops", "FLOPs overhead vs det (< 1%)", None, -1),
]
KEEP_MARGIN = 0.002  # validation NLL a screened level must gain to be kept


def load(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


def stab(rec, definition, gamma=GAMMA, layers=None):
    for s in rec["stability"]:
        if abs(s["gamma"] - gamma) < 1e-12:
            if layers is None:
                return s["jaccard"][definition]
            v = [p["jaccard"][definition] for p in s["per_layer"] if p["layer"] in layers]
            return sum(v) / len(v) if v else float("nan")
    return float("nan")


def metrics(rec):
    """The numbers of one run record that the study tables use."""
    bl = rec.get("bayes_layers") or None
    m = {
        "acc": rec["id"]["accuracy"],
        "nll": rec["id"]["nll"],
        "ece": rec["id"]["ece"],
        "stab_shared": stab(rec, "shared"),
        "stab_ind": stab(rec, "independent"),
        "stab_dist": stab(rec, "distribution"),
        "auroc_near": rec["auroc_mean"].get("near", float("nan")),
        "auroc_far": rec["auroc_mean"].get("far", float("nan")),
        # the router's own OOD score (MI over --mi-samples routing draws); det: its entropy
        "auroc_near_mi": rec["auroc_mean"].get("near:mutual_info", rec["auroc_mean"].get("near", float("nan")))
        if rec["method"] not in ("det", "det+ts") else rec["auroc_mean"].get("near", float("nan")),
        "auroc_far_mi": rec["auroc_mean"].get("far:mutual_info", rec["auroc_mean"].get("far", float("nan")))
        if rec["method"] not in ("det", "det+ts") else rec["auroc_mean"].get("far", float("nan")),
        "flops": rec["flops"]["overhead_vs_det"],
        "ts_T": rec.get("temperature_scaling", 1.0),
    }
    if "val" in rec:
        m["val_nll"] = rec["val"]["nll"]
        m["val_ece"] = rec["val"]["ece"]
    temps = rec.get("temperature") or []
    if temps and rec["method"] == "vtsr":
        m["T_mean"] = sum(t["mean"] for t in temps) / len(temps)
    return m


def load_best(study, regime, tag="best"):
    """The best combination: <regime>-best, or one folder per router set
    (<regime>-best-<router>, when the screening kept different levels per
    router), merged; baselines missing from them (sample-k, mc-dropout: no
    stage 2) come from <regime>-main where they evaluated the same fine-tuned
    model (the det record's checkpoint; --router-data heldout changes the
    fine-tuning in the quick plan, and then nothing is borrowed).
    Returns (results, [how each part was made])."""
    folders = sorted(f for f in glob.glob(os.path.join(study, f"{regime}-{tag}*"))
                     if os.path.exists(os.path.join(f, "results.json")))
    if not folders:
        return None, None
    merged, made_by = None, []
    for f in folders:
        r = load(f)
        made_by.append(f"`{r['provenance']['command']}` — built as "
                       f"{r['provenance']['build'].get('version', r['provenance']['build'].get('commit'))}; "
                       f"wall time {r['seconds'] / 60:.0f} min")
        if merged is None:
            merged = dict(r, runs=[])
        have = {(x["method"], x["seed"]) for x in merged["runs"]}
        merged["runs"] += [x for x in r["runs"] if (x["method"], x["seed"]) not in have]
    main = os.path.join(study, f"{regime}-main")
    if os.path.exists(os.path.join(main, "results.json")):
        have = {x["method"] for x in merged["runs"]}
        mine = {x["seed"]: x for x in merged["runs"] if x["method"] == "det"}
        theirs = {x["seed"]: x for x in load(main)["runs"] if x["method"] == "det"}
        # the same fine-tuned model: the same stage, or det's test predictions' metrics identical to the last bit
        # (a stage trained again under another key, e.g. binary 123eb7f keyed fine-tuning by --kl-norm)
        same = {s for s, d in mine.items() if s in theirs and
                (d["checkpoint"] == theirs[s]["checkpoint"] or (d["id"] == theirs[s]["id"] and d["ood"] == theirs[s]["ood"]))}
        borrowed = [x for x in load(main)["runs"]
                    if x["method"] in BASELINES and x["method"] not in have and x["seed"] in same]
        if borrowed:
            merged["runs"] += borrowed
            made_by.append(f"{', '.join(sorted({x['method'] for x in borrowed}))} from {regime}-main (same seeds)")
    return merged, made_by


def by_method_seed(res, track="text"):
    out = defaultdict(dict)  # method -> seed -> metrics
    for r in res["runs"]:
        if r.get("track", "text") != track:
            continue
        out[r["method"]][r["seed"]] = metrics(r)
    return out


def mean_std(v):
    v = [x for x in v if not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan")
    return st.mean(v), (st.stdev(v) if len(v) > 1 else 0.0)


def fmt(m, s, digits=3):
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired(tab, method, ref, key):
    seeds = sorted(set(tab.get(method, {})) & set(tab.get(ref, {})))
    d = [tab[method][s][key] - tab[ref][s][key] for s in seeds]
    base = [tab[ref][s][key] for s in seeds]
    md, sd = mean_std(d)
    mb, _ = mean_std(base)
    rel = md / mb if mb and not math.isnan(mb) else float("nan")
    return {"mean": md, "std": sd, "rel": rel, "n": len(seeds), "per_seed": d,
            "beyond_2std": (abs(md) > 2 * sd) if len(seeds) > 1 else False}


def main_table(tab, methods):
    cols = [("acc", "acc"), ("nll", "NLL"), ("ece", "ECE"), ("stab_shared", "J shared"),
            ("stab_ind", "J indep."), ("stab_dist", "J distr."), ("auroc_near", "AUROC near"),
            ("auroc_far", "AUROC far")]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " | FLOPs vs det | T |",
             "|---|" + "---|" * (len(cols) + 2)]
    for m in methods:
        if m not in tab:
            continue
        seeds = sorted(tab[m])
        cells = [fmt(*mean_std([tab[m][s][k] for s in seeds])) for k, _ in cols]
        fl = mean_std([tab[m][s]["flops"] for s in seeds])[0]
        if m == "vtsr":
            T = fmt(*mean_std([tab[m][s].get("T_mean", float("nan")) for s in seeds]), digits=2) + " (learned)"
        elif m.endswith("+ts"):
            T = fmt(*mean_std([tab[m][s]["ts_T"] for s in seeds]), digits=2) + " (fitted)"
        else:
            T = ""
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {100 * fl:+.2f}% | {T} |")
    return "\n".join(lines)


def verdict(claim, eff_det, eff_ts):
    key, _, paper, better = claim
    if key == "flops":
        return "holds" if eff_det["mean_abs"] < 0.01 else "does not hold"
    md = eff_det["mean"]
    if md == 0 or math.isnan(md) or (md > 0) != (better > 0):
        return "does not hold"
    strong = eff_det["beyond_2std"] and abs(eff_det["rel"]) >= abs(paper) / 2
    if eff_ts is not None:
        mt = eff_ts["mean"]
        strong = strong and (mt > 0) == (better > 0) and eff_ts["beyond_2std"]
    return "holds" if strong else "holds in direction only"


def claims_table(tab):
    rows = ["| claim (paper) | best router | vs det: Δ mean ± std (rel.) | > 2 std | vs det+ts: Δ mean ± std (rel.) | > 2 std | verdict |",
            "|---|---|---|---|---|---|---|"]
    out = []
    for claim in CLAIMS:
        key, label, paper, better = claim
        key, ref = (key.split("@") + ["det"])[:2]
        best, best_val = None, None
        for r in BAYES:
            if r not in tab or "det" not in tab:
                continue
            if key == "flops":
                v = -mean_std([tab[r][s]["flops"] for s in tab[r]])[0]
            else:
                v = better * paired(tab, r, ref, key)["mean"]
            if best is None or v > best_val:
                best, best_val = r, v
        if best is None or (key != "flops" and math.isnan(paired(tab, best, ref, key)["mean"])):
            continue
        if key == "flops":
            per = {r: mean_std([tab[r][s]["flops"] for s in tab[r]])[0] for r in BAYES if r in tab}
            cells = ", ".join(f"{r} {100 * f:+.2f}% ({verdict(claim, {'mean_abs': f}, None)})" for r, f in per.items())
            v = verdict(claim, {"mean_abs": per[best]}, None)
            rows.append(f"| {label} | {best} | {cells} | — | — | — | {v} (best router) |")
            out.append({"claim": key, "overhead": per, "verdict": v})
            continue
        ed = paired(tab, best, ref, key)
        ets = paired(tab, best, "det+ts", key) if ref == "det" and "det+ts" in tab and key in (
            "ece", "nll", "auroc_near", "auroc_far", "auroc_near_mi", "auroc_far_mi") else None
        if key.startswith("stab"):
            ets = None  # temperature scaling does not change the routing: det+ts = det
        v = verdict((key, label, paper, better), ed, ets)

        def cell(e):
            return f"{e['mean']:+.4f} ± {e['std']:.4f} ({100 * e['rel']:+.1f}%)"
        rows.append(f"| {label} ({100 * paper:+.0f}%) | {best} | {'' if ref == 'det' else 'vs ' + ref + ': '}{cell(ed)} | {'yes' if ed['beyond_2std'] else 'no'} | "
                    + (f"{cell(ets)} | {'yes' if ets['beyond_2std'] else 'no'}" if ets else ("= det | —" if ref == "det" else "— | —"))
                    + f" | {v} |")
        out.append({"claim": key, "reference": ref, "best_router": best, "vs_det": ed, "vs_det_ts": ets, "verdict": v})
    return "\n".join(rows), out


def effects_table(tab):
    """Every router against det and det+ts, every claim metric."""
    keys = [("ece", "ECE"), ("nll", "NLL"), ("stab_ind", "J indep."), ("auroc_near", "AUROC near"),
            ("auroc_far", "AUROC far")]
    rows = ["| method | " + " | ".join(f"Δ{k[1]} vs det" for k in keys) + " | ΔECE vs det+ts |",
            "|---|" + "---|" * (len(keys) + 1)]
    for m in ["sample-k", "mc-dropout"] + BAYES:
        if m not in tab:
            continue
        cells = []
        for k, _ in keys:
            e = paired(tab, m, "det", k)
            cells.append(f"{e['mean']:+.4f} ± {e['std']:.4f}{' *' if e['beyond_2std'] else ''}")
        e = paired(tab, m, "det+ts", "ece") if "det+ts" in tab else None
        cells.append(f"{e['mean']:+.4f} ± {e['std']:.4f}{' *' if e['beyond_2std'] else ''}" if e else "—")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---- screening --------------------------------------------------------------------------
def screening(study, regime):
    """Validation NLL per router, factor and level (seed 1)."""
    default = os.path.join(study, f"{regime}-s0-default")
    if not os.path.exists(os.path.join(default, "results.json")):
        default = os.path.join(study, f"{regime}-main")  # its seed 1 is the screening's default
    if not os.path.exists(os.path.join(default, "results.json")):
        return None
    base = by_method_seed(load(default))
    rows = []  # (factor, level, router, val_nll, dvs_default, val_ece, det_val_nll)
    for d in sorted(glob.glob(os.path.join(study, f"{regime}-s[1-9]*"))):
        if not os.path.exists(os.path.join(d, "results.json")):
            continue
        res = load(d)
        det_val = {}
        for r in res["runs"]:
            if r["method"] == "det" and "val" in r:
                det_val[json.dumps(r.get("ablation"))] = r["val"]["nll"]
        for r in res["runs"]:
            if r["method"] not in BAYES or "ablation" not in r or "val" not in r:
                continue
            (factor, level), = r["ablation"].items()
            ref = base[r["method"]][r["seed"]]
            dv = det_val.get(json.dumps(r.get("ablation")), float("nan"))
            # NLL relative to det on the same fine-tuned model (router_data changes the fine-tuning)
            rel = r["val"]["nll"] - dv
            ref_rel = ref["val_nll"] - base["det"][r["seed"]]["val_nll"]
            rows.append({"factor": factor, "level": level, "router": r["method"], "val_nll": r["val"]["nll"],
                         "val_ece": r["val"]["ece"], "d_vs_det": rel, "gain_vs_default": ref_rel - rel})
    defaults = {m: {"val_nll": base[m][1]["val_nll"], "val_ece": base[m][1]["val_ece"],
                    "d_vs_det": base[m][1]["val_nll"] - base["det"][1]["val_nll"]} for m in BAYES if m in base}
    best = defaultdict(dict)
    for router in BAYES:
        for f in sorted({x["factor"] for x in rows if x["router"] == router}):
            cand = [x for x in rows if x["router"] == router and x["factor"] == f]
            top = max(cand, key=lambda x: x["gain_vs_default"])
            if top["gain_vs_default"] > KEEP_MARGIN:
                best[router][f] = top["level"]
    return {"rows": rows, "defaults": defaults, "best": best}


def screening_md(sc):
    lines = ["| router | factor = level | val NLL | val NLL − det's | gain vs default | val ECE |",
             "|---|---|---|---|---|---|"]
    for router in BAYES:
        if router not in sc["defaults"]:
            continue
        d = sc["defaults"][router]
        lines.append(f"| {router} | (default) | {d['val_nll']:.4f} | {d['d_vs_det']:+.4f} | — | {d['val_ece']:.4f} |")
        for x in sc["rows"]:
            if x["router"] != router:
                continue
            lvl = x["level"] if x["level"] != "" else '"" (every MoE layer)'
            keep = " **kept**" if sc["best"][router].get(x["factor"]) == x["level"] else ""
            lines.append(f"| {router} | {x['factor']} = {lvl}{keep} | {x['val_nll']:.4f} | {x['d_vs_det']:+.4f} | "
                         f"{x['gain_vs_default']:+.4f} | {x['val_ece']:.4f} |")
    lines.append("")
    for router in BAYES:
        if router in sc["defaults"]:
            b = sc["best"].get(router, {})
            flags = " ".join(f"--{k.replace('_', '-')} {v if v != '' else chr(34) * 2}" for k, v in sorted(b.items()))
            lines.append(f"- best combination for {router}: " + (flags if flags else "the default (no level kept)"))
    return "\n".join(lines)


# ---- stage wall times ----------------------------------------------------------------------
def stage_times(study, out):
    """Per-stage wall times: the stage cache's done.json files, merged into
    out/stage_times.csv (one row per stage folder, kept across sessions: a
    stage cache does not outlive its machine)."""
    rows = {}
    csv_path = os.path.join(out, "stage_times.csv")
    if os.path.exists(csv_path):
        with open(csv_path) as f:
            for r in csv.DictReader(f):
                rows[r["stage"]] = r
    for done in glob.glob(os.path.join(study, "stages", "*", "done.json")):
        name = os.path.basename(os.path.dirname(done))
        with open(done) as f:
            j = json.load(f)
        kind = re.sub(r"-seed\d+-[0-9a-f]+$", "", name)
        plan = "overconfident" if j["inputs"].get("epochs", 0) and kind.startswith(("finetune", "router")) else "quick"
        rows[name] = {"stage": name, "plan": plan, "kind": kind, "seconds": f"{j['seconds']:.1f}"}
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["stage", "plan", "kind", "seconds"])
        w.writeheader()
        for name in sorted(rows):
            w.writerow(rows[name])
    t = defaultdict(list)
    for r in rows.values():
        t[(r["plan"], r["kind"])].append(float(r["seconds"]))
    lines = ["| plan | stage | runs | wall time per run (min) |", "|---|---|---|---|"]
    for (plan, kind), v in sorted(t.items()):
        m, s = mean_std(v)
        lines.append(f"| {plan} | {kind} | {len(v)} | {m / 60:.1f} ± {s / 60:.1f} (max {max(v) / 60:.1f}) |")
    return "\n".join(lines)


# ---- figures ---------------------------------------------------------------------------------
def fig_ece(study_tabs, out):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    marks = {"std": "o", "oc": "s"}
    colors = {"det+ts": "k", "mfvr": "tab:blue", "fcvr": "tab:orange", "vtsr": "tab:green",
              "sample-k": "tab:gray", "mc-dropout": "tab:purple"}
    for (regime, tag), tab in study_tabs.items():
        if "det" not in tab:
            continue
        for m, c in colors.items():
            if m not in tab:
                continue
            xs, ys = [], []
            for s in sorted(set(tab[m]) & set(tab["det"])):
                e0 = tab["det"][s]["ece"]
                xs.append(e0)
                ys.append(100 * (tab[m][s]["ece"] - e0) / e0)
            ax.scatter(xs, ys, marker=marks.get(regime, "x"), color=c, alpha=0.8,
                       label=f"{m} ({regime}{'' if tag == 'main' else ', ' + tag})",
                       facecolors="none" if tag != "main" else c)
    ax.axhline(0, color="gray", lw=0.6)
    ax.axhline(-94, color="red", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], -90, " paper: −94%", color="red", fontsize=8)
    ax.set_xlabel("det's ECE (test split)")
    ax.set_ylabel("ECE change vs det (%)")
    ax.set_title("ECE reduction against how miscalibrated det was\n(one point per regime × fine-tuning seed × method)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig_ece_vs_det.png"), dpi=130)
    plt.close(fig)


def fig_reliability(folder, regime, out):
    path = os.path.join(folder, "reliability.csv")
    if not os.path.exists(path):
        return
    agg = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0]))  # method -> bin -> [count, Σconf·n, Σacc·n]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            n = int(r["count"])
            b = agg[r["method"].split(":")[-1]][float(r["bin_lo"])]  # "vision:det" in a vision run
            b[0] += n
            b[1] += n * float(r["confidence"])
            b[2] += n * float(r["accuracy"])
    methods = [m for m in BASELINES + BAYES if m in agg]
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(2.3 * len(methods), 2.6), squeeze=False)
    for ax, m in zip(axes[0], methods):
        lo = sorted(agg[m])
        conf = [agg[m][x][1] / agg[m][x][0] if agg[m][x][0] else float("nan") for x in lo]
        acc = [agg[m][x][2] / agg[m][x][0] if agg[m][x][0] else float("nan") for x in lo]
        ax.plot([0, 1], [0, 1], color="gray", lw=0.6)
        ax.bar([x + 0.05 for x in lo], acc, width=0.09, alpha=0.6)
        ax.plot(conf, acc, "o", ms=3, color="k")
        ax.set_title(m, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("accuracy", fontsize=7)
    fig.suptitle(f"Reliability, {REGIMES[regime]}, test split, all seeds pooled", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"fig_reliability_{regime}.png"), dpi=130)
    plt.close(fig)


def fig_stability(tab_res, regime, out):
    res = tab_res
    curves = defaultdict(lambda: defaultdict(list))  # (method, def) -> gamma -> values
    for r in res["runs"]:
        for s in r["stability"]:
            for dfn in ("shared", "independent", "distribution"):
                curves[(r["method"], dfn)][s["gamma"]].append(s["jaccard"][dfn])
    methods = [m for m in ["det", "sample-k", "mc-dropout"] + BAYES if any(k[0] == m for k in curves)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), sharey=True)
    for ax, dfn in zip(axes, ("shared", "independent", "distribution")):
        for m in methods:
            g = sorted(curves[(m, dfn)])
            mu = [st.mean(curves[(m, dfn)][x]) for x in g]
            sd = [st.stdev(curves[(m, dfn)][x]) if len(curves[(m, dfn)][x]) > 1 else 0 for x in g]
            ax.errorbar(g, mu, yerr=sd, label=m, capsize=2, lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{dfn} router draws", fontsize=9)
        ax.set_xlabel("γ (noise / mean embedding norm)")
    axes[0].set_ylabel("Jaccard of top-K sets (all layers)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Routing stability, {REGIMES[regime]}, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"fig_stability_{regime}.png"), dpi=130)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    md = ["# The study (issue 17): tables generated by scripts/study.py", "",
          "Generated from the results.json files of " + a.study + "; definitions in the script's docstring.", ""]
    summary = {}
    tabs = {}
    for regime in REGIMES:
        for tag in ("main", "best", "single"):
            folder = os.path.join(a.study, f"{regime}-{tag}")
            res, made_by = load_best(a.study, regime, tag) if tag != "main" else (None, None)
            if tag == "main" or res is None:
                if not os.path.exists(os.path.join(folder, "results.json")):
                    continue
                res = load(folder)
                made_by = [f"`{res['provenance']['command']}` — built as "
                           f"{res['provenance']['build'].get('version', res['provenance']['build'].get('commit'))}; "
                           f"wall time {res['seconds'] / 60:.0f} min"]
            tab = by_method_seed(res, TRACK[regime])
            tabs[(regime, tag)] = tab
            seeds = sorted({s for m in tab.values() for s in m})
            title = {"main": "default configuration", "best": "best screened combination",
                     "single": "best single screened factor per router (added after the combination failed on "
                               "validation; see RESULTS.md)"}[tag]
            md += [f"## {REGIMES[regime]}: {title}",
                   "", "; ".join(made_by) + f"; seeds {seeds} (fine-tuning seeds: --reseed-from {res['reseed_from']}).",
                   "", "Mean ± std over seeds (test split; J = Jaccard of top-K sets at γ = 0.01, all MoE layers):", "",
                   main_table(tab, BASELINES + BAYES), "",
                   "Paired differences against det (and det+ts for ECE), mean ± std over seeds; * = beyond 2 std:", "",
                   effects_table(tab), ""]
            ct, claims = claims_table(tab)
            md += ["Against the paper's claims:", "", ct, ""]
            summary[f"{regime}-{tag}"] = {"claims": claims, "seeds": seeds}
            fig_reliability(folder, regime, a.out) if tag == "main" else None
            fig_stability(res, regime, a.out) if tag == "main" else None
        sc = screening(a.study, regime)
        if sc:
            md += [f"## Screening, {REGIMES[regime]} (seed 1, validation split)", "", screening_md(sc), ""]
            summary[f"{regime}-screening"] = sc
    md += ["## Stage wall times as run", "",
           "Threads and machine load varied (see each run's command.txt and the study's queue.log): "
           "not idle timings. Stages recorded since 2026-12-01 10:00 UTC (stage_times.csv):", "",
           stage_times(a.study, a.out), ""]
    older = os.path.join(a.out, "stage_times_sessions7-9.md")
    if os.path.exists(older):
        with open(older) as f:
            md += [f.read()]
    if tabs:
        fig_ece(tabs, a.out)
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print("wrote", os.path.join(a.out, "study.md"))


if __name__ == "__main__":
    main()
