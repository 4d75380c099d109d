"""Train a TopK SAE the way OpenAI trained its v5 SAEs (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"), on a tensor of activations ``[N, d_in]``; the result is an :class:`~saesteer.saes.base.SAE`
with activation ``topk`` and normalisation ``layer_norm``.

The recipe, and why:

* Inputs are layer-normalised per token exactly as the SAE interface does (mean, unbiased std, eps 1e-5),
  so the trained weights mean the same thing when the SAE is loaded and used.
* ``b_dec`` (OpenAI's pre-bias) starts at the geometric median of the normalised inputs: the encoder sees
  centred data from step one.
* Decoder rows start as random unit vectors and the encoder as the decoder's transpose, so each latent
  starts out reading the direction it writes.
* Decoder rows stay at unit norm: the gradient component along each row is removed before the Adam step
  and the rows are renormalised after it (latent values, not row norms, carry the scale).
* AuxK: latents that have not fired for ``dead_tokens`` tokens are dead; the top ``k_aux`` of their
  pre-activations reconstruct the main reconstruction's error, weighted ``aux_coef`` (1/32). This gives
  dead latents gradient and revives them.
* Adam, no weight decay; the learning rate warms up briefly and decays linearly to 0 over the last part
  of training (a decay at the end buys a little variance explained at no cost).

Speed (CPU): the only dense work is the encoder matmul ``[B, d_in] @ [d_in, d_sae]`` and the top-k over
its output (about a third of a step). The backward pass is written out by hand and touches only the
``B * k`` chosen latents (gathered rows, ``index_add_``), never dense ``[B, d_sae]`` gradients. Batches are
small (512 tokens) and many: for the same compute, this trains these small SAEs to a higher variance
explained than large batches (stories260K, 1.4M tokens: 0.97 with 512-token batches, 0.93 with 4096). No
bf16: matmuls are about a tenth of a step, so it would save little, and it would perturb the top-k.

Determinism: initialisation and shuffling use their own ``torch.Generator`` seeded with ``seed``, and the
loop runs under ``torch.use_deterministic_algorithms``; the same seed on the same machine and thread
count gives identical weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.saes.base import LN_EPS, SAE, SAEConfig
from saesteer.training.config import TrainConfig

__all__ = ["train_topk_sae", "TrainStats", "StepInfo", "layer_norm", "geometric_median", "evaluate_sae",
           "default_lr"]

EVAL_TOKENS = 1 << 18
"""Tokens of the training data used for the final statistics when no ``eval_acts`` are given."""


@dataclass(frozen=True)
class StepInfo:
    """What the progress bar shows, passed to ``callback`` after every step."""

    step: int
    steps: int
    tokens: int
    loss: float
    """MSE of this batch over the data's variance, in layer-normalised space (fraction unexplained)."""
    aux_loss: float
    variance_explained: float
    """``1 - loss``: this batch, normalised space (the final statistics use raw activations)."""
    l0: float
    dead: int
    """Latents that have not fired for ``dead_tokens`` tokens."""
    lr: float


@dataclass
class TrainStats:
    """How training went. The first three are measured after training, by the returned SAE, on raw
    activations (``eval_acts``, or up to ``EVAL_TOKENS`` tokens of the training data)."""

    variance_explained: float
    """``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the evaluation tokens, in activation space."""
    l0: float
    """Mean number of non-zero latents per token (at most k)."""
    dead_fraction: float
    """Fraction of latents that are zero on every evaluation token."""
    loss_history: list[float] = field(default_factory=list)
    """Per step: normalised MSE of the batch (see ``StepInfo.loss``)."""
    aux_loss_history: list[float] = field(default_factory=list)
    """Per step: AuxK loss (0 while no latent is dead)."""
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    eval_tokens: int = 0


def layer_norm(x: Tensor) -> Tensor:
    """``[..., d] -> [..., d]``: the SAE interface's normalisation ``(x - mean) / (std + 1e-5)``, float32."""
    x = x.float()
    mu = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return (x - mu) / (std + LN_EPS)


def geometric_median(x: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """``[N, d] -> [d]``: the point minimising the sum of distances (Weiszfeld's iteration from the mean)."""
    median = x.mean(dim=0)
    for _ in range(iters):
        dist = (x - median).norm(dim=-1).clamp_min(1e-8)
        w = 1.0 / dist
        new = (w[:, None] * x).sum(dim=0) / w.sum()
        moved = (new - median).norm()
        median = new
        if moved <= tol * (median.norm() + tol):
            break
    return median


def default_lr(d_sae: int) -> float:
    """OpenAI's ``2e-4 / sqrt(d_sae / 2**14)`` times 5, for the small batches used here (512 tokens, not
    OpenAI's 131072): 4e-3 at 1024 latents, the best of a sweep on stories260K (2e-3 to 8e-3)."""
    return 5 * 2e-4 / math.sqrt(d_sae / 2**14)


@torch.no_grad()
def evaluate_sae(sae: SAE, acts: Tensor, *, batch_size: int = 8192) -> tuple[float, float, float]:
    """``(variance explained, L0, dead fraction)`` of ``sae`` on raw activations ``acts [N, d_in]``."""
    if acts.dim() != 2 or acts.shape[0] == 0:
        raise SaesteerError(f"evaluation activations must be a non-empty [N, d_in] tensor, got {tuple(acts.shape)}")
    mean = acts.float().mean(dim=0)
    resid = total = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae.device)
    for start in range(0, acts.shape[0], batch_size):
        x = acts[start:start + batch_size].to(sae.device, torch.float32)
        z, stats = sae.encode_with_stats(x)
        x_hat = sae.decode(z, stats)
        resid += float((x - x_hat).pow(2).sum())
        total += float((x - mean).pow(2).sum())
        active = z > 0
        l0 += float(active.sum())
        fired |= active.any(dim=0)
    n = acts.shape[0]
    ve = 1.0 - resid / total if total > 0 else float("nan")
    return ve, l0 / n, 1.0 - float(fired.float().mean())


class _Params:
    """The trainable tensors. ``W_enc_rows [d_sae, d_in]`` is the encoder stored by latent (the SAE
    interface's ``W_enc`` transposed), so a latent's encoder row is gathered like its decoder row."""

    def __init__(self, x_n: Tensor, d_sae: int, gen: torch.Generator, median_sample: int):
        d_in = x_n.shape[1]
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        self.W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        self.W_enc_rows = self.W_dec.clone()
        self.b_enc = torch.zeros(d_sae)
        sample = x_n[torch.randperm(x_n.shape[0], generator=gen)[:median_sample]]
        self.b_dec = geometric_median(sample)

    def all(self) -> list[Tensor]:
        return [self.W_enc_rows, self.b_enc, self.W_dec, self.b_dec]


def _lr_factor(step: int, steps: int, warmup: int, decay_from: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_from:
        return max(0.0, (steps - step) / max(1, steps - decay_from))
    return 1.0


def _check_inputs(acts: Tensor, d_sae: int, k: int, batch_size: int, steps, epochs, lr, k_aux, aux_coef) -> None:
    if not isinstance(acts, Tensor) or acts.dim() != 2:
        raise SaesteerError("activations must be a 2-D tensor [tokens, d_in]")
    if not acts.is_floating_point():
        raise SaesteerError(f"activations must be floating point, got {acts.dtype}")
    if acts.shape[1] < 2:
        raise SaesteerError("activations need at least 2 dimensions (layer norm uses their std)")
    if acts.shape[0] < 2:
        raise SaesteerError("training needs at least 2 activation vectors")
    if not bool(torch.isfinite(acts).all()):
        raise SaesteerError("the activations contain NaN or infinite values")
    if d_sae < 1 or not 0 < k <= d_sae:
        raise SaesteerError(f"need d_sae >= 1 and 0 < k <= d_sae, got d_sae={d_sae}, k={k}")
    if batch_size < 1:
        raise SaesteerError(f"batch_size must be at least 1, got {batch_size}")
    if steps is not None and epochs is not None:
        raise SaesteerError("give steps or epochs, not both")
    if steps is not None and steps < 1:
        raise SaesteerError(f"steps must be at least 1, got {steps}")
    if epochs is not None and not epochs > 0:
        raise SaesteerError(f"epochs must be above 0, got {epochs}")
    if lr is not None and not lr > 0:
        raise SaesteerError(f"lr must be above 0, got {lr}")
    if k_aux is not None and k_aux < 1:
        raise SaesteerError(f"k_aux must be at least 1, got {k_aux}")
    if aux_coef < 0:
        raise SaesteerError(f"aux_coef must be >= 0, got {aux_coef}")


def train_topk_sae(
    acts: Tensor,
    config: TrainConfig | None = None,
    *,
    eval_acts: Tensor | None = None,
    progress: bool = True,
    callback: Callable[[StepInfo], object] | None = None,
    **settings,
) -> tuple[SAE, TrainStats]:
    """Train a TopK(k) SAE with ``d_sae`` latents on raw activations ``acts [N, d_in]``.

    Length: ``steps`` batches, or ``epochs`` passes over the data (default 1 epoch); each epoch visits the
    tokens in a new random order. ``lr``: Adam learning rate (default ``default_lr(d_sae)``). ``k_aux``:
    AuxK latents (default ``d_in // 2``); ``dead_tokens``: a latent silent for this many tokens is dead
    (default a tenth of the training tokens, at most OpenAI's 10M). ``warmup_steps`` (default 1% of steps)
    and ``decay_fraction`` (the last 20% decay linearly to 0) shape the learning rate. ``callback(info)``
    runs after every step; a truthy return value stops training. Returns the SAE (float32, CPU) and
    :class:`TrainStats`. The settings are a :class:`TrainConfig` (``config``) and/or its fields as keywords
    (``d_sae`` and ``k`` are required without a config).
    """
    if config is None and not {"d_sae", "k"} <= set(settings):
        raise TypeError("train_topk_sae() needs d_sae= and k= (or a TrainConfig)")
    c = TrainConfig.build(config, settings, caller="train_topk_sae")
    _check_inputs(acts, c.d_sae, c.k, c.batch_size, c.steps, c.epochs, c.lr, c.k_aux, c.aux_coef)
    if eval_acts is not None and (eval_acts.dim() != 2 or eval_acts.shape[1] != acts.shape[1] or not len(eval_acts)):
        raise SaesteerError(f"eval_acts must be [N, {acts.shape[1]}] with N > 0, got {tuple(eval_acts.shape)}")
    started = time.perf_counter()
    n, d_in = acts.shape
    plan = _plan(c, n, d_in)
    gen = torch.Generator().manual_seed(c.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x_all = torch.empty(n, d_in, dtype=torch.float32)
        for s in range(0, n, 65536):
            x_all[s:s + 65536] = layer_norm(acts[s:s + 65536].cpu())
        p = _Params(x_all, c.d_sae, gen, median_sample=min(n, 32768))
        sample = x_all[torch.randperm(n, generator=gen)[:EVAL_TOKENS]]
        var = float((sample - sample.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12))
        history, aux_history = _run_steps(p, x_all, plan, gen, var, progress, callback)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)

    sae = _to_sae(p, c.k, c.hook_name, c.seed)
    if eval_acts is None:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(c.seed + 1))[:EVAL_TOKENS]
        eval_acts = acts[pick.sort().values]
    ve, l0, dead_fraction = evaluate_sae(sae, eval_acts)
    done = len(history)
    return sae, TrainStats(
        variance_explained=ve, l0=l0, dead_fraction=dead_fraction, loss_history=history,
        aux_loss_history=aux_history, steps=done, tokens=done * plan.batch_size,
        seconds=time.perf_counter() - started, eval_tokens=eval_acts.shape[0],
    )


@dataclass(frozen=True)
class _Plan:
    """The run's length and schedule: the settings' defaults resolved against the data's size."""

    steps: int
    batch_size: int
    lr: float
    k: int
    k_aux: int
    aux_coef: float
    dead_tokens: int
    warmup: int
    decay_from: int


def _plan(c: TrainConfig, n: int, d_in: int) -> _Plan:
    batch_size = min(c.batch_size, n)
    steps = c.steps
    if steps is None:
        steps = max(1, round((1.0 if c.epochs is None else c.epochs) * (n // batch_size)))
    dead_tokens = c.dead_tokens
    if dead_tokens is None:
        dead_tokens = min(10_000_000, max(batch_size, steps * batch_size // 10))
    return _Plan(steps=steps, batch_size=batch_size, lr=default_lr(c.d_sae) if c.lr is None else c.lr, k=c.k,
                 k_aux=min(d_in // 2 if c.k_aux is None else c.k_aux, c.d_sae), aux_coef=c.aux_coef,
                 dead_tokens=dead_tokens, warmup=max(1, steps // 100 if c.warmup_steps is None else c.warmup_steps),
                 decay_from=steps - int(round(c.decay_fraction * steps)))


def _run_steps(p: _Params, x_all: Tensor, plan: _Plan, gen: torch.Generator, var: float, progress: bool,
               callback) -> tuple[list[float], list[float]]:
    """The Adam steps over shuffled batches of ``x_all`` (a new order each epoch), with the decoder rows kept at
    unit norm; returns the loss and AuxK loss of each step. A truthy ``callback`` return stops early."""
    n, bs = x_all.shape[0], plan.batch_size
    opt = torch.optim.Adam(p.all(), lr=plan.lr, betas=(0.9, 0.999), eps=6.25e-10, weight_decay=0.0, fused=True)
    since_fired = torch.zeros(p.b_enc.shape[0], dtype=torch.long)
    history, aux_history = [], []
    order = torch.randperm(n, generator=gen)
    cursor = 0
    with tqdm(total=plan.steps, desc="training TopK SAE", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for step in range(plan.steps):
            if cursor + bs > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            x = x_all.index_select(0, order[cursor:cursor + bs])
            cursor += bs
            lr = plan.lr * _lr_factor(step, plan.steps, plan.warmup, plan.decay_from)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, aux, l0, fired = _step(p, x, plan.k, plan.k_aux, plan.aux_coef, since_fired > plan.dead_tokens, var)
            opt.step()
            p.W_dec /= p.W_dec.norm(dim=-1, keepdim=True)
            since_fired += bs
            since_fired.masked_fill_(fired, 0)
            history.append(loss)
            aux_history.append(aux)
            dead = int((since_fired > plan.dead_tokens).sum())
            if progress and (step % 10 == 0 or step == plan.steps - 1):
                bar.set_postfix(loss=f"{loss:.4f}", ve=f"{1 - loss:.4f}", l0=f"{l0:.1f}", dead=dead, refresh=False)
            bar.update(1)
            if callback is not None and callback(StepInfo(
                    step=step, steps=plan.steps, tokens=(step + 1) * bs, loss=loss, aux_loss=aux,
                    variance_explained=1 - loss, l0=l0, dead=dead, lr=lr)):
                break
    return history, aux_history


def _step(p: _Params, x: Tensor, k: int, k_aux: int, aux_coef: float, dead: Tensor, var: float):
    """One forward and backward pass on normalised inputs ``x [B, d_in]``, written out by hand because
    only ``B * k`` latents are touched: sets ``.grad`` of every parameter (the decoder's with the component
    along each row removed). Returns ``(loss, aux loss, L0, fired latents [d_sae] bool)``.

    Loss = ``mean |x_hat - x|^2 / var`` (``var``: the data's mean squared distance from its mean, so the loss
    is the fraction of variance unexplained), plus ``aux_coef`` times the AuxK loss
    ``|e_hat - e|^2 / |e - mean(e)|^2`` over the batch, where ``e = x - x_hat`` (no gradient) and ``e_hat``
    decodes the top ``k_aux`` pre-activations among dead latents (ReLU, without ``b_dec``).
    """
    B, d_in = x.shape
    xc = x - p.b_dec
    pre = torch.addmm(p.b_enc, xc, p.W_enc_rows.T)  # [B, d_sae]
    vals, idx = pre.topk(k, dim=-1, sorted=False)  # [B, k]
    z = torch.relu(vals)
    W_sel = p.W_dec.index_select(0, idx.flatten()).view(B, k, d_in)
    recon = p.b_dec + (z[:, :, None] * W_sel).sum(dim=1)
    diff = recon - x
    loss = diff.pow(2).sum() / (B * var)
    g = diff * (2 / (B * var))  # d loss / d recon
    g_z = (W_sel * g[:, None, :]).sum(dim=-1) * (vals > 0)  # d loss / d pre at the chosen latents
    terms = [(idx, z, g_z, g)]  # (latents [B, j], their values, d loss / d pre-activation, d loss / d decode)

    aux = 0.0
    n_dead = int(dead.sum())
    if n_dead and aux_coef > 0:
        a_vals, a_idx = pre.masked_fill(~dead, -torch.inf).topk(min(k_aux, n_dead), dim=-1, sorted=False)
        a_z = torch.relu(a_vals)
        a_W = p.W_dec.index_select(0, a_idx.flatten()).view(a_idx.shape + (d_in,))
        error = -diff
        e_norm = (error - error.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        a_diff = (a_z[:, :, None] * a_W).sum(dim=1) - error
        aux = float(a_diff.pow(2).sum() / e_norm)
        a_g = a_diff * (2 * aux_coef / e_norm)
        terms.append((a_idx, a_z, (a_W * a_g[:, None, :]).sum(dim=-1) * (a_vals > 0), a_g))

    grad_W_dec = torch.zeros_like(p.W_dec)
    grad_W_enc = torch.zeros_like(p.W_enc_rows)
    grad_b_enc = torch.zeros_like(p.b_enc)
    for t_idx, t_z, t_gpre, t_g in terms:
        flat = t_idx.flatten()
        grad_W_dec.index_add_(0, flat, (t_z[:, :, None] * t_g[:, None, :]).view(-1, d_in))
        grad_W_enc.index_add_(0, flat, (t_gpre[:, :, None] * xc[:, None, :]).view(-1, d_in))
        grad_b_enc.index_add_(0, flat, t_gpre.flatten())
    grad_W_dec -= (grad_W_dec * p.W_dec).sum(dim=-1, keepdim=True) * p.W_dec
    p.W_dec.grad, p.W_enc_rows.grad, p.b_enc.grad = grad_W_dec, grad_W_enc, grad_b_enc
    p.b_dec.grad = g.sum(dim=0) - grad_b_enc @ p.W_enc_rows  # b_dec is added to x_hat and subtracted from x
    active = (vals > 0).float()
    fired = torch.zeros_like(p.b_enc).index_add_(0, idx.flatten(), active.flatten()) > 0
    l0 = float(active.sum()) / B
    return float(loss), aux, l0, fired


def _to_sae(p: _Params, k: int, hook_name: str | None, seed: int) -> SAE:
    d_sae, d_in = p.W_dec.shape
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation="topk", k=k, normalize="layer_norm",
                    apply_b_dec_to_input=True, hook_name=hook_name, source="saesteer.training",
                    extra={"trainer": "saesteer.training.topk", "seed": seed})
    return SAE(cfg, p.W_enc_rows.detach().T.contiguous(), p.b_enc.detach(), p.W_dec.detach(), p.b_dec.detach())
