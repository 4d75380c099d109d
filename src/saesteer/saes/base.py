"""The one SAE interface that every format loads into.

Shapes follow SAELens: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (row j is feature j's decoder
direction). Semantics follow OpenAI's reference ``Autoencoder`` where the two agree:

* ``layer_norm`` normalisation (OpenAI v5): ``mu = x.mean(-1)``, ``std = x.std(-1)`` (unbiased),
  ``x_n = (x - mu) / (std + 1e-5)``; decode multiplies back by ``std`` and adds ``mu`` from the *same* token.
  ``constant_norm_rescale`` (SAELens): ``x_n = x / s`` with ``s = ||x|| / sqrt(d_in)``; decode multiplies by ``s``.
  ``center``: ``x_n = x - mean(x)``, decode adds the mean back (SAEs trained on TransformerLens with
  ``center_writing_weights``, whose residual stream has zero mean per token).
  All keep per-token stats ``(mu, s)`` (``mu = 0`` for the rescale, ``s = 1`` for centering) that decode reuses.
* encode: ``pre = (x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, then the activation
  (``relu``; ``topk``: keep the k largest pre-activations, ReLU them; ``jumprelu``: ``pre * (pre > threshold)``).
  TopK ties follow one rule (:func:`topk_keep`): among latents tied with the k-th largest, the lowest indices
  are kept, so exactly k latents are kept.
* decode: ``x_hat = z @ W_dec + b_dec``, then de-normalise.

Families whose maths differ (gated, sparsify's groupmax and skip connection) subclass :class:`SAE` in their own
module and say so with ``plain_maths`` False, so that code specialised to the plain maths (the fast engine)
leaves them to the generic path.

The contract with the fast engine (``engine/``): the engine never reads an SAE's config or re-does its
maths. It calls :meth:`SAE.fused_encoder`; a family whose encoder fits the :class:`FusedEncoder` form
returns one (the engine then packs its weights and skips work it can prove unnecessary, with the same
result), and any other family returns None, in which case the engine calls the SAE's own
``encode_with_stats``/``decode`` through the clamp. Normalisation is always the SAE's own
(:meth:`SAE.norm_stats`, :meth:`SAE.normalize`, :meth:`SAE.denormalize`). A new family subclasses
:class:`SAE`, overrides ``encode_pre_act``/``activate``/``decode`` as needed, and overrides
``fused_encoder`` (return None unless its encoder really is the fused form); the default returns None
whenever ``plain_maths`` is False.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from saesteer.errors import SaesteerError

ACTIVATIONS = ("relu", "topk", "jumprelu", "gated", "groupmax")
"""Every activation some :class:`SAE` class implements (the base class: relu, topk, jumprelu)."""
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale", "center")
LN_EPS = 1e-5


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is, independent of where its weights came from."""

    d_in: int
    d_sae: int
    activation: str = "relu"
    """``relu`` (OpenAI v1/v4, SAELens standard), ``topk`` (OpenAI v5), ``jumprelu``; ``gated`` and ``groupmax``
    for their subclasses."""
    k: int | None = None
    """Number of active latents for ``topk``."""
    normalize: str = "none"
    """``layer_norm`` for OpenAI v5: inputs are layer-normalised and decode uses the same stats;
    ``constant_norm_rescale`` (SAELens): inputs scaled to norm sqrt(d_in), decode scales back."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` (OpenAI's ``pre_bias``) before encoding."""
    hook_name: str | None = None
    """TransformerLens hook name the SAE was trained on, e.g. ``blocks.6.hook_resid_post``."""
    source: str = ""
    """The spec or path it was loaded from, for manifests and messages."""
    extra: dict = field(default_factory=dict, compare=False)
    """Format-specific facts kept for reference (family, model name, ...)."""

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise SaesteerError(f"unknown SAE activation {self.activation!r}; expected one of {ACTIVATIONS}")
        if self.normalize not in NORMALIZATIONS:
            raise SaesteerError(
                f"unsupported SAE normalisation {self.normalize!r}; saesteer supports {NORMALIZATIONS}"
            )
        if self.activation in ("topk", "groupmax") and (self.k is None or not 0 < self.k <= self.d_sae):
            raise SaesteerError(f"a TopK SAE needs 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}")

    def to_dict(self) -> dict:
        return asdict(self)


NormStats = tuple[Tensor, Tensor] | None
"""Per-token ``(mu, std)`` of the input normalisation, each ``[..., 1]``; None without normalisation."""


def topk_keep(pre: Tensor, k: int, *, branchless: bool = False) -> Tensor:
    """Which latents TopK keeps, as a bool mask like ``pre``: the k largest along the last dim, and among
    latents tied with the k-th largest the lowest indices (exactly k per token). The one tie rule of every
    TopK SAE here, shared by ``SAE.activate`` and the fast engine. ``branchless``: no branch on values (for
    CUDA graphs), same result."""
    kth = pre.topk(k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True).values
    keep = pre >= kth
    if not branchless and not bool((keep.sum(dim=-1) > k).any()):  # no ties at the k-th value (usual)
        return keep
    above = pre > kth
    tied = keep & ~above
    room = k - above.sum(dim=-1, keepdim=True)  # how many tied latents fit
    return above | (tied & (tied.cumsum(dim=-1) <= room))


@dataclass(frozen=True, eq=False)
class FusedEncoder:
    """An SAE's maths in the form the fast engine computes from packed weights (see the module docstring).

    For raw activations ``x [..., d_in]`` of the owning ``sae``, with ``stats = sae.norm_stats(x)``::

        x_in = sae.normalize(x, stats) - input_bias          (input_bias None: nothing subtracted)
        pre  = x_in @ W_enc + b_enc                          [..., d_sae]
        z    = relu(pre) * topk_keep(pre, k)                 when k is set (TopK)
             = elementwise(pre_j, j) latent by latent        otherwise
        x'   = sae.denormalize(z @ W_dec + b_dec, stats)

    ``encode_with_stats``/``decode`` of the owning SAE must give exactly this; the engine relies on it.
    """

    W_enc: Tensor
    """``[d_in, d_sae]``, the SAE's own tensor (not a copy)."""
    b_enc: Tensor
    W_dec: Tensor
    """``[d_sae, d_in]``: row j is latent j's decoder direction."""
    b_dec: Tensor
    input_bias: Tensor | None
    k: int | None = None
    """TopK's k; None for an elementwise activation."""
    elementwise: Callable[[Tensor, Tensor], Tensor] | None = None
    """``(pre_j [..., m], idx [..., m]) -> z_j``: the activation of latents ``idx`` from their own
    pre-activations (``idx`` broadcasts against ``pre_j``); None for TopK."""


class SAE(nn.Module):
    """A sparse autoencoder: ``encode``, ``decode``, decoder directions, ``d_in``, ``d_sae``, ``hook_name``."""

    activations: tuple[str, ...] = ("relu", "topk", "jumprelu")
    """The activations this class implements; subclasses name theirs."""

    def __init__(
        self,
        cfg: SAEConfig,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        threshold: Tensor | None = None,
    ):
        super().__init__()
        expect = {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }
        got = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        for name, shape in expect.items():
            if tuple(got[name].shape) != shape:
                raise SaesteerError(
                    f"SAE weight {name} has shape {tuple(got[name].shape)}, expected {shape}; the file is"
                    " corrupt or its config does not match its weights"
                )
        if cfg.activation not in self.activations:
            raise SaesteerError(f"{type(self).__name__} cannot compute activation {cfg.activation!r}")
        if cfg.activation == "jumprelu":
            if threshold is None or tuple(threshold.shape) != (cfg.d_sae,):
                raise SaesteerError("a JumpReLU SAE needs a 'threshold' tensor of shape [d_sae]")
            # relu(pre) * (pre > t) == pre * (pre > max(t, 0)): one formula for every library's JumpReLU
            threshold = threshold.clamp_min(0)
        self.cfg = cfg
        self.W_enc = nn.Parameter(W_enc.detach().clone(), requires_grad=False)
        self.b_enc = nn.Parameter(b_enc.detach().clone(), requires_grad=False)
        self.W_dec = nn.Parameter(W_dec.detach().clone(), requires_grad=False)
        self.b_dec = nn.Parameter(b_dec.detach().clone(), requires_grad=False)
        if threshold is not None:
            self.threshold = nn.Parameter(threshold.detach().clone(), requires_grad=False)
        else:
            self.threshold = None

    # ----------------------------------------------------------------- facts
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    @property
    def decoder_directions(self) -> Tensor:
        """``[d_sae, d_in]``: row j is what latent j adds (in normalised space) per unit of activation."""
        return self.W_dec

    @property
    def plain_maths(self) -> bool:
        """True when encode/decode are exactly relu/topk/jumprelu with ``none``/``layer_norm`` inputs, the maths
        that code specialised to it (the fast engine) implements; subclasses with other maths return False."""
        return self.cfg.normalize in ("none", "layer_norm")

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def with_hook(self, hook_name: str) -> "SAE":
        """Return this SAE (same weights) with ``hook_name`` set, for files that do not name their hook."""
        from dataclasses import replace

        self.cfg = replace(self.cfg, hook_name=hook_name)
        return self

    def check_finite(self) -> "SAE":
        """Refuse (one line) an SAE whose weights hold NaN or infinite values: it would steer to garbage."""
        for name, param in self.named_parameters():
            bad = int((~torch.isfinite(param)).sum())
            if bad:
                raise SaesteerError(
                    f"{self.cfg.source or 'the SAE'}: weight {name} holds {bad} NaN or infinite value(s); the file"
                    " is damaged or the SAE diverged in training: download or train it again"
                )
        return self

    def __repr__(self) -> str:
        c = self.cfg
        act = f"topk(k={c.k})" if c.activation == "topk" else c.activation
        return f"SAE(d_in={c.d_in}, d_sae={c.d_sae}, {act}, normalize={c.normalize}, hook={c.hook_name!r})"

    # ----------------------------------------------------------------- maths
    def norm_stats(self, x: Tensor) -> NormStats:
        """Per-token normalisation statistics ``(mu, std)``, or None if the SAE does not normalise its inputs."""
        if self.cfg.normalize == "layer_norm":
            return x.mean(dim=-1, keepdim=True), x.std(dim=-1, keepdim=True)
        if self.cfg.normalize == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / self.cfg.d_in**0.5
            return torch.zeros_like(scale), scale
        if self.cfg.normalize == "center":
            mu = x.mean(dim=-1, keepdim=True)
            return mu, torch.ones_like(mu)
        return None

    def normalize(self, x: Tensor, stats: NormStats) -> Tensor:
        if stats is None:
            return x
        mu, std = stats
        if self.cfg.normalize == "constant_norm_rescale":
            return x / std
        if self.cfg.normalize == "center":
            return x - mu
        return (x - mu) / (std + LN_EPS)

    def denormalize(self, x_n: Tensor, stats: NormStats) -> Tensor:
        if stats is None:
            return x_n
        mu, std = stats
        return x_n * std + mu

    @staticmethod
    def output_scale(stats: NormStats) -> Tensor | None:
        """``[..., 1]``: how decode scales a change of its latent-space output for these tokens (None: 1)."""
        return None if stats is None else stats[1]

    def encode_pre_act(self, x: Tensor, stats: NormStats | str = "compute") -> Tensor:
        """Pre-activations ``[..., d_sae]`` of raw inputs ``x [..., d_in]``."""
        if isinstance(stats, str):
            stats = self.norm_stats(x)
        x_n = self.normalize(x.to(self.dtype), stats)
        if self.cfg.apply_b_dec_to_input:
            x_n = x_n - self.b_dec
        return x_n @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Latents from pre-activations, by the SAE's activation function (TopK ties: :func:`topk_keep`)."""
        act = self.cfg.activation
        if act == "topk":
            return torch.relu(pre) * topk_keep(pre, self.cfg.k)
        return self.activate_latents(pre, torch.arange(pre.shape[-1], device=pre.device))

    def activate_latents(self, pre_j: Tensor, idx: Tensor) -> Tensor:
        """Elementwise activations only: ``z_j`` of latents ``idx`` from their pre-activations ``pre_j``."""
        if self.cfg.activation == "relu":
            return torch.relu(pre_j)
        if self.cfg.activation == "jumprelu":
            return pre_j * (pre_j > self.threshold[idx])
        raise SaesteerError(f"{self.cfg.activation} is not an elementwise activation")

    def fused_encoder(self) -> FusedEncoder | None:
        """This SAE's maths in the fast engine's fused form, or None when it has none (the engine then calls
        ``encode_with_stats``/``decode``). Subclasses with another encoder must override this."""
        c = self.cfg
        if not self.plain_maths or c.activation not in ("relu", "topk", "jumprelu"):
            return None
        topk = c.activation == "topk"
        return FusedEncoder(
            W_enc=self.W_enc.detach(), b_enc=self.b_enc.detach(), W_dec=self.W_dec.detach(),
            b_dec=self.b_dec.detach(), input_bias=self.b_dec.detach() if c.apply_b_dec_to_input else None,
            k=c.k if topk else None, elementwise=None if topk else self.activate_latents,
        )

    def encode_with_stats(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """Latents ``[..., d_sae]`` and the normalisation stats that ``decode`` needs for these tokens."""
        stats = self.norm_stats(x.to(self.dtype))
        return self.activate(self.encode_pre_act(x, stats)), stats

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_with_stats(x)[0]

    def decode(self, z: Tensor, stats: NormStats = None) -> Tensor:
        """Reconstruction ``[..., d_in]``; pass the ``stats`` of the same tokens' encode for v5 SAEs."""
        if stats is None and self.cfg.normalize != "none":
            raise SaesteerError(
                "this SAE normalises its inputs: decode needs the (mu, std) of the same tokens;"
                " use encode_with_stats() or reconstruct()"
            )
        return self.denormalize(z @ self.W_dec + self.b_dec, stats)

    def reconstruct(self, x: Tensor) -> Tensor:
        z, stats = self.encode_with_stats(x)
        return self.decode(z, stats).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def check_feature(self, feature: int) -> int:
        """Validate a feature index against ``[0, d_sae)`` with a one-line error."""
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise SaesteerError(f"feature must be an integer, got {feature!r}")
        if not 0 <= feature < self.d_sae:
            raise SaesteerError(f"feature {feature} is outside [0, {self.d_sae}) for this SAE")
        return feature
