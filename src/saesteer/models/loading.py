"""Load a Hugging Face causal LM and its tokenizer, or wrap a model the user already holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from saesteer import assets, net
from saesteer.dtypes import parse_dtype  # a model's dtype: COMPUTE_DTYPES (used here and by the engine)
from saesteer.errors import SaesteerError

ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
}



def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``auto`` picks CUDA when present, else CPU; a CUDA request without CUDA is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SaesteerError("--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu")
    return device


def check_utf8(text: str, what: str = "the prompt") -> None:
    """One-line error for text that is not valid Unicode, e.g. bytes that were not UTF-8 in a command-line
    argument (Python keeps them as lone surrogates, which no tokenizer accepts)."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(str(text)[exc.start])
        shown = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise SaesteerError(f"{what} is not valid UTF-8 text ({shown} at character {exc.start}); pass UTF-8"
                            " (check the encoding of your terminal or file)") from None


@dataclass
class LoadedModel:
    """A causal LM in eval mode with the facts steering needs: tokenizer, BOS/EOS/pad ids, device, name."""

    model: nn.Module
    tokenizer: object | None
    name: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_positions(self) -> int | None:
        """The model's context length (learned position embeddings or the configured maximum), if it has one."""
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)

    def check_fits(self, n_tokens: int, max_new_tokens: int = 0) -> None:
        """One-line error unless a prompt of ``n_tokens`` plus ``max_new_tokens`` fits in the model's positions
        (the last new token needs no position of its own)."""
        limit = self.max_positions
        if limit is not None and n_tokens + max(max_new_tokens - 1, 0) > limit:
            extra, fix = (f" + max_new_tokens ({max_new_tokens})", " or generate fewer tokens") if max_new_tokens \
                else ("", "")
            raise SaesteerError(f"the prompt ({n_tokens} tokens){extra} does not fit in the model's {limit}"
                                f" positions; shorten the prompt{fix}")

    def encode(self, text: str, *, prepend_bos: bool = True) -> list[int]:
        """Token ids of ``text``, with the BOS token in front by default (as TransformerLens does)."""
        if self.tokenizer is None:
            raise SaesteerError("this model has no tokenizer (a model directory needs its tokenizer files beside"
                                " config.json); pass token ids, or load it with a tokenizer")
        check_utf8(text)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        if prepend_bos:
            if self.bos_token_id is None:
                raise SaesteerError("this model has no BOS or end-of-text token to start from; pass"
                                    " prepend_bos=False (--no-bos) and a prompt")
            ids = [self.bos_token_id] + ids
        if not ids:
            raise SaesteerError("the prompt is empty and BOS is turned off: nothing to generate from")
        return ids

    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Text of ``ids`` token by token (special tokens shown by name); for generated text use
        :meth:`continuation`, which decodes in context and leaves special tokens out."""
        if self.tokenizer is None:
            return " ".join(str(int(i)) for i in ids)
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def continuation(self, prompt_ids, new_ids) -> str:
        """Text of ``new_ids`` as the tokenizer means it after ``prompt_ids``.

        Decoding the new tokens alone loses what depends on context (a SentencePiece decoder strips the
        first token's space: "therewas"), so the whole sequence is decoded and split where the prompt's text
        ends. Special tokens are never text.
        """
        whole = self.decode(list(prompt_ids) + list(new_ids), skip_special=True)
        head = self.decode(prompt_ids, skip_special=True)
        if whole.startswith(head):
            return whole[len(head):]
        return self.decode(new_ids, skip_special=True)  # the prompt ends inside a UTF-8 character: no clean split

    def token_strings(self, ids) -> list[str]:
        """Each token on its own, as text (for tables and logit-lens lists; special tokens shown)."""
        return [self.decode([int(i)]) for i in ids]


def _first_id(value) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _token_id(tokenizer, config, attr: str) -> int | None:
    """The tokenizer's ``attr`` (``bos_token_id``...), else the model config's."""
    found = _first_id(getattr(tokenizer, attr, None) if tokenizer is not None else None)
    return found if found is not None else _first_id(getattr(config, attr, None))


def wrap_model(model: nn.Module, tokenizer=None, *, name: str | None = None) -> LoadedModel:
    """Use a model object the user already holds (any HF causal LM with a known hook-site mapping).

    The start token (``bos_token_id``) is the tokenizer's BOS, else the model config's, else the end-of-text
    token (the tokenizer's EOS, else the config's): models without a BOS (Qwen 2 and 2.5) separate their
    training documents with it. Only a model with neither has no start token."""
    model.eval()
    config = getattr(model, "config", None)
    eos = _token_id(tokenizer, config, "eos_token_id")
    bos = _token_id(tokenizer, config, "bos_token_id")
    if bos is None:
        bos = eos
    pad = _first_id(getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None)
    if pad is None:
        pad = eos if eos is not None else (bos if bos is not None else 0)
    name = name or getattr(config, "_name_or_path", None) or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(name), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def _real_tokenizer(tokenizer):
    """``tokenizer``, or None when it holds nothing but special tokens: given a folder without tokenizer files,
    transformers 5 builds such an empty one (GPT-2's class from the config), which turns every text into no
    tokens at all."""
    try:
        special = set(tokenizer.all_special_ids)
        return tokenizer if len(tokenizer) > len(special) else None
    except (AttributeError, TypeError):
        return tokenizer


def _cached(repo: str) -> bool:
    """Whether the hub cache already holds this repo's config (then no network is needed)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


def _check_model_dir(path: Path, name: str) -> None:
    """A local folder must be a Hugging Face model directory; say so in one line when it is not."""
    if not path.is_dir():
        raise SaesteerError(f"model path {name!r} is a file; pass a Hugging Face model directory (with config.json)")
    if not (path / "config.json").is_file():
        raise SaesteerError(f"{name!r} has no config.json, so it is not a Hugging Face model directory; pass the"
                            " folder that holds config.json and the weights (or save one with save_pretrained)")


def load_model(
    name_or_path: str = "gpt2-small",
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load ``gpt2-small``/``gpt2`` (hub ``openai-community/gpt2``), the embedded ``stories260K``, any hub id,
    or a local HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise; hub downloads keep their own bars
    hf_logging.set_verbosity_error()
    path_text = assets.model_path(name_or_path)
    repo = ALIASES.get(name_or_path, path_text)
    local = Path(path_text).expanduser()
    is_local = local.exists()
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if not is_local and looks_like_path:
        raise SaesteerError(f"model directory {name_or_path!r} does not exist; pass a Hugging Face model directory")
    if is_local:
        _check_model_dir(local, name_or_path)
    source = str(local) if is_local else repo
    torch_dtype = parse_dtype(dtype) or torch.float32
    # Try the local cache first; reach for the hub only when it answers, so an offline machine fails at
    # once with a clear message instead of after a minute of retries.
    local_only = is_local or net.offline_by_env() or _cached(source) or not net.hub_reachable()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
        try:
            tokenizer = _real_tokenizer(AutoTokenizer.from_pretrained(source, local_files_only=local_only))
        except (OSError, ValueError):
            tokenizer = None
    except OSError as exc:
        hint = (
            "it is not in the local Hugging Face cache and the hub is unreachable (offline)"
            if local_only and not is_local
            else str(exc).strip().splitlines()[0]
        )
        raise SaesteerError(
            f"could not load model {source!r}: {hint}; download it where the hub is reachable, or pass a"
            " local Hugging Face directory with --model PATH"
        ) from None
    model.to(resolve_device(device))
    return wrap_model(model, tokenizer, name=name_or_path)


def as_loaded(model, tokenizer=None, *, device="cpu", dtype=None) -> LoadedModel:
    """Accept a name/path, a LoadedModel, or a raw model object; return a LoadedModel."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(str(model), device=device, dtype=dtype)
    return wrap_model(model, tokenizer)
