"""Is ``make bench`` no slower than at an earlier commit? Contender (c) of ``sweep_speed.py`` (saesteer float32)
from two source trees, timed in interleaved passes in one run.

Each tree's own ``benchmarks/sweep_speed.py`` serves contender (c) in its own process (its own ``src`` first on
``PYTHONPATH``), set up and warmed up untimed. The passes then alternate (base, new, new, base, base, new,
...), so that load from elsewhere hits both alike and neither always goes first. Both must generate the same
tokens.

    git worktree add --detach /tmp/base 19bcd4c          # the tree before the architecture rework
    python benchmarks/against_base.py --base /tmp/base --features 512 --passes 4

Prints (and writes to ``benchmarks/results/against_base.json``) each tree's pass times, min and median
features/s, the ratio new / base of each, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sweep_speed import Contender  # this folder is on sys.path when run as a script

HERE = Path(__file__).resolve().parent


def served_by(name: str, tree: Path, args, logs: Path) -> Contender:
    """Contender (c) served by ``tree``'s own ``sweep_speed.py`` (its ``src`` first on ``PYTHONPATH``)."""
    cmd = [sys.executable, str(tree / "benchmarks" / "sweep_speed.py"), "--worker", "c",
           "--features", str(args.features), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), HF_HUB_OFFLINE="1")
    return Contender(f"against_base_{name}", args, logs, cmd=cmd, env=env)


def rates(seconds: list[float], features: int) -> dict:
    fps = [features / s for s in seconds]
    return {"seconds": [round(s, 3) for s in seconds], "min_features_per_s": round(min(fps), 2),
            "median_features_per_s": round(statistics.median(fps), 2), "max_features_per_s": round(max(fps), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="The earlier tree (a git worktree of the base commit).")
    ap.add_argument("--new", default=str(HERE.parent), help="The tree to compare (default: this one).")
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=4, help="Timed passes per tree, interleaved.")
    ap.add_argument("--out", default=str(HERE / "results" / "against_base.json"))
    args = ap.parse_args()

    trees = {"base": Path(args.base).resolve(), "new": Path(args.new).resolve()}
    logs = Path(args.out).parent
    logs.mkdir(parents=True, exist_ok=True)
    served = {}
    for name, tree in trees.items():  # set up one after the other (untimed), then both wait
        served[name] = served_by(name, tree, args, logs)
        served[name].request()
    load_before = os.getloadavg()
    t0 = time.time()
    for i in range(args.passes):  # base, new, new, base, ...: neither always goes first
        for name in (("base", "new") if i % 2 == 0 else ("new", "base")):
            served[name].run()
    load_after = os.getloadavg()
    for s in served.values():
        s.close()
    report = {name: rates(s.times, args.features) for name, s in served.items()}
    report.update({
        "new_over_base_min": round(report["new"]["min_features_per_s"] / report["base"]["min_features_per_s"], 3),
        "new_over_base_median": round(report["new"]["median_features_per_s"]
                                      / report["base"]["median_features_per_s"], 3),
        "same_tokens": served["base"].tokens == served["new"].tokens,
        "trees": {k: str(v) for k, v in trees.items()}, "features": args.features, "threads": args.threads,
        "passes": args.passes, "timed_s": round(time.time() - t0, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    })
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
