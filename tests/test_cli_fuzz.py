"""Property-based fuzzing (Hypothesis) of every parser behind a CLI option, and of the CLI itself on options
read before a model loads. Each input is either understood (and the result obeys its rule) or refused with
one line (``SaesteerError``; the CLI: exit 2, no traceback); nothing is ever created by refusing.

Bounded: a few hundred examples per property, derandomised (the same examples in every CI run), no example
database; the module takes well under a minute.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("hypothesis", reason="needs the test extra: pip install -e '.[test]'")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from saesteer.cli.core_commands import parse_range  # noqa: E402
from saesteer.cli.main import run  # noqa: E402
from saesteer.cli.train_commands import parse_value_list  # noqa: E402
from saesteer.dtypes import SAE_DTYPES  # noqa: E402
from saesteer.errors import SaesteerError  # noqa: E402
from saesteer.evaluation.compare import parse_clamp_values, parse_feature_or_clamp  # noqa: E402
from saesteer.models.hook_sites import parse_hook_name  # noqa: E402
from saesteer.models.loading import check_utf8, parse_dtype  # noqa: E402
from saesteer.outputs import check_output_file, check_output_folder  # noqa: E402
from saesteer.steering.clamp import FeatureClamp, parse_clamp  # noqa: E402
from saesteer.steering.values import MAX_ABS_VALUE  # noqa: E402
from saesteer.sweep.spec import parse_features, parse_shard, parse_values  # noqa: E402


def parse_sae_dtype(text):
    """An SAE's dtype: the one dtype parser (``saesteer.dtypes``), with the names SAE weights take."""
    return parse_dtype(text, allowed=SAE_DTYPES)


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI_FUZZ = settings(FUZZ, max_examples=30)

# Text made of the pieces these options are written with, plus anything at all.
PIECES = ["0", "1", "7", "12", "-", "+", ":", ",", "=", "/", ".", "e", "E", "9" * 30, "inf", "nan", "all", " ",
          "_", "\t", "\n", "\x00", "٣", "１", "\udce9", "1e39", "1e5", "-1e5", "0x10", "float32", "bfloat16",
          "torch.", "blocks.", "hook_resid_post", "hello " * 60]
BAD_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")
option_text = st.one_of(st.lists(st.sampled_from(PIECES), max_size=8).map("".join), st.text(max_size=30))


def one_line(exc: SaesteerError) -> None:
    assert str(exc) and "\n" not in str(exc)


def bounded(v: float) -> bool:
    return math.isfinite(v) and abs(v) <= MAX_ABS_VALUE


@FUZZ
@given(option_text)
def test_clamp_specs(text):
    for parse in (parse_clamp, parse_feature_or_clamp):
        try:
            out = parse(text)
        except SaesteerError as exc:
            one_line(exc)
            continue
        f, v = (out.feature, out.value) if isinstance(out, FeatureClamp) else out
        assert isinstance(f, int) and (v is None or bounded(v))


@FUZZ
@given(st.integers(0, 1 << 40), st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE))
def test_clamp_specs_round_trip(feature, value):
    assert parse_clamp(f"{feature}={value!r}") == FeatureClamp(feature, value)
    assert parse_feature_or_clamp(f"{feature}={value!r}") == (feature, value)


@FUZZ
@given(option_text)
def test_value_lists(text):
    for parse in (parse_clamp_values, parse_value_list, lambda t: parse_values([t])):
        try:
            out = parse(text)
        except SaesteerError as exc:
            one_line(exc)
            continue
        assert all(bounded(v) for v in out or ())
    try:
        values = parse_values([text, text])
    except SaesteerError:
        return
    assert len(set(values)) == len(values) >= 1  # duplicates dropped, never empty


@FUZZ
@given(option_text, st.integers(1, 5000))
def test_feature_ranges(text, d_sae):
    try:
        ranges = parse_features(text, d_sae)
    except SaesteerError as exc:
        one_line(exc)
    else:
        assert all(0 <= a < b <= d_sae for a, b in ranges)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))  # sorted, merged
    try:
        r = parse_range(text, d_sae)
    except SaesteerError as exc:
        one_line(exc)
    else:
        assert len(r) > 0 and 0 <= r.start and r.stop <= d_sae and r.step == 1


@FUZZ
@given(option_text)
def test_shard_specs(text):
    try:
        i, n = parse_shard(text)
    except SaesteerError as exc:
        one_line(exc)
    else:
        assert 0 <= i < n


@FUZZ
@given(option_text)
def test_dtypes_and_hook_names(text):
    for parse, ok in ((parse_dtype, lambda d: isinstance(d, torch.dtype) or d is None),
                      (parse_sae_dtype, lambda d: d.is_floating_point),
                      (parse_hook_name, lambda h: h[0] >= 0 and h[1].startswith("hook_"))):
        try:
            out = parse(text)
        except SaesteerError as exc:
            one_line(exc)
        else:
            assert ok(out)


@FUZZ
@given(st.text(max_size=20))
def test_prompts_are_utf8_or_refused_in_one_line(text):
    try:
        check_utf8(text)
    except SaesteerError as exc:
        one_line(exc)
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    else:
        text.encode("utf-8")


@FUZZ
@given(path=option_text)
def test_output_paths_are_checked_without_creating_anything(tmp_path, path):
    folder = tmp_path / "outs"
    folder.mkdir(exist_ok=True)
    for check in (check_output_file, check_output_folder):
        try:
            check(folder / path)
        except SaesteerError as exc:
            one_line(exc)
    assert list(folder.iterdir()) == []


NO_MODEL = "/nonexistent/model"  # every run below stops at the model at the latest: no work is ever done


def _cli(capsys, args) -> None:
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@CLI_FUZZ
@given(option_text)
@example("hello " * 60)  # longer than a file name may be: once an OSError from the --prompt-file hint
@example(BAD_UTF8)
def test_cli_generate_clamp_and_prompt(capsys, text):
    _cli(capsys, ["generate", "--model", NO_MODEL, "--clamp", text])
    _cli(capsys, ["generate", "--model", NO_MODEL, "--prompt", text, "--clamp", "3=2"])


@CLI_FUZZ
@given(option_text, option_text)
def test_cli_compare_values_and_clamps(capsys, values, clamp):
    _cli(capsys, ["compare", "--model", NO_MODEL, "--clamp", clamp, "--values", values])


@CLI_FUZZ
@given(option_text, option_text)
def test_cli_sweep_shard_and_values(capsys, tmp_path, shard, values):
    _cli(capsys, ["sweep", "--model", NO_MODEL, "--shard", shard, "--values", values, "--out", str(tmp_path / "sw")])
    assert not (tmp_path / "sw").exists()


@CLI_FUZZ
@given(option_text)
def test_cli_output_paths(capsys, tmp_path, path):
    folder = tmp_path / "cli-outs"
    folder.mkdir(exist_ok=True)
    _cli(capsys, ["batch", "--model", NO_MODEL, "--features", "0:2", "--out", str(folder / path)])
    _cli(capsys, ["train-sae", "--model", NO_MODEL, "--hook", "blocks.0.hook_resid_post", "--out", str(folder / path)])
    # no file but the (unlocked) lock file, and its folder, of a run that got as far as loading the model
    assert [p for p in folder.rglob("*") if not p.is_dir() and not p.name.endswith(".lock")] == []
