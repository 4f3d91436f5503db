"""reference/vmoer_twin.py — the PyTorch twin of vmoer's model (nn/transformer.cpp,
nn/moe.cpp, nn/router.cpp, nn/routers/*.cpp), written the way a PyTorch user
would write it. Parameter names and shapes equal our ParamStore
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
  * router jitter (Switch) in training: u = x * (1 + j (2U - 1)); the router sees
    u, the experts x
  * routers (nn/router.h, nn/routers/*.cpp): "det"; "noisy" (Shazeer: l + eps *
    softplus(u W_noise) in training, = det in evaluation); the stochastic and
    Bayesian routers of docs/vmoer.md: "sample-k", "mc-dropout", "mfvr", "fcvr",
    "vtsr" (--temp-mode shared|per-expert, --temp-posterior point|lognormal,
    --vtsr-sampler gumbel|authors), with their closed-form KL terms / penalty, the
    residual mean on the frozen deterministic router, the prior centred on its
    logits, S-sample averaging (train_samples in training, samples in evaluation,
    as experiments/trainer.cpp) and loss = ce + lb_coef lb + z_coef z
    + beta KL_norm + penalty (KL_norm: token-mean or dataset, as the trainer)
  * random numbers: every router / jitter noise is drawn from a numpy port of
    vmoer's Philox-4x32-10 streams (core/philox.h, nn/router.h router_stream),
    keyed by (seed, layer, step, purpose), so the twin sees the noise vmoer sees:
    32-bit words, uniforms and normals bit-exactly (the normals' fixed-operation
    Box-Muller of core/philox.h ported float32 step by float32 step, fmaf exactly
    rounded); Gumbels through the C library's logf (ctypes), i.e. bit-exactly as
    well where vmoer calls the same libm (else float64 math rounded to float32,
    within 1-2 ulp). The variational routers' ε: token n's S·E normals one block
    at (n·S + s)·E + e (philox_sample_counter)
"""
import ctypes
import ctypes.util
import json
import math
from dataclasses import dataclass, field, fields

import numpy as np
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
class RouterConfig:  # nn/router.h RouterConfig; checkpoint metadata "router" (its field table, nn/router.h)
    name: str = "det"
    jitter: float = 0.0
    temp: float = 0.3
    dropout: float = 0.05
    prior_scale: float = 1.0
    samples: int = 35
    train_samples: int = 1
    temp_mode: str = "shared"
    temp_posterior: str = "point"
    temp_penalty: float = 1e-3
    temp_prior_scale: float = 1.0
    vtsr_sampler: str = "gumbel"
    bayes_layers: list = field(default_factory=list)

    @staticmethod
    def from_dict(d):
        names = {f.name for f in fields(RouterConfig)}
        r = RouterConfig(**{k: v for k, v in d.items() if k in names})
        r.bayes_layers = list(r.bayes_layers)
        return r


# ---- Philox-4x32-10 (port of core/philox.h) -------------------------------------------
# key = (seed lo, seed hi), counter = (block lo, block hi, stream lo, stream hi),
# block = offset / 4, word = offset % 4. uint32 arithmetic in uint64 numpy arrays;
# mulhilo = the 64-bit product split into halves.
_M32 = 0xFFFFFFFF


def philox4x32_10(ctr, k0, k1):
    """ctr: 4 arrays of uint32 counters (any common shape); k0, k1: ints -> 4 uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in ctr)
    k0, k1 = int(k0) & _M32, int(k1) & _M32
    m0, m1, mask, sh = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), np.uint64(_M32), np.uint64(32)
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2  # < 2^64: exact
        c0, c1, c2, c3 = (p1 >> sh) ^ c1 ^ np.uint64(k0), p1 & mask, (p0 >> sh) ^ c3 ^ np.uint64(k1), p0 & mask
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def philox_u32(seed, stream, offsets):
    """The 32-bit words at `offsets` (uint64 array) of stream `stream` under `seed`."""
    off = np.asarray(offsets, dtype=np.uint64)
    block = off >> np.uint64(2)
    mask = np.uint64(_M32)
    s = int(stream) & 0xFFFFFFFFFFFFFFFF
    ctr = [block & mask, block >> np.uint64(32), np.full_like(block, s & _M32), np.full_like(block, s >> 32)]
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    words = np.stack(philox4x32_10(ctr, seed & _M32, seed >> 32))
    return np.take_along_axis(words, (off & np.uint64(3)).astype(np.int64)[None], 0)[0]


def philox_uniforms(seed, stream, first, n):
    """float32 uniforms in (0, 1) at offsets [first, first + n): ((x >> 9) + 0.5) / 2^23, exact."""
    x = philox_u32(seed, stream, np.arange(first, first + n, dtype=np.uint64))
    return ((x >> np.uint32(9)).astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / 8388608.0)


try:  # the C library's float functions, as vmoer calls them (no -ffast-math, no libmvec)
    _libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    _LIBM = {}
    for _fn in ("logf", "sinf", "cosf"):
        f = getattr(_libm, _fn)
        f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
        _LIBM[_fn] = f
except (OSError, AttributeError):  # pragma: no cover
    _LIBM = None
LIBM_EXACT = _LIBM is not None


def _f32(fn, x):
    """Elementwise float32 logf/sinf/cosf of a float32 array."""
    x = np.asarray(x, dtype=np.float32)
    if _LIBM is not None:
        f = _LIBM[fn]
        return np.array([f(float(v)) for v in x.ravel()], dtype=np.float32).reshape(x.shape)
    g = {"logf": np.log, "sinf": np.sin, "cosf": np.cos}[fn]  # float64, rounded once
    return g(x.astype(np.float64)).astype(np.float32)


def _fmaf(a, b, c):
    """float32 fmaf(a, b, c), rounded once: a·b is exact in float64 (24 + 24 bits), the sum
    is rounded to odd in float64 (TwoSum's error decides), which then rounds to float32
    exactly as the single rounding would (53 >= 24 + 2)."""
    x = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    y = np.asarray(c, np.float32).astype(np.float64)
    x, y = np.broadcast_arrays(x, y)
    s = x + y
    yv = s - x
    err = (x - (s - yv)) + (y - yv)  # s + err == x + y exactly
    even = (s.view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


_F = np.float32


def philox_log(u):
    """core/philox.h philox_log: ln u = e·ln2 + ln m, m ∈ [√½, √2), ln m = f − f²/2 + f³ P(f)."""
    t = u.astype(np.float32).view(np.uint32).astype(np.int64) - 0x3F3504F3
    e = (t >> 23).astype(np.float32)
    f = ((t & 0x7FFFFF) + 0x3F3504F3).astype(np.uint32).view(np.float32) - _F(1.0)
    p = _F(7.0376836292e-2)
    for c in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
              2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        p = _fmaf(p, f, _F(c))
    z = f * f
    lnm = _fmaf(z * f, p, _fmaf(_F(-0.5), z, f))
    return _fmaf(e, _F(0.693359375), _fmaf(e, _F(-2.12194440e-4), lnm))


def philox_sincos_turns(k):
    """core/philox.h philox_sincos_turns: (cos, sin) of 2π((k + ½)·2^-23), reduced exactly in turns."""
    k = np.asarray(k, dtype=np.int64)
    q = (k + 0x100000) >> 21
    t = _fmaf((k - (q << 21)).astype(np.float32), _F(2.0 ** -23), _F(2.0 ** -24))
    x = t * _F(6.28318530717958647692)
    z = x * x
    s = _fmaf(_fmaf(_fmaf(_F(-1.9515295891e-4), z, _F(8.3321608736e-3)), z, _F(-1.6666654611e-1)), z * x, x)
    cp = _fmaf(_fmaf(_F(2.443315711809948e-5), z, _F(-1.388731625493765e-3)), z, _F(4.166664568298827e-2))
    c = _fmaf(cp, z * z, _fmaf(_F(-0.5), z, _F(1.0)))
    qm = q & 3
    swap = (qm & 1) == 1
    a, b = np.where(swap, s, c), np.where(swap, c, s)
    return np.where((qm == 1) | (qm == 2), -a, a), np.where(qm >= 2, -b, b)


def philox_normals(seed, stream, first, n):
    """philox_normal at indices [first, first + n): normal i is Box-Muller on the words at
    offsets 2*(i//2) (u1 = its uniform) and 2*(i//2)+1 (θ = 2π u2); even i the cosine,
    odd i the sine (core/philox.h, bit for bit)."""
    i = np.arange(first, first + n, dtype=np.uint64)
    base = (i >> np.uint64(1)) << np.uint64(1)
    w1, w2 = philox_u32(seed, stream, base), philox_u32(seed, stream, base + np.uint64(1))
    u1 = _fmaf((w1 >> np.uint32(9)).astype(np.float32), _F(2.0 ** -23), _F(2.0 ** -24))
    r = np.sqrt(_F(-2.0) * philox_log(u1))
    c, s = philox_sincos_turns((w2 >> np.uint32(9)).astype(np.int64))
    odd = (i & np.uint64(1)).astype(bool)
    return np.where(odd, r * s, r * c).astype(np.float32)


def sample_normals(seed, stream, S, N, cols):
    """(S*N, cols): row s*N + n = sample s of row n, at counters (n*S + s)*cols + c
    (core/philox.h philox_sample_counter: one row's S*cols normals one block)."""
    z = philox_normals(seed, stream, 0, S * N * cols).reshape(N, S, cols)
    return np.ascontiguousarray(z.transpose(1, 0, 2)).reshape(S * N, cols)


def philox_gumbels(seed, stream, first, n):
    """Gumbel(0, 1) = -logf(-logf(u)) at offsets [first, first + n) (float32)."""
    return -_f32("logf", -_f32("logf", philox_uniforms(seed, stream, first, n)))


def name_hash(s):
    """FNV-1a 64 (nn/params.cpp name_hash)."""
    h = 1469598103934665603
    for c in s.encode("utf-8"):
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def router_stream(seed, layer, step, purpose):
    """nn/router.cpp router_stream: name_hash("purpose/layer/step") ^ seed."""
    return name_hash(f"{purpose}/{layer}/{step}") ^ (int(seed) & 0xFFFFFFFFFFFFFFFF)


@dataclass
class RouteCtx:  # nn/router.h RouteCtx
    training: bool = False
    seed: int = 0
    step: int = 0
    layer: int = 0
    samples: int = 1


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


class _Lin(nn.Module):  # a parameter pair named like vmoer's: <prefix>.w (in, out) [and <prefix>.b]
    def __init__(self, n_in, n_out, bias=True):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_in, n_out))
        if bias:
            self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        y = x @ self.w
        return y + self.b if hasattr(self, "b") else y


class NoisyRouter(nn.Module):
    def __init__(self, C, E):
        super().__init__()
        self.w_noise = nn.Parameter(torch.zeros(C, E))


class VariationalLogitHeads(nn.Module):
    """MFVR / FCVR heads (nn/routers/variational_logits.cpp): trunk h = ReLU(u W_t) (no bias),
    mean head Δμ = h W_μ + b_μ, and log σ² = h W_σ + b_σ (mf) or the packed Cholesky
    factor v = h W_L + b_L (fc)."""

    def __init__(self, C, E, full):
        super().__init__()
        H = max(1, C // 4)
        self.trunk = _Lin(C, H, bias=False)
        self.mu = _Lin(H, E)
        if full:
            self.chol = _Lin(H, E * (E + 1) // 2)
        else:
            self.logvar = _Lin(H, E)


class TempNet(nn.Module):
    """VTSR temperature network (nn/routers/vtsr.cpp): a(u) = ReLU(u W_1 + b_1) W_2 + b_2,
    `out` outputs (1 shared or E per expert), twice that for the log-normal posterior (m, ρ)."""

    def __init__(self, C, out):
        super().__init__()
        H = max(1, C // 4)
        self.w1 = nn.Parameter(torch.zeros(C, H))
        self.b1 = nn.Parameter(torch.zeros(H))
        self.w2 = nn.Parameter(torch.zeros(H, out))
        self.b2 = nn.Parameter(torch.zeros(out))

    def forward(self, u):
        return torch.relu(u @ self.w1 + self.b1) @ self.w2 + self.b2


class _Temp(nn.Module):
    def __init__(self, C, out):
        super().__init__()
        self.temp = TempNet(C, out)


def _const(a, like):
    """A float32 numpy array (vmoer's noise) as a constant of like's dtype and device."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype=like.dtype, device=like.device)


def _topk_renormalised(probs, K):
    """top-K of probs (ties -> lower index: a stable descending sort), gates p_K / Σ p_K;
    margin = smallest gap between the K-th and (K+1)-th probability (how far from a tie)."""
    sp, si = torch.sort(probs, dim=-1, descending=True, stable=True)
    top_p, top_i = sp[:, :K], si[:, :K]
    margin = (sp[:, K - 1] - sp[:, K]).min().item() if K < probs.shape[1] and probs.shape[0] else math.inf
    return top_i, top_p / top_p.sum(-1, keepdim=True), margin


def _gumbel_topk(z, K, seed, stream):
    """Gumbel-top-K (nn/routers/selection.cpp gumbel_topk): the K largest of z + G, G from
    offset n*E + e of the stream; ties -> lower index. margin: smallest K-th vs (K+1)-th key gap."""
    N, E = z.shape
    g = _const(philox_gumbels(seed, stream, 0, N * E).reshape(N, E), z)
    sk, order = torch.sort(z.detach() + g, dim=-1, descending=True, stable=True)
    margin = (sk[:, K - 1] - sk[:, K]).min().item() if K < E and N else math.inf
    return order[:, :K], margin


def _sequential_sample(z, K, seed, stream):
    """The authors' sampler (selection.cpp sequential_sample): K inverse-CDF draws without
    replacement from softmax(z), uniform j of row n at offset n*E + j, weights
    exp(z - max of the remaining z) in float64. margin: the smallest distance of a draw
    from a cell boundary of the cumulative weights, relative to their total."""
    N, E = z.shape
    zz = z.detach().to(torch.float64).cpu().numpy()
    uni = philox_uniforms(seed, stream, 0, N * E).reshape(N, E).astype(np.float64)
    out = np.zeros((N, K), dtype=np.int64)
    margin = math.inf
    for n in range(N):
        taken = np.zeros(E, dtype=bool)
        for j in range(K):
            mx = zz[n][~taken].max()
            w = np.where(taken, 0.0, np.exp(zz[n] - mx))
            total = 0.0
            for e in range(E):
                total += w[e]
            u = uni[n, j] * total
            cum, pick = 0.0, -1
            for e in range(E):
                if w[e] <= 0:
                    continue
                cum += w[e]
                margin = min(margin, abs(uni[n, j] * total - cum) / total) if e < E - 1 else margin
                pick = e
                if u < w[e]:
                    break
                u -= w[e]
            out[n, j] = pick
            taken[pick] = True
    return torch.from_numpy(out).to(z.device), margin


def _masked_sum(v, real):
    """Σ over real tokens of a per-token vector (padding rows never enter KL or penalty)."""
    return v.sum() if real is None else v[real].sum()


class MoE(nn.Module):
    def __init__(self, cfg, rcfg, router, std_in, std_out):
        super().__init__()
        C, E, Fd = cfg.d_model, cfg.n_experts, cfg.d_expert
        self.E, self.K, self.cf, self.jitter = E, cfg.top_k, cfg.capacity_factor, rcfg.jitter
        self.kind, self.rcfg = router, rcfg
        self.w_router = _normal((C, E), std_in)
        self.experts = Experts(E, C, Fd, cfg.act, std_in, std_out)
        if cfg.shared_expert:
            self.shared = FFN(C, Fd, cfg.act, std_in, std_out)
        if router == "noisy":
            self.router = NoisyRouter(C, E)
        elif router in ("mfvr", "fcvr"):
            self.router = VariationalLogitHeads(C, E, router == "fcvr")
        elif router == "vtsr":
            out = E if rcfg.temp_mode == "per-expert" else 1
            self.router = _Temp(C, out * (2 if rcfg.temp_posterior == "lognormal" else 1))
        elif router not in ("det", "sample-k", "mc-dropout"):
            raise ValueError(f"unknown router '{router}'")

    # ---- routing: one method per router of nn/routers/ -----------------------------
    def route(self, u, real, ctx):
        """u: (N, C) router input. Returns a dict: experts (N, K) long, gates (N, K), probs
        (N, E) (the distribution top-K / sampling used), logits (N, E) = u W_r, kl and
        penalty (scalars or None), per-token diagnostics (detached) and `margin`, the
        distance of the discrete choices from a tie (for the parity test's sanity)."""
        E, K, rc = self.E, self.K, self.rcfg
        N = u.shape[0]
        logits = u @ self.w_router  # l_det (N, E): the auxiliary losses always use these
        r = {"logits": logits, "kl": None, "penalty": None}
        kind = self.kind
        if kind in ("det", "noisy"):
            h = logits
            if kind == "noisy" and ctx.training:
                eps = philox_normals(ctx.seed, router_stream(ctx.seed, ctx.layer, ctx.step, "noisy"), 0, N * E)
                h = logits + _const(eps.reshape(N, E), u) * F.softplus(u @ self.router.w_noise)
            r["probs"] = torch.softmax(h, dim=-1)
            r["experts"], r["gates"], r["margin"] = _topk_renormalised(r["probs"], K)
        elif kind == "sample-k":
            # z = l / T with a fixed T; K without replacement from softmax(z); gates softmax over the K z's
            z = logits * (1.0 / rc.temp)
            r["probs"] = torch.softmax(z, dim=-1)
            r["experts"], r["margin"] = self._select(z, ctx, "sample-k")
            r["gates"] = torch.softmax(z.gather(1, r["experts"]), dim=-1)
            r["temperature"] = torch.full((N,), rc.temp, dtype=u.dtype)
        elif kind == "mc-dropout":
            # l̄ = (1/S) Σ_s dropout_s(u) W_r (inverted dropout, uniform i of the (S*N, C) tiled
            # input at offset i of the stream, kept when u >= p); p = softmax(l̄); top-K renormalised
            S, p = max(1, ctx.samples), rc.dropout
            us = u.repeat(S, 1)
            if p > 0:
                uni = philox_uniforms(ctx.seed, router_stream(ctx.seed, ctx.layer, ctx.step, "mc-dropout"), 0, us.numel())
                keep = (uni >= np.float32(p)).astype(np.float32).reshape(us.shape)
                us = us * _const(keep, u) * (1.0 / (1.0 - p))
            lbar = (us @ self.w_router).view(S, N, E).mean(0)
            r["probs"] = torch.softmax(lbar, dim=-1)
            r["experts"], r["gates"], r["margin"] = _topk_renormalised(r["probs"], K)
        elif kind in ("mfvr", "fcvr"):
            self._route_variational_logits(u, logits, real, ctx, r)
        elif kind == "vtsr":
            self._route_vtsr(u, logits, real, ctx, r)
        return r

    def _select(self, z, ctx, purpose):
        stream = router_stream(ctx.seed, ctx.layer, ctx.step, purpose)
        if self.rcfg.vtsr_sampler == "authors":
            return _sequential_sample(z, self.K, ctx.seed, stream)
        return _gumbel_topk(z, self.K, ctx.seed, stream)

    def _route_variational_logits(self, u, l_det, real, ctx, r):
        """prior N(l_det, s² I); q = N(l_det + Δμ, Σ); l*_s = mean + σ ⊙ ε_s (mf) or + L ε_s (fc),
        ε: (S*N, E) normals of the "logit-eps" stream (row s*N + n = sample s of token n, at
        counters (n*S + s)*E + e: sample_normals); p̄ = mean_s softmax(l*_s)."""
        E, K = self.E, self.K
        N, S, s = u.shape[0], max(1, ctx.samples), self.rcfg.prior_scale
        hd = self.router
        h = torch.relu(hd.trunk(u))
        dmu = hd.mu(h)
        mean = l_det + dmu
        eps = _const(sample_normals(ctx.seed, router_stream(ctx.seed, ctx.layer, ctx.step, "logit-eps"), S, N, E), u)
        s2 = s * s
        if self.kind == "mfvr":
            logvar = hd.logvar(h)
            sigma = torch.exp(0.5 * logvar)
            var = sigma ** 2
            noise = sigma.repeat(S, 1) * eps
            # KL(N(m, σ²) || N(m0, s²)) per logit = ½ (σ²/s² + (m − m0)²/s² − 1 − log σ² + log s²)
            kl_tok = 0.5 * (var / s2 + dmu ** 2 / s2 - 1.0 - logvar + math.log(s2)).sum(1)
            r["q_std"] = sigma.detach()
        else:
            # L: row-major packing of the lower triangle (i, j <= i), diagonal exponentiated
            ti, tj = torch.tril_indices(E, E)
            raw = hd.chol(h)
            vals = torch.where(ti == tj, torch.exp(raw), raw)
            L = u.new_zeros(N, E, E)
            L[:, ti, tj] = vals
            noise = (L.repeat(S, 1, 1) @ eps.unsqueeze(-1)).squeeze(-1)  # L ε
            cov = L @ L.transpose(1, 2)
            var = torch.diagonal(cov, dim1=1, dim2=2)
            # KL(N(m, Σ) || N(m0, s² I)) = ½ (tr Σ / s² + ‖m − m0‖²/s² − E + E log s² − log det Σ)
            logdet = 2.0 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
            kl_tok = 0.5 * (var.sum(1) / s2 + (dmu ** 2).sum(1) / s2 - E + E * math.log(s2) - logdet)
            r["q_scale_tril"] = L.detach()
        lstar = mean.repeat(S, 1) + noise
        r["probs"] = torch.softmax(lstar, dim=-1).view(S, N, E).mean(0)
        r["experts"], r["gates"], r["margin"] = _topk_renormalised(r["probs"], K)
        r["kl_tok"] = kl_tok
        r["kl"] = _masked_sum(kl_tok, real)
        r["post_mean"] = mean.detach()
        r["post_std"] = torch.sqrt(var).detach()
        r["ilv"] = var.sum(1).detach()
        r["prior_mean"], r["prior_std"] = l_det.detach(), s

    def _route_vtsr(self, u, l, real, ctx, r):
        """T from the temperature net: point T = softplus(a) + 1e-6 with penalty
        λ/N_real Σ_real Σ_j −log T_j, or log-normal log T = m + sqrt(e^ρ) ξ (ξ: "vtsr-logT"
        stream, (N, out)) with KL to N(0, s_T²); z = l / T; K sampled without replacement
        from softmax(z) ("vtsr-select" stream); gates softmax over the selected z."""
        rc = self.rcfg
        N = u.shape[0]
        out = self.E if rc.temp_mode == "per-expert" else 1
        a = self.router.temp(u)
        if rc.temp_posterior == "point":
            T = F.softplus(a) + 1e-6
            n_real = max(1.0, float(N if real is None else real.numel()))
            r["penalty"] = rc.temp_penalty / n_real * _masked_sum(-torch.log(T).sum(1), real)
        else:
            m, rho = a[:, :out], a[:, out:]
            xi = philox_normals(ctx.seed, router_stream(ctx.seed, ctx.layer, ctx.step, "vtsr-logT"), 0, N * out)
            T = torch.exp(m + torch.exp(0.5 * rho) * _const(xi.reshape(N, out), u))
            s2 = rc.temp_prior_scale ** 2
            kl_tok = 0.5 * (torch.exp(rho) / s2 + m ** 2 / s2 - 1.0 - rho + math.log(s2)).sum(1)
            r["kl_tok"] = kl_tok
            r["kl"] = _masked_sum(kl_tok, real)
            r["q_logT"] = (m.detach(), torch.exp(0.5 * rho).detach())
            r["prior_std"] = rc.temp_prior_scale
        z = l / T  # T (N, 1) broadcasts over the experts
        r["probs"] = torch.softmax(z, dim=-1)
        r["experts"], r["margin"] = self._select(z, ctx, "vtsr-select")
        r["gates"] = torch.softmax(z.gather(1, r["experts"]), dim=-1)
        r["temperature"] = T.mean(1).detach()

    def forward(self, x, real, ctx=None):
        """x: (N, C); real: (n_real,) long rows of real tokens (None = all); ctx: RouteCtx.
        Returns out (N, C), lb loss, z loss, the route dict (experts (N, K), gates, kl, ...)."""
        ctx = ctx or RouteCtx(training=self.training)
        N, C = x.shape
        E, K = self.E, self.K
        u = x
        if ctx.training and self.jitter > 0:  # Switch jitter u = x ⊙ (1 + j (2U − 1)), "jitter" stream
            uni = philox_uniforms(ctx.seed, router_stream(ctx.seed, ctx.layer, ctx.step, "jitter"), 0, N * C)
            noise = np.float32(1.0) + np.float32(self.jitter) * (np.float32(2.0) * uni - np.float32(1.0))
            u = x * _const(noise.reshape(N, C), x)
        r = self.route(u, real, ctx)
        logits, top_i, gates = r["logits"], r["experts"], r["gates"]

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
        return out, lb, z, r


class Block(nn.Module):
    def __init__(self, cfg, layer, rcfg, std_in, std_out):
        super().__init__()
        C = cfg.d_model
        self.layer = layer
        self.norm1 = Norm(C, cfg.norm)
        self.attn = Attention(C, cfg.n_heads, std_in, std_out)
        self.norm2 = Norm(C, cfg.norm)
        if cfg.is_moe_layer(layer):
            bayes = not rcfg.bayes_layers or layer in rcfg.bayes_layers
            self.moe = MoE(cfg, rcfg, rcfg.name if bayes else "det", std_in, std_out)
        else:
            self.ffn = FFN(C, cfg.d_expert, cfg.act, std_in, std_out)

    def forward(self, x, causal, real, aux, ctx):  # x: (B, T, C)
        B, T, C = x.shape
        x = x + self.attn(self.norm1(x), causal)
        h = self.norm2(x)
        if hasattr(self, "moe"):
            lctx = RouteCtx(ctx.training, ctx.seed, ctx.step, self.layer, ctx.samples)
            f, lb, z, r = self.moe(h.reshape(B * T, C), real, lctx)
            aux["lb"].append(lb)
            aux["z"].append(z)
            aux["experts"].append(r["experts"])
            aux["routes"].append(r)
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

    def _ctx(self, seed, step, samples):
        """Router call context as vmoer's trainer sets it: S = train_samples in training,
        samples in evaluation, unless given."""
        if samples is None:
            samples = self.rcfg.train_samples if self.training else self.rcfg.samples
        return RouteCtx(self.training, int(seed), int(step), 0, int(samples))

    def _blocks(self, x, causal, real, ctx):
        aux = {"lb": [], "z": [], "experts": [], "routes": []}
        for blk in self.layers:
            x = blk(x, causal, real, aux, ctx)
        zero = x.new_zeros(())
        aux["lb"] = sum(aux["lb"], zero)
        aux["z"] = sum(aux["z"], zero)
        # Σ over Bayesian layers of the per-layer KL (Σ over real tokens) and penalties
        aux["kl"] = sum((r["kl"] for r in aux["routes"] if r["kl"] is not None), zero)
        aux["penalty"] = sum((r["penalty"] for r in aux["routes"] if r["penalty"] is not None), zero)
        aux["n_real"] = x.shape[0] * x.shape[1] if real is None else real.numel()
        return self.norm_f(x), aux

    def forward_lm(self, ids, mask=None, seed=0, step=0, samples=None):
        """ids: (B, T) long; mask: (B, T), nonzero = real token (None = all real); seed, step
        key the router noise streams, samples = S (default: the router config's, see _ctx).
        Returns logits (B*T, V) and aux {lb, z, kl, penalty, n_real, experts and routes: per
        MoE layer}."""
        B, T = ids.shape
        x = self.tok_emb[ids] + self.pos_emb[:T]
        real = None if mask is None else torch.nonzero(mask.reshape(-1) != 0).squeeze(1)
        h, aux = self._blocks(x, True, real, self._ctx(seed, step, samples))
        w = self.tok_emb.t() if self.cfg.tied_head else self.head.w
        return h.reshape(B * T, -1) @ w, aux

    def forward_vit(self, pixels, seed=0, step=0, samples=None):
        """pixels: (B, S*S) in [0, 1] -> logits (B, classes), aux."""
        S, P = self.cfg.image_size, self.cfg.patch
        G = S // P
        B = pixels.shape[0]
        patches = pixels.view(B, G, P, G, P).permute(0, 1, 3, 2, 4).reshape(B, G * G, P * P)
        e = patches @ self.patch.w + self.patch.b
        x = torch.cat([self.cls_token.expand(B, 1, -1), e], dim=1) + self.pos_emb
        h, aux = self._blocks(x, False, None, self._ctx(seed, step, samples))
        return h[:, 0] @ self.cls_head.w + self.cls_head.b, aux

    @staticmethod
    def _total(ce, aux, lb_coef, z_coef, beta, kl_norm, batches_per_epoch):
        """experiments/trainer.cpp run_train: loss = task + lb_coef lb + z_coef z + β KL_norm + penalty,
        KL_norm = KL / N_real (token-mean: real tokens routed per layer) or KL / batches per epoch."""
        if kl_norm == "token-mean":
            kl_term = aux["kl"] / float(max(1, aux["n_real"]))
        elif kl_norm == "dataset":
            kl_term = aux["kl"] / float(batches_per_epoch)
        else:
            raise ValueError(f"kl_norm '{kl_norm}' (token-mean, dataset)")
        total = ce + lb_coef * aux["lb"] + z_coef * aux["z"] + beta * kl_term + aux["penalty"]
        parts = {"ce": ce, "lb": aux["lb"], "z": aux["z"], "kl": aux["kl"], "kl_term": kl_term,
                 "penalty": aux["penalty"]}
        return total, parts

    def loss_lm(self, ids, targets, mask=None, lb_coef=0.01, z_coef=0.001, beta=0.0, kl_norm="token-mean",
                batches_per_epoch=1, seed=0, step=0, samples=None):
        """targets: (B*T) long, -100 = ignored. Returns total, parts, logits, aux."""
        logits, aux = self.forward_lm(ids, mask, seed, step, samples)
        if (targets != -100).any():
            ce = F.cross_entropy(logits, targets, ignore_index=-100)
        else:
            ce = logits.sum() * 0
        total, parts = self._total(ce, aux, lb_coef, z_coef, beta, kl_norm, batches_per_epoch)
        return total, parts, logits, aux

    def loss_vit(self, pixels, labels, lb_coef=0.01, z_coef=0.001, beta=0.0, kl_norm="token-mean",
                 batches_per_epoch=1, seed=0, step=0, samples=None):
        logits, aux = self.forward_vit(pixels, seed, step, samples)
        ce = F.cross_entropy(logits, labels)
        total, parts = self._total(ce, aux, lb_coef, z_coef, beta, kl_norm, batches_per_epoch)
        return total, parts, logits, aux

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
