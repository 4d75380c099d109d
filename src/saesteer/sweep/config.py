"""The settings of a sweep (``SweepConfig``) and of its Ray run (``RayConfig``), each declared once.

``Sweep(steerer, config, **keywords)``, ``saesteer sweep`` (its options and help are generated from these
fields), ``distributed_sweep`` and the manifest (``to_dict``, checked on read) all use them. A new sweep
option is one field here, plus its use; mark it ``identity=True`` when it changes results (it then
joins the sweep's identity, ``SweepSpec``, but only where it is not at its default: older folders resume).
"""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.config import Config, default_of, settings_of, setting
from saesteer.dtypes import dtype_name
from saesteer.errors import SaesteerError
from saesteer.steering.clamp import MODE_HELP, MODES
from saesteer.sweep.spec import FIRST_SETTINGS, parse_shard, parse_values

ENGINES = ("auto", "fast", "reference")


def format_shard(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def shard_tuple(shard) -> tuple[int, int]:
    """``"I/N"`` or ``(I, N)`` -> ``(I, N)``, with 0 <= I < N."""
    if isinstance(shard, str):
        return parse_shard(shard)
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise SaesteerError(f"shard {shard!r} must be (I, N) or 'I/N'") from None
    if not 0 <= i < n:
        raise SaesteerError(f"shard {(i, n)} must be (I, N) with 0 <= I < N")
    return (i, n)


def features_selection(features) -> str:
    """The text of a feature selection (an iterable of ints is listed); an empty one is refused."""
    if not isinstance(features, str):
        features = ",".join(str(int(f)) for f in features)
    if not features.strip():
        raise SaesteerError("--features is empty; give all, START:STOP (STOP exclusive) or a list like 1,5,10:20")
    return features


@dataclass(frozen=True)
class SweepConfig(Config):
    """What to sweep and how: every field is a keyword of :class:`saesteer.sweep.Sweep` and an option of
    ``saesteer sweep``."""

    name = "sweep settings"

    features: str = setting("all", parse=features_selection,
                            help="START:STOP (STOP exclusive), a list like 0:100,512, or all.")
    values: tuple[float, ...] = setting(
        (20.0,), identity=True, multiple=True, metavar="V[,V...]", parse=parse_values, cli_default=(),
        help="Absolute clamp values (repeatable, comma lists allowed, e.g. --values -20,10,20) [default: 2 x each"
             " feature's max activation, i.e. --relative --values 2].")
    relative: bool = setting(
        False, identity=True,
        help="Read --values as multiples of each feature's max activation on the reference text.")
    prompt: str | None = setting(None, identity=True,
                                 help="Text to continue; without it, generation starts from BOS alone.")
    max_new_tokens: int = setting(10, identity=True, min=1, max=4096, help="Tokens generated after the prompt.")
    mode: str = setting("delta", identity=True, choices=MODES, help=MODE_HELP)
    batch_size: int | None = setting(None, min=1, max=1 << 20,
                                     help="Rows (feature x value) per generate call; default 512.")
    dtype: str | None = setting(None, identity=True, cli_choices=("float32", "bfloat16"), parse=dtype_name,
                                help="Compute dtype of the engine (default: the model's, float32).")
    engine: str | None = setting(None, choices=ENGINES, cli_default="auto",
                                 help="Generation engine (results are the same; speed is not); default: the"
                                      " Steerer's.")
    shard: tuple[int, int] = setting((0, 1), identity=True, cli_default=None, metavar="I/N", encode=format_shard,
                                     parse=shard_tuple, help="Do the I-th (from 0) of N disjoint parts of the sweep.")
    fluency: bool = setting(False, identity=True,
                            help="Also measure each text's mean log-probability under the unsteered model.")
    readback: bool = setting(False, identity=True,
                             help="Also measure each text's readback: the SAE's activations as the unsteered model"
                                  " reads it (model-internal evidence; top --sort readback).")
    auto_strength: bool = setting(
        False, identity=True,
        help="Search each feature's strength by bisection (the largest multiple of its max activation that keeps"
             " fluency, else the smallest that changes the text); --values then multiply that strength"
             " (e.g. --values 1).")
    reference_text: str | None = setting(
        None, path="file", help="Text file on which firing tokens are found (default: text the model samples itself).")
    reference_samples: int = setting(256, min=1, max=100_000,
                                     help="Sequences the model samples as reference text (without --reference-text).")
    reference_length: int = setting(64, min=1, max=4096, help="Tokens per reference sequence.")
    reference_seed: int = setting(0, help="Seed of the reference text the model samples (without --reference-text).")
    cache_dir: str | None = setting(None, cli=False, record=False,
                                    help="Feature-facts cache (default: $SAESTEER_CACHE or ~/.cache/saesteer).")

    def identity(self) -> tuple[dict, tuple]:
        """The settings that decide results: the first spec's by name, and ``SweepSpec.options`` (later ones,
        only where not at their default)."""
        first, later = {}, []
        for f, s, _ in settings_of(type(self)):
            value = getattr(self, f.name)
            if s.identity and f.name in FIRST_SETTINGS:
                first[f.name] = value
            elif s.identity and value != default_of(f):
                later.append((f.name, self.to_dict()[f.name]))
        return first, tuple(sorted(later))


@dataclass(frozen=True)
class RayConfig(Config):
    """How a sweep runs on Ray (``distributed_sweep`` keywords, ``saesteer sweep --ray`` options)."""

    name = "Ray settings"

    address: str | None = setting(
        None, cli_name="--ray", flag_value="local", metavar="[ADDRESS]",
        help="Run on Ray workers: --ray alone starts a local Ray instance; --ray auto or --ray ray://HOST:10001"
             " joins a cluster (needs pip install 'saesteer[ray]').")
    workers: int | None = setting(
        None, min=1, max=1 << 16,
        help="With --ray: worker processes, each loading the model once (default: as many as the cluster fits).")
    gpus_per_worker: float = setting(
        0.0, min=0, max=1024,
        help="With --ray: GPUs Ray gives each worker (fractions share a GPU); 0: CPU workers.")
    cpus_per_worker: float = setting(1.0, min=0, cli=False, help="CPUs Ray gives each worker.")
    chunk_features: int | None = setting(
        None, min=1, cli=False,
        help="Features per work unit (default: batch_size rows' worth, smaller when workers would idle).")
    max_retries: int = setting(3, min=0, cli=False,
                               help="Times a chunk is sent again after its worker died or failed.")
    driver_device: str | None = setting(
        None, cli=False, help="Where the driver computes facts and baseline (default: the workers' device if here).")
