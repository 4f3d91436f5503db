#!/usr/bin/env python3
"""reference/parity_routers.py — recompute a vmoer forward/backward with a stochastic or
Bayesian router (sample-k, mc-dropout, mfvr, fcvr, vtsr) in the PyTorch twin, with the
same Philox noise as vmoer (reference/vmoer_twin.py ports core/philox.h).

Usage: parity_routers.py [--threads N] [--probes FILE] DIR [DIR ...]

Reads
  DIR/model.safetensors   a vmoer checkpoint (weights; metadata "model", "router")
  DIR/batch.safetensors   ids (B, T), targets (B*T, -100 = ignored), mask (B, T), all F32;
                          metadata: training ("0"/"1"), seed, step (router streams; S follows
                          the router config: train_samples in training, samples in
                          evaluation), lb_coef, z_coef, beta, kl_norm (token-mean | dataset),
                          batches_per_epoch, trainable (regex on parameter names: the
                          parameters that get gradients, "\\.router\\." = stage 2)
and writes DIR/twin.safetensors (F32) with, for tag in f64, f32:
  {tag}.logits (B*T, V); {tag}.loss, .ce, .lb, .z, .kl (Σ over Bayesian layers and real
  tokens), .kl_term (normalised), .penalty (scalars as (1,));
  {tag}.layer{i}.{experts, gates, probs, logits} for the i-th MoE layer and, where the
  router has them, .kl, .penalty, .post_mean, .post_std, .ilv, .temperature;
  {tag}.grad.{name}: d loss / d parameter for the trainable parameters that get one;
  f64.margin: the smallest distance of any discrete choice (top-K of p̄, Gumbel keys,
  sequential draws) from a tie, over all MoE layers (the C++ test requires it to be far
  above float32 rounding so that equal expert choices are a fair requirement);
  f64.kl_dist_err: max over Bayesian layers of |closed-form KL − torch.distributions
  kl_divergence| / max |KL| per token (an independent float64 check of the formulas).

--probes FILE (metadata "probes": JSON list of {seed, stream | layer, step, purpose,
first, n}, 64-bit numbers as decimal strings) writes FILE with "_twin" before the
extension: probe.{j}.{u32hi, u32lo, uniform, normal, gumbel} from the twin's Philox port
(u32 split in 16-bit halves, exact in F32), for the C++ test to compare with core/philox.h.

Before anything, the Philox port is checked against the Random123 known-answer vectors
(the ones tests/test_core.cpp uses); a mismatch exits with status 1.

When DIR/ours.safetensors exists it prints one JSON line per DIR with the largest error of
ours and of the float32 twin against the float64 twin per group (for reading; the C++ test
makes the decisions).
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch
import torch.distributions as D

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402
import safetensors_io  # noqa: E402
import vmoer_twin as vt  # noqa: E402

_KATS = [  # Random123 kat_vectors, philox4x32_10: (counter, key0, key1, expected)
    ((0, 0, 0, 0), 0, 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, 0xFFFFFFFF, 0xFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0xA4093822, 0x299F31D0,
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def check_kats():
    for ctr, k0, k1, want in _KATS:
        got = vt.philox4x32_10([np.array([c], dtype=np.uint32) for c in ctr], k0, k1)
        got = tuple(int(g[0]) for g in got)
        if got != want:
            sys.exit(f"parity_routers.py: Philox port fails the Random123 vector {ctr}: {got} != {want}")


def kl_by_distributions(r):
    """KL per token from torch.distributions (float64), or None for a router without KL."""
    if "q_std" in r:  # mfvr: independent Normals per logit
        q = D.Normal(r["post_mean"], r["q_std"])
        p = D.Normal(r["prior_mean"], torch.full_like(r["prior_mean"], r["prior_std"]))
        return D.kl_divergence(q, p).sum(1)
    if "q_scale_tril" in r:  # fcvr
        E = r["prior_mean"].shape[1]
        # validate_args=False: a wrong factor must show up as a parity error, not as a crash here
        q = D.MultivariateNormal(r["post_mean"], scale_tril=r["q_scale_tril"], validate_args=False)
        eye = torch.eye(E, dtype=r["prior_mean"].dtype) * r["prior_std"]
        p = D.MultivariateNormal(r["prior_mean"], scale_tril=eye.expand(r["prior_mean"].shape[0], E, E),
                                 validate_args=False)
        return D.kl_divergence(q, p)
    if "q_logT" in r:  # vtsr log-normal: Gaussians on log T
        m, sd = r["q_logT"]
        return D.kl_divergence(D.Normal(m, sd), D.Normal(torch.zeros_like(m), torch.full_like(m, r["prior_std"]))).sum(1)
    return None


def run(model_path, batch, meta, dtype):
    model = vt.load_vmoer(model_path, dtype)
    model.train(meta.get("training", "0") == "1")
    trainable = re.compile(meta.get("trainable", ".*"))
    for name, p in model.named_parameters():
        p.requires_grad_(trainable.search(name) is not None)
    ids = batch["ids"].round().long()
    targets = batch["targets"].round().long().reshape(-1)
    mask = batch["mask"].reshape(ids.shape)
    total, parts, logits, aux = model.loss_lm(
        ids, targets, mask, float(meta.get("lb_coef", 0.01)), float(meta.get("z_coef", 0.001)),
        float(meta.get("beta", 0.0)), meta.get("kl_norm", "token-mean"), float(meta.get("batches_per_epoch", 1)),
        int(meta.get("seed", 0)), int(meta.get("step", 0)))
    if total.requires_grad:  # nothing trainable on the path: no gradients, as in vmoer
        total.backward()
    out = {"logits": logits.detach(), "loss": total.detach().reshape(1)}
    for k, v in parts.items():
        out[k] = v.detach().reshape(1)
    margin, kl_err = float("inf"), 0.0
    for i, r in enumerate(aux["routes"]):
        p = f"layer{i}."
        out[p + "experts"] = r["experts"].to(torch.float32)
        for k in ("gates", "probs", "logits"):
            out[p + k] = r[k].detach()
        for k in ("kl", "penalty"):
            if r[k] is not None:
                out[p + k] = r[k].detach().reshape(1)
        for k in ("post_mean", "post_std", "ilv", "temperature"):
            if k in r:
                out[p + k] = r[k]
        margin = min(margin, r["margin"])
        ref = kl_by_distributions(r) if dtype == torch.float64 else None
        if ref is not None:
            kl_err = max(kl_err, ((r["kl_tok"].detach() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item())
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad.detach()
    if dtype == torch.float64:
        out["margin"] = torch.tensor([margin])
        out["kl_dist_err"] = torch.tensor([kl_err])
    return out


def probes(path):
    _, meta = safetensors_io.load(path)
    out = {}
    for j, pr in enumerate(json.loads(meta["probes"])):
        seed = int(pr["seed"])
        stream = int(pr["stream"]) if "stream" in pr else vt.router_stream(seed, int(pr["layer"]), int(pr["step"]),
                                                                              pr["purpose"])
        first, n = int(pr["first"]), int(pr["n"])
        x = vt.philox_u32(seed, stream, np.arange(first, first + n, dtype=np.uint64))
        out[f"probe.{j}.u32hi"] = (x >> np.uint32(16)).astype(np.float32)
        out[f"probe.{j}.u32lo"] = (x & np.uint32(0xFFFF)).astype(np.float32)
        out[f"probe.{j}.uniform"] = vt.philox_uniforms(seed, stream, first, n)
        out[f"probe.{j}.normal"] = vt.philox_normals(seed, stream, first, n)
        out[f"probe.{j}.gumbel"] = vt.philox_gumbels(seed, stream, first, n)
    root, ext = os.path.splitext(path)
    safetensors_io.save(root + "_twin" + ext, out, {"libm": "1" if vt.LIBM_EXACT else "0"})


def group_of(key):
    if key.startswith("grad."):
        return "grad router" if ".router." in key else "grad other"
    if key.startswith("layer"):
        return key.split(".", 1)[1]
    return "loss terms" if key != "logits" else "logits"


def compare(ours, ref, other):
    return parity.compare(ours, ref, other, group_of=group_of,
                          skip=lambda k: k.endswith("experts") or k in ("margin", "kl_dist_err"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    check_kats()
    if a.probes:
        probes(a.probes)
    for d in a.dirs:
        batch, meta = safetensors_io.load(os.path.join(d, "batch.safetensors"))
        model_path = os.path.join(d, "model.safetensors")
        res = {"f64": run(model_path, batch, meta, torch.float64), "f32": run(model_path, batch, meta, torch.float32)}
        flat = {f"{tag}.{k}": v for tag, r in res.items() for k, v in r.items()}
        safetensors_io.save(os.path.join(d, "twin.safetensors"), flat)
        ours_path = os.path.join(d, "ours.safetensors")
        if os.path.exists(ours_path):
            ours, _ = safetensors_io.load(ours_path)
            groups = compare(ours, res["f64"], res["f32"])
            summary = {g: {k: float(f"{v:.3g}") for k, v in e.items()} for g, e in groups.items()}
            summary["margin"] = float(f"{res['f64']['margin'].item():.3g}")
            summary["kl_dist_err"] = float(f"{res['f64']['kl_dist_err'].item():.3g}")
            print(os.path.basename(os.path.normpath(d)) + " " + json.dumps(summary))


if __name__ == "__main__":
    main()
