#!/usr/bin/env python3
"""reference/parity.py — recompute one vmoer forward/backward in the PyTorch twin.

Usage: parity.py DIR [DIR ...] [--threads N]

Reads
  DIR/model.safetensors   a vmoer checkpoint (weights; metadata "model", "router")
  DIR/batch.safetensors   lm: ids (B, T), targets (B*T, -100 = ignored), mask (B, T);
                          vit: pixels (B, S*S), targets (B); all F32;
                          metadata lb_coef, z_coef, training ("0"/"1"), seed and step
                          (the router noise streams, default 0)
and writes DIR/twin.safetensors (F32) with, for tag in f64, f32:
  {tag}.logits (B*T, V) or (B, classes), {tag}.loss, {tag}.ce, {tag}.lb, {tag}.z, and
  {tag}.kl, .kl_term, .penalty (0 for det and noisy)  (scalars as (1,))
  {tag}.experts.{i}   (B*T, K) experts chosen in the i-th MoE layer
  {tag}.grad.{name}   d loss / d parameter (omitted when the parameter gets none)
loss = ce + lb_coef * lb + z_coef * z, as vmoer's trainer computes it.

When DIR/ours.safetensors exists (logits, loss, ce, lb, z, grad.{name}), it also
prints one JSON line with the error of ours and of the float32 twin against the
float64 twin per tensor group (for reading; the C++ test makes the decisions).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
from vmoer_twin import load_vmoer  # noqa: E402


def run(model_path, batch, meta, dtype):
    model = load_vmoer(model_path, dtype)
    model.train(meta.get("training", "0") == "1")
    targets = batch["targets"].round().long().reshape(-1)
    coefs = float(meta.get("lb_coef", 0.01)), float(meta.get("z_coef", 0.001))
    keys = {"seed": int(meta.get("seed", 0)), "step": int(meta.get("step", 0))}
    if model.cfg.kind == "vit":
        total, parts, logits, aux = model.loss_vit(batch["pixels"].to(dtype), targets, *coefs, **keys)
    else:
        ids = batch["ids"].round().long()
        mask = batch["mask"].reshape(ids.shape)
        total, parts, logits, aux = model.loss_lm(ids, targets, mask, *coefs, **keys)
    total.backward()
    out = {"logits": logits.detach(), "loss": total.detach().reshape(1)}
    for k, v in parts.items():
        out[k] = v.detach().reshape(1)
    for i, e in enumerate(aux["experts"]):
        out[f"experts.{i}"] = e.to(torch.float32)
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad.detach()
    return out


def group_of(key):
    if not key.startswith("grad."):
        return key if key in ("logits",) else "loss terms"
    n = key[5:]
    for tag in ("norm", "attn", "moe.w_router", "moe.router", "moe.experts", "moe.shared", "ffn", "emb", "head",
                "patch", "cls_token"):
        if tag in n:
            return "grad " + tag
    return "grad other"


def compare(ours, ref, other, group_of=group_of, skip=lambda k: k.startswith("experts.")):
    """max |a - ref| / max(max|ref|, tiny) per group, for ours and the f32 twin.
    Shared with parity_routers.py, which passes its own grouping and skip rule."""
    groups = {}
    for k, r in ref.items():
        if skip(k):
            continue
        r = r.double()
        scale = max(r.abs().max().item(), 1e-30)
        g = groups.setdefault(group_of(k), {"ours": 0.0, "twin_f32": 0.0})
        if k in ours:
            g["ours"] = max(g["ours"], (ours[k].double().reshape(r.shape) - r).abs().max().item() / scale)
        g["twin_f32"] = max(g["twin_f32"], (other[k].double() - r).abs().max().item() / scale)
    return groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for d in a.dirs:
        batch, meta = safetensors_io.load(os.path.join(d, "batch.safetensors"))
        model_path = os.path.join(d, "model.safetensors")
        res = {"f64": run(model_path, batch, meta, torch.float64),
               "f32": run(model_path, batch, meta, torch.float32)}
        flat = {f"{tag}.{k}": v for tag, r in res.items() for k, v in r.items()}
        safetensors_io.save(os.path.join(d, "twin.safetensors"), flat)
        ours_path = os.path.join(d, "ours.safetensors")
        if os.path.exists(ours_path):
            ours, _ = safetensors_io.load(ours_path)
            groups = compare(ours, res["f64"], res["f32"])
            print(os.path.basename(os.path.normpath(d)) + " " +
                  json.dumps({g: {k: float(f"{v:.3g}") for k, v in e.items()} for g, e in groups.items()}))


if __name__ == "__main__":
    main()
