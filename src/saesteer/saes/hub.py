"""Files from the Hugging Face Hub (``huggingface_hub.hf_hub_download``, into the Hub's own cache), with
every failure turned into one line that says how to fix it."""

from __future__ import annotations

import inspect
from pathlib import Path

from saesteer.errors import SaesteerError
from saesteer.saes.download import is_offline


class MissingHubFile(SaesteerError):
    """The repo exists but has no such file (callers probing for a format catch this one)."""


def hf_hub_download(*args, **kwargs):
    """``huggingface_hub.hf_hub_download``, imported on first use (tests replace this name)."""
    from huggingface_hub import hf_hub_download as download

    if "tqdm_class" in kwargs and "tqdm_class" not in inspect.signature(download).parameters:
        kwargs.pop("tqdm_class")
    return download(*args, **kwargs)


def hub_file(repo_id: str, filename: str, *, progress: bool = True) -> str:
    """One file from a Hub repo: its local path, or a one-line error (:class:`MissingHubFile` if absent)."""
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
        raise MissingHubFile(
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
