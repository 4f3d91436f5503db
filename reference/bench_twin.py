#!/usr/bin/env python3
"""reference/bench_twin.py — time the PyTorch twin on the standard training config.

One training step = forward + cross-entropy + 0.01 lb + 0.001 z + backward +
global-norm clip (1.0) + AdamW (lr 3e-4, betas 0.9/0.95, wd 0.1, no decay on
norms), exactly the work bench/bench_train.cpp times for ours. Inference =
forward of the same batch under torch.inference_mode() (all B*T logits).
Prints one JSON object.

Usage: bench_twin.py [--device cpu|cuda] [--threads 2] [--warmup 1] [--steps 3] [--infer-steps 3] [sizes...]
With --device cuda every timed region ends with torch.cuda.synchronize().
"""
import argparse
import json
import os
import statistics
import sys
import time

# The twin needs torch and numpy (vmoer_twin imports both): without either,
# one clear line and exit status 1, not a traceback (scripts/gpu_check.sh logs it).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    from vmoer_twin import ModelConfig, VmoerTwin
except ImportError as e:
    sys.exit(f"bench_twin.py: cannot import {e.name or 'a module'} with {sys.executable} ({e}); "
             "use a Python that has PyTorch and numpy (PYTHON=... for scripts/gpu_check.sh)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--d-expert", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--infer-steps", type=int, default=3)
    ap.add_argument("--foreach", type=int, default=1, help="AdamW foreach implementation (1) or per-tensor loop (0)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab=a.vocab, max_seq=a.seq, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads,
                      n_experts=a.experts, top_k=a.top_k, d_expert=a.d_expert)
    dev = torch.device(a.device)
    if a.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"impl": "twin", "device": "cuda", "skipped": "torch.cuda.is_available() is False"}))
        return
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    model = VmoerTwin(cfg).to(dev)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                            foreach=bool(a.foreach))
    B, T = a.batch, a.seq
    ids = torch.randint(0, a.vocab, (B, T)).to(dev)
    targets = torch.randint(0, a.vocab, (B * T,)).to(dev)

    def train_step():
        opt.zero_grad(set_to_none=True)
        total, _, _, _ = model.loss_lm(ids, targets, None)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    model.train()
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        train_step()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    import resource  # peak RSS (KiB on Linux), the process's as bench_train reports its own
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model.eval()
    itimes = []
    with torch.inference_mode():
        model.forward_lm(ids)  # warm-up
        for _ in range(a.infer_steps):
            sync()
            t0 = time.perf_counter()
            model.forward_lm(ids)
            sync()
            itimes.append(time.perf_counter() - t0)
    blas = []
    try:
        from threadpoolctl import threadpool_info
        blas = [{k: d.get(k) for k in ("internal_api", "architecture", "num_threads", "filepath")}
                for d in threadpool_info()]
    except Exception as e:  # noqa: BLE001
        blas = [str(e)]
    tr, inf = statistics.median(times), statistics.median(itimes)
    print(json.dumps({
        "impl": "twin", "device": a.device, "torch": torch.__version__, "threads": a.threads, "foreach": a.foreach,
        "tokens_per_step": B * T, "train_ms": tr * 1e3, "train_tokens_per_s": B * T / tr,
        "train_ms_all": [t * 1e3 for t in times], "infer_ms": inf * 1e3, "infer_tokens_per_s": B * T / inf,
        "params": sum(p.numel() for p in model.parameters()), "blas": blas,
        "peak_rss_mib_train": rss_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


if __name__ == "__main__":
    main()
