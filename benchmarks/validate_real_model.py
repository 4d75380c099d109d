"""Full-size validation on the real stories260K model (issues 7 and 16), with the targets checked.

    python benchmarks/validate_real_model.py                   # writes validation/ (report.html, report.json)
    python benchmarks/validate_real_model.py --seed 1 --out validation-seed1
    python benchmarks/validate_real_model.py --rescore validation-seed1          # count a stored run again,
    python benchmarks/validate_real_model.py --rescore validation-seed1 --word-rule clean   # under another rule

Runs ``saesteer.validation.validate`` with its defaults (layer 2, 1024 latents, k=16, 1M
self-sampled tokens) and prints the numbers, the time, the machine's load and which targets were met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Before torch loads: OpenMP threads that spin while waiting slow everything down ~10x on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = {  # key: (minimum or maximum, bound)
    "variance_explained": (">=", 0.95), "dead_fraction": ("<=", 0.01), "sample_and_train_s": ("<=", 180.0),
    "clear_bos": (">=", 15), "clear_prompt": (">=", 15), "clear_both": (">=", 8), "top20_score_hits": (">=", 10),
    "total_s": ("<=", 900.0),
}


def main() -> int:
    from saesteer.validation import DEFAULT_MODEL, validate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="validation")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--rescore", default=None, help="a finished run's --out folder: count it again, no sweeping")
    ap.add_argument("--word-rule", default=None, help="firing-word rule for --rescore (expected, excess, clean)")
    args = ap.parse_args()
    if args.rescore:
        from saesteer.validation.rescore import rescore

        rules = [args.word_rule] if args.word_rule else ["expected", "excess", "clean"]
        print(json.dumps({rule: _per_prompt(rescore(args.rescore, word_rule=rule)) for rule in rules}, indent=2))
        return 0
    v = validate(model=args.model, seed=args.seed, out=args.out, progress=not args.quiet)
    numbers = {k: v.report()[k] for k in ("variance_explained", "l0", "dead_fraction", "n_features", "clear_bos",
                                           "clear_prompt", "clear_both", "top20_score_hits",
                                           "top20_score_hits_no_fluency", "chance_bos", "chance_prompt", "chance_both")}
    numbers.update(v.timings)
    # sampling + training: what "trained in under 3 minutes" covers
    numbers["sample_and_train_s"] = round(v.timings["sample_s"] + v.timings["train_s"], 1)
    numbers["load_avg_1min"] = [v.machine["load_avg_1min"], v.machine["load_avg_1min_end"]]
    met = {k: (numbers[k] >= b if op == ">=" else numbers[k] <= b) for k, (op, b) in TARGETS.items()}
    # Issue 16, per prompt: top's first 20 by both measures; net of chance, passing both tests with p < 0.01.
    for label, cross in v.cross.items():
        both = v.nulls[label]["both"]
        numbers[f"{label}_top20_readback_top5"] = cross["top_steer_readback_top5"]
        numbers[f"{label}_top20_clear"] = cross["top_steer_clear"]
        numbers[f"{label}_both_net"], numbers[f"{label}_both_p"] = both["net"], both["p"]
        met[f"{label}_top20_readback_top5"] = cross["top_steer_readback_top5"] >= 18
        met[f"{label}_top20_clear"] = cross["top_steer_clear"] >= 15
        met[f"{label}_both_net_20_p_0.01"] = both["net"] >= 20 and both["p"] < 0.01
    print(json.dumps({"numbers": numbers, "targets_met": met}, indent=2))
    return 0 if all(met.values()) else 1


def _per_prompt(scored: dict) -> dict:
    """Per prompt label: each test's observed, chance, net and p; top's first 20 by both measures."""
    out = {}
    for label, tests in scored["nulls"].items():
        out[label] = {t: [d["observed"], d["chance"], d["net"], d["p"]] for t, d in tests.items()}
        if label in scored["cross"]:
            c = scored["cross"][label]
            out[label]["top20_readback_top5_clear"] = [c["top_steer_readback_top5"], c["top_steer_clear"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
