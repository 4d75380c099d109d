"""Time a first sweep: one ``saesteer sweep`` process of 1024 features on a new model and SAE, with an empty
feature-facts cache, split into set-up, feature facts and the sweep loop (issue 17, item 2).

The model and SAE are those of ``full_sweep.py`` (GPT-2-small shapes with random weights and the real GPT-2
tokenizer; a random 32k TopK(32) SAE at layer 6, OpenAI v5 style). The sweep process runs with the
``saesteer.timing`` logger at debug level, so the feature facts report their parts (reference text,
activation statistics, logit lens, tokens and words) from inside the same process; the loop's time is the
manifest's ``elapsed_s``.

    python benchmarks/first_sweep.py                        # features 0:1024, value 20, 10 tokens
    python benchmarks/first_sweep.py --second               # then the same sweep again on the warm cache
    python benchmarks/first_sweep.py --root /tmp/fs --keep  # keep (and later reuse) the built model and SAE
    python benchmarks/first_sweep.py --root /tmp/fs --new-sae-only   # the model's reference text cached
    python benchmarks/first_sweep.py --root /tmp/fs --ablation-only  # the statistics' switch, in one process

Prints one JSON object (also written to ``benchmarks/results/first_sweep.json``): the process's wall time,
the loop time, the facts' time and parts, the set-up before the facts (imports, loading, fingerprints), the
rest (baseline, writing, exit), the ratio of wall time to loop time (the issue's target: at most 2), the peak
RSS, the thread count and the load average before and after. Numbers from a shared machine are not
comparable with another run's; the ratio is taken within one process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_sweep import build  # noqa: E402  (the same model and SAE as the full-sweep benchmark)

CHILD = """
import logging, sys, time
print(f"saesteer.timing process started at {time.time():.3f}", file=sys.stderr, flush=True)
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("saesteer.timing %(message)s"))
log = logging.getLogger("saesteer.timing")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
from saesteer.cli.main import main
print(f"saesteer.timing imported at {time.time():.3f}", file=sys.stderr, flush=True)
sys.argv[0] = "saesteer"
main()
"""

LINE = re.compile(r"saesteer\.timing (?P<what>[^:]+): (?P<s>[0-9.]+) s \(ended at (?P<end>[0-9.]+)\)")
MARK = re.compile(r"saesteer\.timing (?P<what>process started|imported) at (?P<t>[0-9.]+)")


def run_sweep(root: Path, out: Path, args) -> dict:
    """One sweep process; its wall time, the timing lines it logged, and its manifest."""
    cmd = [sys.executable, "-c", CHILD, "sweep", "--model", str(root / "model"), "--sae", str(root / "sae"),
           "--features", args.features, "--values", args.values, "--max-new-tokens", "10", "--out", str(out),
           "--quiet"] + args.extra.split()
    env = dict(os.environ, SAESTEER_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the sweep process failed ({proc.returncode})")
    parts, marks = {}, {}
    for line in proc.stderr.splitlines():
        if m := LINE.search(line):
            parts[m["what"].strip()] = (float(m["s"]), float(m["end"]))
        elif m := MARK.search(line):
            marks[m["what"]] = float(m["t"])
    manifest = json.loads((out / "manifest.json").read_text())
    return {"t0": t0, "wall": wall, "parts": parts, "marks": marks, "manifest": manifest}


def summary(r: dict) -> dict:
    """Wall, loop, facts (with parts), set-up before the facts, the rest, and the ratio wall / loop."""
    loop = float(r["manifest"]["elapsed_s"])
    parts = r["parts"]
    ref, computed = parts.get("feature facts, reference text"), parts.get("feature facts, computed")
    out = {"whole_process_s": round(r["wall"], 2), "loop_s": round(loop, 2),
           "features_per_second": r["manifest"].get("features_per_second"),
           "ratio_whole_to_loop": round(r["wall"] / loop, 2)}
    if ref and computed:
        facts_start = ref[1] - ref[0]
        out["facts_s"] = round(computed[1] - facts_start, 2)
        out["facts_parts_s"] = {k.replace("feature facts, ", ""): round(v[0], 2) for k, v in parts.items()}
        out["setup_before_facts_s"] = round(facts_start - r["t0"], 2)
        out["of_which_python_and_imports_s"] = round(r["marks"].get("imported", r["t0"]) - r["t0"], 2)
        out["rest_s (baseline, writing, exit)"] = round(r["wall"] - out["setup_before_facts_s"] - out["facts_s"]
                                                        - loop, 2)
    else:
        out["facts_s"] = 0.0  # read from the cache: no timing line
        out["facts_parts_s"] = {}
    return out


def ablation(root: Path, sequences: int = 64, rounds: int = 2) -> dict:
    """``firing_stats`` of the first 1024 features on ``sequences`` of the cached reference text, with
    ``only_columns`` off (the plain path: every latent formed) and on, interleaved; both must be equal."""
    import torch
    from safetensors.torch import load_file

    from saesteer import Steerer
    from saesteer.evaluation.activations import firing_stats

    files = sorted((root / "cache" / "reference").glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no cached reference text under {root / 'cache'}: run a first sweep with --root first")
    tokens = load_file(str(files[0]))["tokens"].long()[:sequences]
    st = Steerer(str(root / "model"), str(root / "sae"))
    cols = torch.arange(1024)
    times: dict[str, list[float]] = {"plain": [], "only_columns": []}
    results = {}
    for _ in range(rounds):
        for name in times:
            t = time.perf_counter()
            results[name] = firing_stats(st.lm.model, st.sae, st.hook_name, tokens, skip_ids=[st.lm.bos_token_id],
                                         columns=cols, only_columns=name == "only_columns")
            times[name].append(round(time.perf_counter() - t, 2))
    equal = all(torch.equal(results["plain"][k], results["only_columns"][k]) for k in results["plain"])
    return {"statistics_s": times, "speedup_min": round(min(times["plain"]) / min(times["only_columns"]), 2),
            "equal": equal, "sequences": sequences, "threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", default="0:1024")
    ap.add_argument("--values", default="20")
    ap.add_argument("--d-sae", type=int, default=32768)
    ap.add_argument("--extra", default="", help="More sweep options, e.g. '--dtype bfloat16'.")
    ap.add_argument("--root", default=None, help="Folder for the model and SAE (built there unless present).")
    ap.add_argument("--keep", action="store_true", help="Keep the model and SAE.")
    ap.add_argument("--second", action="store_true", help="Then run the same sweep again on the warm cache.")
    ap.add_argument("--new-sae-only", action="store_true",
                    help="Keep the model's sampled reference text cached (a first sweep of a new SAE on a known model).")
    ap.add_argument("--ablation-only", action="store_true",
                    help="Only time the statistics with only_columns off and on, interleaved, in one process (needs"
                         " --root of an earlier run, whose cached reference text it reads).")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "first_sweep.json"))
    args = ap.parse_args()

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="saesteer-first-sweep-"))
    if not (root / "sae" / "cfg.json").is_file():
        build(root, d_sae=args.d_sae, seed=0)
    if args.ablation_only:
        report = ablation(root)
        print(json.dumps(report, indent=2))
        return
    # a first sweep: nothing cached (with --new-sae-only, the model's sampled reference text stays)
    shutil.rmtree(root / "cache" / ("feature_facts" if args.new_sae_only else ""), ignore_errors=True)
    for name in ("sweep-first", "sweep-second"):
        shutil.rmtree(root / name, ignore_errors=True)
    load_before = os.getloadavg()
    first = run_sweep(root, root / "sweep-first", args)
    report = {"first": summary(first)}
    if args.second:
        report["second"] = summary(run_sweep(root, root / "sweep-second", args))
    report.update({
        "features": args.features, "d_sae": args.d_sae, "extra": args.extra, "new_sae_only": args.new_sae_only,
        "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    })
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(text + "\n")
    if not args.keep and not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
