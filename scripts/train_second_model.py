"""Train a second real model for `saesteer validate`: a tiny GPT-2 on Python's own documentation (not TinyStories).

    python scripts/train_second_model.py --out /work/models/pydocs-gpt2      # a few minutes on one CPU core

stories260K (Llama, SentencePiece, 512 tokens, TinyStories) is the only pretrained model this machine has; the
validation must give results of the same kind on other real models. This script makes one that differs in
family, tokenizer and domain, from text every Python installation holds offline:

* **corpus**: the Python reference documentation shipped in ``pydoc_data.topics`` and the docstrings of the
  standard library's modules, classes and functions (``ast``; tests, IDLE, lib2to3 and Tk left out), sorted by
  file so the corpus is the same for the same Python version; its SHA-256 is recorded;
* **tokenizer**: a byte-level BPE (GPT-2 style, ``Ġ`` for spaces) trained on that corpus with
  ``tokenizers``, ``--vocab`` entries, ``<|endoftext|>`` as BOS, EOS and pad (id 0, as GPT-2's single special
  token);
* **model**: ``GPT2LMHeadModel`` (learned positions, LayerNorm, GELU, tied embeddings), ``--positions``
  context, trained from scratch on packed rows that each start with ``<|endoftext|>`` (documents separated by
  it), AdamW with warmup and cosine decay, seeded.

Writes a Hugging Face directory (model, tokenizer, ``training.json`` with the corpus hash, settings, loss
on held-out rows and time). Keep the weights out of the repository (the default ``--out`` is outside it).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
import time
from pathlib import Path

SKIP = ("test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip", "pydoc_data")


def _clean(text: str) -> str:
    """One docstring as prose: paragraphs kept, lines inside a paragraph joined, blank runs collapsed."""
    paras = [" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paras if p)


def _prose(text: str) -> bool:
    """Mostly words: a docstring of code listings or tables says little about English."""
    letters = sum(c.isalpha() or c == " " for c in text)
    return len(text.split()) >= 12 and letters >= 0.8 * len(text)


def build_corpus() -> list[str]:
    """The documents (``pydoc_data`` topics, then standard-library docstrings), in a fixed order."""
    import pydoc_data.topics as topics

    docs = [_clean(topics.topics[k]) for k in sorted(topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in SKIP or part.startswith("test") for part in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and _prose(doc):
                    docs.append(_clean(doc))
    return docs


def train_tokenizer(docs: list[str], vocab: int, out: Path):
    """A byte-level BPE tokenizer trained on ``docs``, saved as a transformers tokenizer in ``out``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(out)
    return tok


def packed_rows(docs: list[str], tok, seq_len: int):
    """Rows of ``seq_len`` tokens, each ``<|endoftext|>`` then a slice of the documents joined by it."""
    import torch

    eos = tok.eos_token_id
    stream: list[int] = []
    for d in docs:
        stream += tok.encode(d, add_special_tokens=False) + [eos]
    step = seq_len - 1
    n = len(stream) // step
    rows = torch.tensor([[eos] + stream[i * step:(i + 1) * step] for i in range(n)], dtype=torch.long)
    return rows, len(stream)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/models/pydocs-gpt2")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    docs = build_corpus()
    corpus_sha = hashlib.sha256("\n\n".join(docs).encode("utf-8")).hexdigest()[:16]
    tok = train_tokenizer(docs, args.vocab, out)
    rows, n_tokens = packed_rows(docs, tok, args.seq_len)
    gen = torch.Generator().manual_seed(args.seed)
    rows = rows[torch.randperm(len(rows), generator=gen)]
    held = max(args.batch, len(rows) // 50)
    held_rows, train_rows = rows[:held], rows[held:]
    t_prep = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_positions=args.positions, n_embd=args.d_model, n_layer=args.layers,
                        n_head=args.heads, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    model.train()
    t1 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(train_rows), (args.batch,), generator=gen)
        batch = train_rows[idx]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t1:.0f}s)", file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t1
    model.eval()
    with torch.no_grad():
        held_loss = sum(model(input_ids=held_rows[i:i + 64], labels=held_rows[i:i + 64]).loss.item() * len(held_rows[i:i + 64])
                        for i in range(0, len(held_rows), 64)) / len(held_rows)
    model.save_pretrained(out)
    info = {"corpus": {"documents": len(docs), "tokens": n_tokens, "sha256": corpus_sha,
                       "python": sys.version.split()[0]},
            "settings": vars(args), "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens_seen": args.steps * args.batch * args.seq_len, "held_out_loss": round(held_loss, 4),
            "prep_s": round(t_prep, 1), "train_s": round(t_train, 1), "load_avg_1min": os.getloadavg()[0]}
    (out / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
