"""SAELens's on-disk format: read a folder (``cfg.json`` + ``sae_weights.safetensors``), locally or from
the Hugging Face Hub (``saelens:REPO_ID/FOLDER``), read bare ``.safetensors`` files, and write the format.

Weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and
``threshold [d_sae]`` for JumpReLU. Configs come in two schemas, both read here: SAELens >= 6
(``architecture``, ``k``, ``hook_name`` at top level or under ``metadata``) and older ones (``hook_point``,
``activation_fn_str``, ``activation_fn_kwargs``; a "standard" architecture with ``activation_fn_str:
"topk"`` is a TopK SAE, which is how OpenAI's v5 SAEs were mirrored).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from saesteer.dtypes import SAE_DTYPES, dtype_name, parse_dtype
from saesteer.errors import SaesteerError
from saesteer.io import atomic_path, atomic_write_json
from saesteer.saes import gemmascope, openai
from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.gated import GatedSAE
from saesteer.saes.hub import hub_file
from saesteer.saes.tensors import read_safetensors

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
HUB_SPEC_FORM = "saelens:REPO_ID/FOLDER, e.g. saelens:jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/v5_32k_layer_6.pt"

ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
"""SAELens architecture -> :class:`SAEConfig` activation (SAELens saves batchtopk SAEs as jumprelu)."""
NORMALIZATIONS = {
    "none": "none",
    "layer_norm": "layer_norm",
    "constant_norm_rescale": "constant_norm_rescale",
    "expected_average_only_in": "none",  # folded by SAELens when it saves; a release's factor is folded on load
    "covariance_whitening": "none",  # folded into the weights before saving
}
"""SAELens ``normalize_activations`` -> what acts at run time on a saved SAE."""
_SAELENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
SAELENS_SCHEMA = "6.0.0"
"""The SAELens config schema :func:`save_sae` writes."""
_GATED_KEYS = ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")


# ------------------------------------------------------------------ config
def config_from_dict(cfg: dict, *, source: str) -> tuple[SAEConfig, torch.dtype]:
    """An SAELens ``cfg.json`` (either schema) -> (:class:`SAEConfig`, stored dtype); one-line errors."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def pick(*keys):
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
            if meta.get(key) is not None:
                return meta[key]
        return None

    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise SaesteerError(f"{source}: cfg.json needs an integer {key!r}")
    architecture, k = _architecture(cfg, pick("activation_fn_str", "activation_fn"), source)
    if cfg.get("finetuning_scaling_factor"):
        raise SaesteerError(f"{source}: finetuning_scaling_factor=true is not supported by saesteer")
    normalize = cfg.get("normalize_activations")
    if normalize is None or normalize is False:
        normalize = "none"
    elif normalize is True:  # pre-6.0 spelling of expected_average_only_in
        normalize = "expected_average_only_in"
    if normalize not in NORMALIZATIONS:
        raise SaesteerError(
            f"{source}: unsupported normalize_activations {normalize!r}; saesteer supports"
            f" {', '.join(NORMALIZATIONS)}"
        )
    extra = {"format": "saelens", "architecture": architecture, "normalize_activations": normalize}
    for key in ("model_name", "neuronpedia_id", "hook_head_index", "context_size", "prepend_bos"):
        if pick(key) is not None:
            extra[key] = pick(key)
    if cfg.get("reshape_activations") not in (None, "none"):
        extra["reshape_activations"] = cfg["reshape_activations"]
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        extra["rescale_acts_by_decoder_norm"] = True  # folded into the weights by build_sae
    config = SAEConfig(
        d_in=cfg["d_in"],
        d_sae=cfg["d_sae"],
        activation=ARCHITECTURES[architecture],
        k=int(k) if k is not None else None,
        normalize=NORMALIZATIONS[normalize],
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        hook_name=pick("hook_name", "hook_point"),
        source=source,
        extra=extra,
    )
    return config, parse_dtype(cfg.get("dtype") or "float32", allowed=SAE_DTYPES)


def _architecture(cfg: dict, act_fn, source: str) -> tuple[str, int | None]:
    """(SAELens architecture, k) of a config of either schema, or a one-line refusal naming what is unsupported."""
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    architecture = str(cfg.get("architecture") or "standard").lower()
    if architecture == "standard" and act_fn == "topk":
        architecture = "topk"  # pre-6.0 schema: TopK was an activation of the standard architecture
    if architecture not in ARCHITECTURES:
        raise SaesteerError(
            f"{source}: unsupported SAELens architecture {architecture!r}; saesteer supports"
            f" {', '.join(ARCHITECTURES)} (and batchtopk as SAELens saves it, i.e. jumprelu)"
        )
    if architecture == "standard" and act_fn not in (None, "relu"):
        raise SaesteerError(f"{source}: unsupported activation_fn {act_fn!r}; saesteer supports relu and topk")
    if architecture != "topk":
        return architecture, None
    k = cfg["k"] if cfg.get("k") is not None else fn_kwargs.get("k")
    if k is None:
        raise SaesteerError(f"{source}: a topk SAE needs 'k' (or activation_fn_kwargs.k) in cfg.json")
    return architecture, k


def config_to_dict(sae: SAE) -> dict:
    """What :func:`save_sae` writes to ``cfg.json``: the SAELens 6 schema (facts about use under ``metadata``,
    which names the schema version so that SAELens does not read it as a pre-6.0 config), plus the pre-6.0 keys
    (``activation_fn_str``, top-level ``hook_name``) for older readers."""
    c = sae.cfg
    architecture = {v: k for k, v in ARCHITECTURES.items()}[c.activation]
    metadata = {"sae_lens_version": SAELENS_SCHEMA, "sae_lens_training_version": SAELENS_SCHEMA,
                "hook_name": c.hook_name, "model_name": c.extra.get("model_name"),
                "neuronpedia_id": c.extra.get("neuronpedia_id")}
    return {
        "architecture": architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "k": c.k,
        "activation_fn_str": "topk" if c.activation == "topk" else "relu",
        "activation_fn_kwargs": {"k": c.k} if c.activation == "topk" else {},
        "hook_name": c.hook_name,
        "normalize_activations": c.normalize,
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "reshape_activations": "none",
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "model_name": c.extra.get("model_name"),
        "neuronpedia_id": c.extra.get("neuronpedia_id"),
        "metadata": metadata,
    }


# ------------------------------------------------------------------ weights
def build_sae(config: SAEConfig, tensors: dict[str, Tensor], dtype: torch.dtype) -> SAE:
    """SAELens-keyed tensors -> :class:`SAE` in ``dtype``; JumpReLU takes ``threshold`` or ``log_threshold``."""
    keys = _GATED_KEYS if config.activation == "gated" else _SAELENS_KEYS
    missing = [key for key in keys if key not in tensors]
    if missing:
        raise SaesteerError(f"{config.source}: SAELens weights are missing {', '.join(missing)}")
    scale = tensors.get("scaling_factor")
    if scale is not None and not torch.all(scale == 1):
        raise SaesteerError(f"{config.source}: a non-trivial scaling_factor is not supported by saesteer")
    t = {key: tensors[key].to(dtype) for key in keys}
    if config.extra.get("rescale_acts_by_decoder_norm"):
        t = fold_decoder_norm(t)
    if config.activation == "gated":
        return GatedSAE(config, t["W_enc"], t["b_gate"], t["W_dec"], t["b_dec"], b_mag=t["b_mag"], r_mag=t["r_mag"])
    threshold = None
    if config.activation == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"]
        elif "log_threshold" in tensors:
            threshold = tensors["log_threshold"].exp()
        else:
            raise SaesteerError(f"{config.source}: a jumprelu SAE needs a 'threshold' tensor")
        threshold = threshold.to(dtype)
    return SAE(config, t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold=threshold)


def fold_decoder_norm(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAELens TopK with ``rescale_acts_by_decoder_norm``: encode ranks ``pre * ||W_dec[j]||`` and decode divides
    by the norm again. Scaling encoder column j and ``b_enc[j]`` by the norm and decoder row j by its inverse
    gives the same latents and outputs with the plain TopK maths (SAELens's own ``fold_W_dec_norm``)."""
    norms = t["W_dec"].norm(dim=-1)
    return {**t, "W_enc": t["W_enc"] * norms, "b_enc": t["b_enc"] * norms, "W_dec": t["W_dec"] / norms[:, None]}


def fold_norm_scaling_factor(sae: SAE, factor: float) -> SAE:
    """A release's ``norm_scaling_factor`` s for ``expected_average_only_in`` SAEs, folded as SAELens does:
    ``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s`` (the SAE then takes raw activations)."""
    with torch.no_grad():
        sae.W_enc.mul_(factor)
        sae.W_dec.div_(factor)
        sae.b_dec.div_(factor)
    sae.cfg.extra["norm_scaling_factor"] = factor
    return sae


# ------------------------------------------------------------------ loaders
def load_saelens_files(cfg_path: str | os.PathLike, weights_path: str | os.PathLike, *, source: str) -> SAE:
    """One SAELens SAE from its ``cfg.json`` and ``sae_weights.safetensors`` paths."""
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaesteerError(f"{source}: no {cfg_path.name} at {cfg_path}") from None
    except (OSError, ValueError) as exc:
        raise SaesteerError(f"could not read {cfg_path} as JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SaesteerError(f"{cfg_path} is not a JSON object")
    config, dtype = config_from_dict(cfg, source=source)
    tensors, _ = read_safetensors(weights_path)
    return build_sae(config, tensors, dtype)


def load_saelens_folder(folder: str | os.PathLike, *, source: str | None = None) -> SAE:
    """A local SAELens folder holding ``cfg.json`` and ``sae_weights.safetensors``."""
    folder = Path(folder)
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise SaesteerError(
                f"{folder} is not an SAELens SAE folder: it has no {name} (expected {CFG_FILENAME} and"
                f" {WEIGHTS_FILENAME})"
            )
    sae = load_saelens_files(folder / CFG_FILENAME, folder / WEIGHTS_FILENAME, source=source or str(folder))
    sae.cfg.extra["path"] = str(folder)
    return sae


def load_safetensors_file(path: str | os.PathLike, *, source: str | None = None) -> SAE:
    """A bare ``.safetensors``: SAELens keys (config from a ``cfg.json`` beside it, else from shapes and
    the file's metadata) or OpenAI keys (``encoder.weight`` ...; activation from metadata, default ReLU).

    Metadata keys read: ``architecture`` or ``activation`` (relu/standard, topk, jumprelu), ``k``,
    ``hook_name``, ``normalize_activations``, ``apply_b_dec_to_input``.
    """
    path = Path(path)
    source = source or str(path)
    tensors, metadata = read_safetensors(path)
    if "W_enc" in tensors:
        beside = path.parent / CFG_FILENAME
        if beside.is_file():
            return load_saelens_files(beside, path, source=source)
        cfg = _cfg_from_metadata(metadata, tensors["W_enc"], source, openai_keys=False)
        config, dtype = config_from_dict(cfg, source=source)
        return build_sae(config, tensors, dtype)
    if gemmascope.is_gemmascope_tensors(tensors):
        return gemmascope.load_params_file(path, source=source)
    if openai.is_openai_state_dict(tensors):
        cfg = _cfg_from_metadata(metadata, tensors["decoder.weight"], source, openai_keys=True)
        config, _ = config_from_dict(cfg, source=source)
        if config.activation == "jumprelu":
            raise SaesteerError(f"{source}: OpenAI-keyed weights cannot be jumprelu (no threshold)")
        return openai.sae_from_state_dict(
            tensors,
            source=source,
            hook_name=config.hook_name,
            activation=config.activation,
            k=config.k,
            extra={"format": "openai"},
        )
    raise SaesteerError(
        f"{path} holds neither SAELens weights (W_enc, b_enc, W_dec, b_dec) nor OpenAI weights"
        f" (encoder.weight, latent_bias, decoder.weight, pre_bias); found {', '.join(sorted(tensors)[:6])}"
    )


def _cfg_from_metadata(meta: dict, matrix: Tensor, source: str, *, openai_keys: bool) -> dict:
    """A cfg.json-like dict for a file without one, from its shapes and safetensors metadata.

    ``matrix`` is ``W_enc [d_in, d_sae]`` or OpenAI's ``decoder.weight [d_model, n_latents]``.
    """
    if matrix.dim() != 2:
        raise SaesteerError(f"{source}: the encoder/decoder weight has shape {tuple(matrix.shape)}, not a matrix")
    (d_in, d_sae), dtype = matrix.shape, matrix.dtype
    architecture = str(meta.get("architecture") or meta.get("activation") or "standard").lower()
    architecture = {"relu": "standard"}.get(architecture, architecture)
    cfg = {
        "architecture": architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "hook_name": meta.get("hook_name"),
        "apply_b_dec_to_input": str(meta.get("apply_b_dec_to_input", "true")).lower() in ("1", "true", "yes"),
        "dtype": dtype_name(dtype),
        "normalize_activations": meta.get("normalize_activations")
        or ("layer_norm" if openai_keys and architecture == "topk" else "none"),
    }
    if meta.get("k") is not None:
        try:
            cfg["k"] = int(meta["k"])
        except ValueError:
            raise SaesteerError(f"safetensors metadata k={meta['k']!r} is not an integer") from None
    return cfg


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``saelens:OWNER/NAME/FOLDER...`` -> (repo_id, folder); the folder may itself contain slashes."""
    body = spec[len("saelens:"):] if spec.startswith("saelens:") else spec
    parts = [p for p in body.strip("/").split("/") if p]
    if len(parts) < 3:
        raise SaesteerError(f"bad SAELens spec {spec!r}; expected {HUB_SPEC_FORM}")
    return "/".join(parts[:2]), "/".join(parts[2:])


def load_saelens_hub(spec: str, *, progress: bool = True) -> SAE:
    """``saelens:REPO_ID/FOLDER``: fetch ``FOLDER/cfg.json`` and ``FOLDER/sae_weights.safetensors`` from the Hub
    (into the Hub's own cache), then load them."""
    repo_id, folder = parse_hub_spec(spec)
    return load_saelens_repo_folder(repo_id, folder, source=spec, progress=progress)


def load_saelens_repo_folder(repo_id: str, folder: str, *, source: str, progress: bool = True) -> SAE:
    """The SAELens folder ``folder`` of Hub repo ``repo_id``."""
    prefix = f"{folder}/" if folder else ""
    cfg_path = hub_file(repo_id, f"{prefix}{CFG_FILENAME}", progress=progress)
    weights_path = hub_file(repo_id, f"{prefix}{WEIGHTS_FILENAME}", progress=progress)
    sae = load_saelens_files(cfg_path, weights_path, source=source)
    sae.cfg.extra.update({"repo_id": repo_id, "folder": folder, "path": str(Path(weights_path).parent)})
    return sae


# ------------------------------------------------------------------ writing
def save_sae(sae: SAE, directory: str | os.PathLike) -> Path:
    """Write ``sae`` as an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) atomically.

    A new (or empty) ``directory`` is filled in a temporary sibling folder and renamed into place; an
    existing one gets each file through a temporary file + rename (weights first, then config), so other
    files in it are kept. ``load_sae(directory)`` gives back the same config and bit-identical weights.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SaesteerError(f"cannot save the SAE to {directory}: it exists and is not a folder")
    tensors = weights_to_save(sae)
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    cfg = config_to_dict(sae)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.is_dir() and any(directory.iterdir()):
        with atomic_path(directory / WEIGHTS_FILENAME) as tmp:
            _write_weights(tensors, tmp)
        atomic_write_json(directory / CFG_FILENAME, cfg)
        return directory
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        _write_weights(tensors, staging / WEIGHTS_FILENAME)
        atomic_write_json(staging / CFG_FILENAME, cfg)
        os.chmod(staging, 0o755)
        os.replace(staging, directory)  # also replaces an empty directory
    except BaseException:
        for child in staging.glob("*"):
            child.unlink(missing_ok=True)
        if staging.exists():
            staging.rmdir()
        raise
    return directory


def weights_to_save(sae: SAE) -> dict[str, Tensor]:
    """SAELens's tensor names for ``sae``; SAEs whose maths SAELens folders cannot express are refused."""
    if sae.cfg.normalize == "center":
        raise SaesteerError(
            "cannot save this SAE as an SAELens folder: it centres its input (trained on TransformerLens with"
            " center_writing_weights), which SAELens folders cannot say; load it from its release instead"
        )
    if isinstance(sae, GatedSAE):
        return {"W_enc": sae.W_enc, "b_gate": sae.b_enc, "b_mag": sae.b_mag, "r_mag": sae.r_mag,
                "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if type(sae) is not SAE:
        raise SaesteerError(
            f"cannot save this {sae.cfg.activation} SAE ({type(sae).__name__}) as an SAELens folder: SAELens has"
            " no equivalent architecture; keep its original files"
        )
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    return tensors


def _write_weights(tensors: dict[str, Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    with open(path, "rb") as f:
        os.fsync(f.fileno())
