"""SAELens's on-disk format: read a folder (``cfg.json`` + ``sae_weights.safetensors``), locally or from
the Hugging Face Hub (``saelens:REPO_ID/FOLDER``), read bare ``.safetensors`` files, and write the format.

Weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and
``threshold [d_sae]`` for JumpReLU. Configs come in two schemas, both read here: SAELens >= 6
(``architecture``, ``k``, ``hook_name`` at top level or under ``metadata``) and older ones (``hook_point``,
``activation_fn_str``, ``activation_fn_kwargs``; a "standard" architecture with ``activation_fn_str:
"topk"`` is a TopK SAE, which is how OpenAI's v5 SAEs were mirrored).
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from saesteer.errors import SaesteerError
from saesteer.io import atomic_path, atomic_write_json
from saesteer.saes.base import SAE, SAEConfig
from saesteer.saes.download import is_offline

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
HUB_SPEC_FORM = "saelens:REPO_ID/FOLDER, e.g. saelens:jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/v5_32k_layer_6.pt"

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
"""SAELens architecture -> :class:`SAEConfig` activation."""
_SAELENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


# ------------------------------------------------------------------ dtypes
def parse_sae_dtype(value: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` / ``"float32"`` / ``"torch.bfloat16"`` -> a floating torch dtype, or a one-line error."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise SaesteerError(f"SAE dtype must be a floating type, got {value}")
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise SaesteerError(f"unknown dtype {value!r}; use one of float32, float16, bfloat16, float64")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the spelling SAELens writes)."""
    return str(dtype).removeprefix("torch.")


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
    act_fn = pick("activation_fn_str", "activation_fn")
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    architecture = str(cfg.get("architecture") or "standard").lower()
    if architecture == "standard" and act_fn == "topk":
        architecture = "topk"  # pre-6.0 schema: TopK was an activation of the standard architecture
    if architecture not in ARCHITECTURES:
        raise SaesteerError(
            f"{source}: unsupported SAELens architecture {architecture!r}; saesteer supports"
            f" {', '.join(ARCHITECTURES)}"
        )
    if architecture == "standard" and act_fn not in (None, "relu"):
        raise SaesteerError(f"{source}: unsupported activation_fn {act_fn!r}; saesteer supports relu and topk")
    k = (cfg["k"] if cfg.get("k") is not None else fn_kwargs.get("k")) if architecture == "topk" else None
    if architecture == "topk" and k is None:
        raise SaesteerError(f"{source}: a topk SAE needs 'k' (or activation_fn_kwargs.k) in cfg.json")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SaesteerError(f"{source}: rescale_acts_by_decoder_norm=true is not supported by saesteer")
    if cfg.get("finetuning_scaling_factor"):
        raise SaesteerError(f"{source}: finetuning_scaling_factor=true is not supported by saesteer")
    normalize = cfg.get("normalize_activations")
    if normalize is None or normalize is False:
        normalize = "none"
    elif normalize is True:  # pre-6.0 spelling of expected_average_only_in
        normalize = "expected_average_only_in"
    if normalize not in ("none", "layer_norm"):
        raise SaesteerError(
            f"{source}: unsupported normalize_activations {normalize!r}; saesteer supports none and"
            " layer_norm (fold scaling factors into the weights first)"
        )
    extra = {"format": "saelens", "architecture": architecture}
    for key in ("model_name", "neuronpedia_id", "hook_head_index", "context_size", "prepend_bos"):
        if pick(key) is not None:
            extra[key] = pick(key)
    if cfg.get("reshape_activations") not in (None, "none"):
        extra["reshape_activations"] = cfg["reshape_activations"]
    config = SAEConfig(
        d_in=cfg["d_in"],
        d_sae=cfg["d_sae"],
        activation=ARCHITECTURES[architecture],
        k=int(k) if k is not None else None,
        normalize=normalize,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        hook_name=pick("hook_name", "hook_point"),
        source=source,
        extra=extra,
    )
    return config, parse_sae_dtype(cfg.get("dtype") or "float32")


def config_to_dict(sae: SAE) -> dict:
    """What :func:`save_sae` writes to ``cfg.json``: SAELens keys, readable by both of its schemas."""
    c = sae.cfg
    architecture = {v: k for k, v in ARCHITECTURES.items()}[c.activation]
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
        "dtype": dtype_name(sae.dtype),
        "device": "cpu",
        "model_name": c.extra.get("model_name"),
        "neuronpedia_id": c.extra.get("neuronpedia_id"),
    }


# ------------------------------------------------------------------ weights
def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` file (on CPU) and its string metadata."""
    if not path.is_file():
        raise SaesteerError(f"no such SAE weights file: {path}")
    try:
        tensors = load_file(path, device="cpu")
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaesteerError(f"could not read {path} as safetensors ({exc}); the file is corrupt") from None
    return tensors, metadata


def build_sae(config: SAEConfig, tensors: dict[str, Tensor], dtype: torch.dtype) -> SAE:
    """SAELens-keyed tensors -> :class:`SAE` in ``dtype``; JumpReLU takes ``threshold`` or ``log_threshold``."""
    missing = [key for key in _SAELENS_KEYS if key not in tensors]
    if missing:
        raise SaesteerError(f"{config.source}: SAELens weights are missing {', '.join(missing)}")
    scale = tensors.get("scaling_factor")
    if scale is not None and not torch.all(scale == 1):
        raise SaesteerError(f"{config.source}: a non-trivial scaling_factor is not supported by saesteer")
    threshold = None
    if config.activation == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"]
        elif "log_threshold" in tensors:
            threshold = tensors["log_threshold"].exp()
        else:
            raise SaesteerError(f"{config.source}: a jumprelu SAE needs a 'threshold' tensor")
        threshold = threshold.to(dtype)
    W_enc, b_enc, W_dec, b_dec = (tensors[key].to(dtype) for key in _SAELENS_KEYS)
    return SAE(config, W_enc, b_enc, W_dec, b_dec, threshold=threshold)


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
    from saesteer.saes import openai

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
    """``saelens:REPO_ID/FOLDER``: fetch ``FOLDER/cfg.json`` and ``FOLDER/sae_weights.safetensors`` with
    ``huggingface_hub.hf_hub_download`` (into the Hub's own cache), then load them."""
    repo_id, folder = parse_hub_spec(spec)
    cfg_path = _hub_download(repo_id, f"{folder}/{CFG_FILENAME}", progress)
    weights_path = _hub_download(repo_id, f"{folder}/{WEIGHTS_FILENAME}", progress)
    sae = load_saelens_files(cfg_path, weights_path, source=spec)
    sae.cfg.extra.update({"repo_id": repo_id, "folder": folder, "path": str(Path(weights_path).parent)})
    return sae


def hf_hub_download(*args, **kwargs):
    """``huggingface_hub.hf_hub_download``, imported on first use (tests replace this name)."""
    from huggingface_hub import hf_hub_download as download

    if "tqdm_class" in kwargs and "tqdm_class" not in inspect.signature(download).parameters:
        kwargs.pop("tqdm_class")
    return download(*args, **kwargs)


def _hub_download(repo_id: str, filename: str, progress: bool) -> str:
    """One file from the Hub, with every failure turned into a one-line error that says how to fix it."""
    from huggingface_hub import errors

    kwargs = {"local_files_only": is_offline()}
    if not progress:
        kwargs["tqdm_class"] = _silent_tqdm_class()
    folder = Path(filename).parent.name or repo_id.split("/")[-1]
    fix = f"download the folder elsewhere and pass its local path, e.g. --sae /path/to/{folder}"
    try:
        return hf_hub_download(repo_id, filename, **kwargs)
    except errors.LocalEntryNotFoundError:
        raise SaesteerError(
            f"could not download {filename} from Hugging Face repo {repo_id} (offline, or no network?);"
            f" {fix}"
        ) from None
    except errors.RepositoryNotFoundError:
        raise SaesteerError(
            f"Hugging Face repo {repo_id} was not found (or is private/gated); check the spec, or {fix}"
        ) from None
    except errors.EntryNotFoundError:
        raise SaesteerError(
            f"Hugging Face repo {repo_id} has no file {filename}; check the folder name in the spec"
        ) from None
    except Exception as exc:  # network stacks raise many types; the user needs one line either way
        raise SaesteerError(
            f"could not download {filename} from Hugging Face repo {repo_id} ({type(exc).__name__};"
            f" no network?); {fix}"
        ) from None


def _silent_tqdm_class():
    """A tqdm class with the bar turned off, for ``progress=False``."""
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


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
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
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


def _write_weights(tensors: dict[str, Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    with open(path, "rb") as f:
        os.fsync(f.fileno())
