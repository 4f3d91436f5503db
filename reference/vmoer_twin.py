"""reference/vmoer_twin.py — the PyTorch twin of vmoer's model (nn/transformer.cpp,
nn/moe.cpp, nn/routers/det.cpp, nn/routers/noisy.cpp), written the way a
PyTorch user would write it. Parameter names and shapes equal our ParamStore
names, so `load_vmoer(path)` reads a vmoer checkpoint (safetensors, model
config as JSON in metadata "model", router config in "router").

Conventions (identical to vmoer):
  * weights are (in, out): y = x @ W;  head = tok_emb transposed when tied
  * lm:  x = tok_emb[ids] + pos_emb[:T];  vit: 4x4 patches @ patch.w + patch.b,
         class token first, + pos_emb, bidirectional attention, cls_head on row 0
  * pre-norm block: h = x + Attn(Norm1(x)); y = h + FFN(Norm2(h))
  * RMSNorm: x * g / sqrt(mean(x^2) + 1e-6);  LayerNorm eps 1e-5
  * attention: one fused W_qkv (C, 3C) sliced into q, k, v in that order, heads
    (B, T, H, D) -> (B, H, T, D), softmax(q k^T / sqrt(D) [causal]) v, then W_o
  * MoE: l = u W_r, p = softmax(l), top-K of p (ties -> lower index), gates
    g = p_top / sum(p_top); experts GELU(tanh) 2-layer MLP w1 (E,C,F), w2 (E,F,C)
    or SwiGLU silu(x w1) * (x w_up) then w2; optional always-on shared expert;
    dispatch grouped by expert (stable sort by expert, per-expert matmul on a
    contiguous group, index_add back), capacity factor cf > 0 keeps the first
    ceil(cf * N_real * K / E) assignments of each expert in token order
  * padding tokens (mask 0) are not dispatched to experts and do not enter the
    auxiliary losses; Switch load balancing E * sum_e f_e P_e (f_e: share of the
    N_real*K assignments before capacity, no gradient; P_e: mean softmax of the
    deterministic logits over real tokens); z-loss mean over real tokens of
    logsumexp(l)^2; both summed over MoE layers
  * routers: "det"; "noisy" (Shazeer: l + eps * softplus(u W_noise) in training,
    = det in evaluation; its noise comes from torch, not our Philox streams).
    Bayesian routers are not part of the twin.
"""
import json
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # both as a package module and as a script next to it
    from . import safetensors_io
except ImportError:  # pragma: no cover
    import safetensors_io


@dataclass
class ModelConfig:
    kind: str = "lm"
    vocab: int = 259
    max_seq: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    norm: str = "rms"
    tied_head: bool = True
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 512
    act: str = "gelu"
    shared_expert: bool = False
    moe_layers: list = field(default_factory=list)
    capacity_factor: float = 0.0
    image_size: int = 28
    patch: int = 4
    n_classes: int = 10

    @staticmethod
    def from_dict(d):
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in d.items() if k in names})

    def is_moe_layer(self, l):
        return not self.moe_layers or l in self.moe_layers


@dataclass
class RouterConfig:
    name: str = "det"
    jitter: float = 0.0
    bayes_layers: list = field(default_factory=list)

    @staticmethod
    def from_dict(d):
        return RouterConfig(name=d.get("name", "det"), jitter=d.get("jitter", 0.0),
                            bayes_layers=list(d.get("bayes_layers", [])))


def _normal(shape, std):
    return nn.Parameter(torch.randn(*shape) * std)


class Norm(nn.Module):
    def __init__(self, C, kind):
        super().__init__()
        self.kind = kind
        self.g = nn.Parameter(torch.ones(C))
        if kind == "layer":
            self.b = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        if self.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), self.g, self.b, eps=1e-5)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g


class Attention(nn.Module):
    def __init__(self, C, H, std_in, std_out):
        super().__init__()
        self.H = H
        self.w_qkv = _normal((C, 3 * C), std_in)
        self.w_o = _normal((C, C), std_out)

    def forward(self, x, causal):  # x: (B, T, C)
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = (x @ self.w_qkv).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        y = torch.softmax(s, dim=-1) @ v  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, C) @ self.w_o


def _mlp(x, w1, w2, w_up, act):
    h = x @ w1
    h = F.silu(h) * (x @ w_up) if act == "swiglu" else F.gelu(h, approximate="tanh")
    return h @ w2


class FFN(nn.Module):  # dense FFN (non-MoE layers) and the shared expert: (C, F), (F, C)
    def __init__(self, C, Fd, act, std_in, std_out):
        super().__init__()
        self.act = act
        self.w1 = _normal((C, Fd), std_in)
        if act == "swiglu":
            self.w_up = _normal((C, Fd), std_in)
        self.w2 = _normal((Fd, C), std_out)

    def forward(self, x):
        return _mlp(x, self.w1, self.w2, getattr(self, "w_up", None), self.act)


class Experts(nn.Module):  # w1 (E, C, F), w_up (E, C, F), w2 (E, F, C)
    def __init__(self, E, C, Fd, act, std_in, std_out):
        super().__init__()
        self.act = act
        self.w1 = _normal((E, C, Fd), std_in)
        if act == "swiglu":
            self.w_up = _normal((E, C, Fd), std_in)
        self.w2 = _normal((E, Fd, C), std_out)

    def forward(self, xs, counts):
        """xs: (M, C) rows grouped by expert, counts: E python ints -> (M, C)."""
        outs, start = [], 0
        w_up = getattr(self, "w_up", None)
        for e, n in enumerate(counts):
            if n == 0:
                continue
            outs.append(_mlp(xs[start:start + n], self.w1[e], self.w2[e],
                             None if w_up is None else w_up[e], self.act))
            start += n
        return torch.cat(outs) if outs else xs.new_zeros(0, xs.shape[1])


class NoisyRouter(nn.Module):
    def __init__(self, C, E):
        super().__init__()
        self.w_noise = nn.Parameter(torch.zeros(C, E))


class MoE(nn.Module):
    def __init__(self, cfg, router, jitter, std_in, std_out):
        super().__init__()
        C, E, Fd = cfg.d_model, cfg.n_experts, cfg.d_expert
        self.E, self.K, self.cf, self.jitter = E, cfg.top_k, cfg.capacity_factor, jitter
        self.w_router = _normal((C, E), std_in)
        self.experts = Experts(E, C, Fd, cfg.act, std_in, std_out)
        if cfg.shared_expert:
            self.shared = FFN(C, Fd, cfg.act, std_in, std_out)
        if router == "noisy":
            self.router = NoisyRouter(C, E)
        elif router != "det":
            raise ValueError(f"router '{router}' is not part of the twin (det, noisy)")

    def forward(self, x, real):
        """x: (N, C); real: (n_real,) long rows of real tokens (None = all).
        Returns out (N, C), lb loss, z loss, experts (N, K)."""
        N, C = x.shape
        E, K = self.E, self.K
        u = x
        if self.training and self.jitter > 0:
            u = x * torch.empty_like(x).uniform_(1 - self.jitter, 1 + self.jitter)
        logits = u @ self.w_router  # (N, E)
        h = logits
        if self.training and hasattr(self, "router"):
            h = logits + torch.randn_like(logits) * F.softplus(u @ self.router.w_noise)
        probs = torch.softmax(h, dim=-1)
        # top-K with ties to the lower index: a stable descending sort keeps index order among equals
        top_p, top_i = torch.sort(probs, dim=-1, descending=True, stable=True)
        top_p, top_i = top_p[:, :K], top_i[:, :K]
        gates = top_p / top_p.sum(-1, keepdim=True)  # (N, K)

        # ---- dispatch grouped by expert (Mixtral / megablocks style) ----
        rows = torch.arange(N, device=x.device) if real is None else real
        n_real = rows.numel()
        flat_e = top_i[rows].reshape(-1)                                          # (n_real*K) token-major
        flat_slot = (rows[:, None] * K + torch.arange(K, device=x.device)).reshape(-1)
        wanted = torch.bincount(flat_e, minlength=E)
        order = torch.argsort(flat_e, stable=True)                                # group by expert, token order kept
        sorted_e, slot = flat_e[order], flat_slot[order]
        if self.cf > 0:
            cap = math.ceil(self.cf * (n_real * K) / E)
            starts = torch.cumsum(wanted, 0) - wanted
            keep = (torch.arange(sorted_e.numel(), device=x.device) - starts[sorted_e]) < cap
            sorted_e, slot = sorted_e[keep], slot[keep]
            counts = torch.clamp(wanted, max=cap)
        else:
            counts = wanted
        tok = torch.div(slot, K, rounding_mode="floor")
        ys = self.experts(x[tok], counts.tolist())                                # (M, C)
        ys = ys * gates.reshape(-1)[slot].unsqueeze(1)
        out = torch.zeros_like(x).index_add(0, tok, ys)
        if hasattr(self, "shared"):
            out = out + self.shared(x)

        # ---- auxiliary losses over real tokens ----
        if n_real > 0:
            f = wanted.to(x.dtype) / (n_real * K)
            p_mean = torch.softmax(logits[rows], dim=-1).mean(0)
            lb = E * (f * p_mean).sum()
            z = torch.logsumexp(logits[rows], dim=-1).pow(2).mean()
        else:
            lb = z = x.new_zeros(())
        return out, lb, z, top_i


class Block(nn.Module):
    def __init__(self, cfg, layer, rcfg, std_in, std_out):
        super().__init__()
        C = cfg.d_model
        self.norm1 = Norm(C, cfg.norm)
        self.attn = Attention(C, cfg.n_heads, std_in, std_out)
        self.norm2 = Norm(C, cfg.norm)
        if cfg.is_moe_layer(layer):
            bayes = not rcfg.bayes_layers or layer in rcfg.bayes_layers
            self.moe = MoE(cfg, rcfg.name if bayes else "det", rcfg.jitter, std_in, std_out)
        else:
            self.ffn = FFN(C, cfg.d_expert, cfg.act, std_in, std_out)

    def forward(self, x, causal, real, aux):  # x: (B, T, C)
        B, T, C = x.shape
        x = x + self.attn(self.norm1(x), causal)
        h = self.norm2(x)
        if hasattr(self, "moe"):
            f, lb, z, experts = self.moe(h.reshape(B * T, C), real)
            aux["lb"].append(lb)
            aux["z"].append(z)
            aux["experts"].append(experts)
            f = f.view(B, T, C)
        else:
            f = self.ffn(h)
        return x + f


class Patch(nn.Module):
    def __init__(self, pp, C, std_in):
        super().__init__()
        self.w = _normal((pp, C), std_in)
        self.b = nn.Parameter(torch.zeros(C))


class ClsHead(nn.Module):
    def __init__(self, C, n, std_in):
        super().__init__()
        self.w = _normal((C, n), std_in)
        self.b = nn.Parameter(torch.zeros(n))


class Head(nn.Module):
    def __init__(self, C, V, std_in):
        super().__init__()
        self.w = _normal((C, V), std_in)


class VmoerTwin(nn.Module):
    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig = None):
        super().__init__()
        rcfg = rcfg or RouterConfig()
        self.cfg, self.rcfg = cfg, rcfg
        C = cfg.d_model
        std_in, std_out = 0.02, 0.02 / math.sqrt(2.0 * cfg.n_layers)
        if cfg.kind == "lm":
            self.tok_emb = _normal((cfg.vocab, C), std_in)
            self.pos_emb = _normal((cfg.max_seq, C), std_in)
        else:
            self.patch = Patch(cfg.patch * cfg.patch, C, std_in)
            self.cls_token = _normal((1, 1, C), std_in)
            n_patches = (cfg.image_size // cfg.patch) ** 2
            self.pos_emb = _normal((n_patches + 1, C), std_in)
        self.layers = nn.ModuleList(Block(cfg, l, rcfg, std_in, std_out) for l in range(cfg.n_layers))
        self.norm_f = Norm(C, cfg.norm)
        if cfg.kind == "lm" and not cfg.tied_head:
            self.head = Head(C, cfg.vocab, std_in)
        if cfg.kind == "vit":
            self.cls_head = ClsHead(C, cfg.n_classes, std_in)

    def _blocks(self, x, causal, real):
        aux = {"lb": [], "z": [], "experts": []}
        for blk in self.layers:
            x = blk(x, causal, real, aux)
        zero = x.new_zeros(())
        aux["lb"] = sum(aux["lb"], zero)
        aux["z"] = sum(aux["z"], zero)
        return self.norm_f(x), aux

    def forward_lm(self, ids, mask=None):
        """ids: (B, T) long; mask: (B, T), nonzero = real token (None = all real).
        Returns logits (B*T, V) and aux {lb, z, experts: per MoE layer (B*T, K)}."""
        B, T = ids.shape
        x = self.tok_emb[ids] + self.pos_emb[:T]
        real = None if mask is None else torch.nonzero(mask.reshape(-1) != 0).squeeze(1)
        h, aux = self._blocks(x, True, real)
        w = self.tok_emb.t() if self.cfg.tied_head else self.head.w
        return h.reshape(B * T, -1) @ w, aux

    def forward_vit(self, pixels):
        """pixels: (B, S*S) in [0, 1] -> logits (B, classes), aux."""
        S, P = self.cfg.image_size, self.cfg.patch
        G = S // P
        B = pixels.shape[0]
        patches = pixels.view(B, G, P, G, P).permute(0, 1, 3, 2, 4).reshape(B, G * G, P * P)
        e = patches @ self.patch.w + self.patch.b
        x = torch.cat([self.cls_token.expand(B, 1, -1), e], dim=1) + self.pos_emb
        h, aux = self._blocks(x, False, None)
        return h[:, 0] @ self.cls_head.w + self.cls_head.b, aux

    def loss_lm(self, ids, targets, mask=None, lb_coef=0.01, z_coef=0.001):
        """targets: (B*T) long, -100 = ignored. Returns total, parts, logits, aux."""
        logits, aux = self.forward_lm(ids, mask)
        if (targets != -100).any():
            ce = F.cross_entropy(logits, targets, ignore_index=-100)
        else:
            ce = logits.sum() * 0
        total = ce + lb_coef * aux["lb"] + z_coef * aux["z"]
        return total, {"ce": ce, "lb": aux["lb"], "z": aux["z"]}, logits, aux

    def loss_vit(self, pixels, labels, lb_coef=0.01, z_coef=0.001):
        logits, aux = self.forward_vit(pixels)
        ce = F.cross_entropy(logits, labels)
        total = ce + lb_coef * aux["lb"] + z_coef * aux["z"]
        return total, {"ce": ce, "lb": aux["lb"], "z": aux["z"]}, logits, aux

    def param_groups(self, weight_decay):
        """AdamW groups as vmoer's nn/optim.cpp: names containing "norm" or ending in ".b" get no decay."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (no_decay if ("norm" in n or n.endswith(".b")) else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_vmoer(path, dtype=torch.float32):
    """Build the twin from a vmoer checkpoint (optimizer state "__adam_*" is ignored)."""
    tensors, meta = safetensors_io.load(path)
    cfg = ModelConfig.from_dict(json.loads(meta["model"]))
    rcfg = RouterConfig.from_dict(json.loads(meta["router"])) if "router" in meta else RouterConfig()
    model = VmoerTwin(cfg, rcfg)
    state = {k: v for k, v in tensors.items() if not k.startswith("__")}
    model.load_state_dict(state, strict=True)
    return model.to(dtype)
