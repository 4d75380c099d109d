"""What every SAE file format shares: reading tensors from ``.safetensors`` and ``.npz``
files (never with pickle)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from saesteer.errors import SaesteerError


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` file (on CPU) and its string metadata."""
    path = Path(path)
    if not path.is_file():
        raise SaesteerError(f"no such SAE weights file: {path}")
    try:
        tensors = load_file(path, device="cpu")
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaesteerError(f"could not read {path} as safetensors ({exc}); the file is corrupt") from None
    return tensors, metadata


def read_npz(path: Path) -> dict[str, Tensor]:
    """All arrays of a NumPy ``.npz`` file as float32 CPU tensors (``allow_pickle=False``: object arrays are refused)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise SaesteerError(f"no such SAE weights file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.asarray(data[key], dtype=np.float32)) for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SaesteerError(
                f"refusing to load {path}: it holds pickled objects, which could run code; saesteer reads only"
                " plain numeric arrays"
            ) from None
        raise SaesteerError(f"could not read {path} as a NumPy .npz file ({exc}); the file is corrupt") from None
    except (OSError, EOFError, KeyError) as exc:
        raise SaesteerError(
            f"could not read {path} as a NumPy .npz file ({type(exc).__name__}); the file is corrupt"
        ) from None


def read_state_dict(path: Path) -> dict:
    """``torch.load(path, weights_only=True, map_location="cpu")``, with one-line errors and refusals.

    A file that torch's weights-only unpickler rejects because it names a global (a class, a function such as
    ``os.system``) is *refused*, naming that global; one that is not a readable pickle at all is *corrupt*.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise SaesteerError(f"no such SAE file: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then rejects anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        unsafe = unsafe_global(path)
        if unsafe:
            raise SaesteerError(
                f"refusing to load {path}: it needs arbitrary unpickling ({unsafe}), which could run"
                " code; saesteer loads only plain state dicts (torch.load weights_only=True); re-save its"
                " state_dict() with torch.save, or convert it to safetensors"
            ) from None
        text = str(exc)
        reason = re.search(r"Unsupported operand \d+", text)
        reason = reason.group(0) if reason else type(exc).__name__
        raise SaesteerError(
            f"could not read {path} as a PyTorch state dict with torch.load(weights_only=True) ({reason});"
            " it is corrupt or not a plain state dict: download it again, or re-save it with torch.save"
        ) from None
    if not isinstance(obj, dict):
        raise SaesteerError(f"{path} holds a {type(obj).__name__}, not an SAE state dict")
    return obj


SAFE_GLOBALS = ("collections.OrderedDict", "_codecs.encode")
"""Globals besides ``torch.*`` that a plain state dict names (torch's weights-only unpickler allows them)."""


def unsafe_global(path: Path) -> str | None:
    """The first global other than ``torch.*`` and :data:`SAFE_GLOBALS` that the pickle in ``path`` (a torch zip or a raw
    pickle) would import, read without executing anything; None if there is none or the pickle is unreadable."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = Path(path).read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if name.split(".")[0] != "torch" and name not in SAFE_GLOBALS:
                return name
    except Exception:  # unreadable pickle: corrupt, not refused
        return None
    return None
