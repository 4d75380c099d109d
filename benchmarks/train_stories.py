"""Train a TopK SAE on stories260K's own samples and report quality and time.

    python benchmarks/train_stories.py                  # 1M tokens, 1024 latents, k=16, 2 epochs
    python benchmarks/train_stories.py --out out/sae    # also save it (SAELens folder) and reload it

Targets (issue 7): variance explained >= 0.95 on held-out samples, <= 1% dead latents, sampling plus
training under 3 minutes on a 2-core CPU. Held-out activations are sampled with another seed and are not
counted in the time. The model is read from ``../shared/models/stories260K-hf`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "stories260K-hf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--hook", default="blocks.2.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens to sample")
    ap.add_argument("--held-out", type=int, default=100_000, help="held-out tokens for evaluation")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sample-batch", type=int, default=512, help="rows sampled at a time")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared, busy 2-core CPU a second spinning OpenMP thread costs more"
                         " than it gains; 0: torch's choice)")
    ap.add_argument("--out", default=None, help="save the SAE here (SAELens folder) and check it reloads")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from saesteer.models.loading import load_model
    from saesteer.training import evaluate_sae, sample_activations, train_topk_sae

    progress = not args.no_progress
    lm = load_model(args.model)
    t0, c0 = time.perf_counter(), time.process_time()
    acts = sample_activations(lm, args.hook, args.tokens, seq_len=args.seq_len, batch_size=args.sample_batch,
                              seed=args.seed, progress=progress)
    t1, c1 = time.perf_counter(), time.process_time()
    sae, stats = train_topk_sae(acts, d_sae=args.d_sae, k=args.k, epochs=args.epochs, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, hook_name=args.hook, progress=progress)
    t2, c2 = time.perf_counter(), time.process_time()
    held = sample_activations(lm, args.hook, args.held_out, seq_len=args.seq_len, batch_size=args.sample_batch,
                              seed=args.seed + 1_000, progress=False)
    ve, l0, dead = evaluate_sae(sae, held)
    result = {
        "threads": torch.get_num_threads(),
        "tokens": args.tokens, "seq_len": args.seq_len, "d_sae": args.d_sae, "k": args.k,
        "epochs": args.epochs, "batch_size": args.batch_size, "steps": stats.steps,
        "sample_s": round(t1 - t0, 1), "sample_cpu_s": round(c1 - c0, 1),
        "train_s": round(t2 - t1, 1), "train_cpu_s": round(c2 - c1, 1),
        "total_s": round(t2 - t0, 1),
        "held_out_variance_explained": round(ve, 4), "held_out_l0": round(l0, 2),
        "held_out_dead_fraction": round(dead, 4),
        "train_variance_explained": round(stats.variance_explained, 4),
        "train_dead_fraction": round(stats.dead_fraction, 4),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if args.out:
        from saesteer.saes import load_sae, save_sae

        loaded = load_sae(str(save_sae(sae, args.out)))
        assert torch.equal(loaded.W_dec, sae.W_dec) and loaded.hook_name == args.hook
        result["saved_to"] = args.out
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
