"""Clamp values obey one rule everywhere (finite, |v| <= steering.values.MAX_ABS_VALUE), checked before any
work; a generation whose outputs become inf/NaN is refused instead of being returned as "!!!!!!!!!!"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saesteer.cli.main import run
from saesteer.errors import SaesteerError
from saesteer.steering.clamp import FeatureClamp, as_clamps, parse_clamp
from saesteer.steering.values import MAX_ABS_VALUE, check_value

HOOK = "blocks.6.hook_resid_post"


@pytest.fixture()
def base(tiny_model_dir, tiny_sae_pt):
    return ["--model", str(tiny_model_dir), "--sae", str(tiny_sae_pt), "--hook", HOOK]


@pytest.mark.parametrize("value", [1e30, -1e30, 1e39, float("inf"), float("nan"), MAX_ABS_VALUE * 1.0001])
def test_python_api_refuses_values_outside_the_rule(value):
    with pytest.raises(SaesteerError, match="between -100000 and 100000"):
        FeatureClamp(3, value)
    with pytest.raises(SaesteerError):
        as_clamps({3: value})


def test_the_bounds_themselves_are_accepted():
    assert FeatureClamp(3, MAX_ABS_VALUE).value == MAX_ABS_VALUE
    assert FeatureClamp(3, -MAX_ABS_VALUE).value == -MAX_ABS_VALUE
    assert parse_clamp("3=1e5").value == 1e5
    assert check_value("20") == 20.0


def test_web_api_uses_the_same_bound():
    from saesteer.web import schemas

    assert schemas.MAX_ABS_VALUE is MAX_ABS_VALUE
    with pytest.raises(ValueError):
        schemas.ClampSpec(feature=0, value=MAX_ABS_VALUE * 2)


@pytest.mark.parametrize("args", [
    ["generate", "--clamp", "3=1e30"],
    ["generate", "--clamp", "3=1e39"],
    ["compare", "--clamp", "3=1e30", "--no-facts"],
    ["compare", "--clamp", "3", "--values", "0,1e39", "--no-facts"],
    ["batch", "--features", "0:4", "--value", "1e30", "--out", "{tmp}/b.txt"],
    ["feature", "3", "--values", "1e30"],
])
def test_cli_refuses_absurd_values_in_one_line(capsys, base, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run([args[0], *base, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "between -100000 and 100000" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.txt").exists()


@pytest.mark.parametrize("values", ["1e30", "1e39", "20,-1e39"])
def test_sweep_refuses_absurd_values_before_creating_its_folder(capsys, base, tmp_path, values):
    out = tmp_path / "sw"
    assert run(["sweep", *base, "--features", "0:4", "--values", values, "--quiet", "--out", str(out)]) == 2
    assert "between -100000 and 100000" in capsys.readouterr().err
    assert not out.exists()  # nothing marked "running"


def test_relative_values_are_bounded_once_multiplied(tiny_loaded, tiny_sae, tmp_path):
    from saesteer.steerer import Steerer
    from saesteer.sweep.runner import Sweep

    st = Steerer(tiny_loaded, tiny_sae)
    out = tmp_path / "rel"
    sw = Sweep(st, features="0:2", values=[MAX_ABS_VALUE], relative=True, max_new_tokens=2, out=out,
               reference_samples=2, reference_length=8)
    sw.facts.tensors["max_act"][1] = 3.0  # feature 1 peaks at 3: 1e5 x 3 is over the bound
    with pytest.raises(SaesteerError, match="max activation"):
        list(sw.run())
    assert not out.exists()


@pytest.mark.parametrize("engine", ["reference", "auto"])
def test_non_finite_outputs_are_refused_not_returned(tiny_loaded, tiny_sae, engine):
    from saesteer.steerer import Steerer

    st = Steerer(tiny_loaded, tiny_sae, engine=engine)
    with pytest.raises(SaesteerError, match="infinite or NaN"):
        st.generate("Happiness is", edit=lambda act: act * math.inf, max_new_tokens=4)
    ok = st.generate("Happiness is", edit=lambda act: act * 2.0, max_new_tokens=4)
    assert len(ok.tokens) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_finite_check_refuses_any_inf_or_nan_and_only_those(dtype):
    """The check sums first: one inf or NaN anywhere is still refused, and finite values whose sum overflows
    are not."""
    from saesteer.engine.generate import check_finite

    big = torch.finfo(dtype).max
    check_finite(torch.full((3, 50257), big / 2, dtype=dtype), 0)  # the sum is inf, every value finite
    check_finite(torch.randn(3, 50257).to(dtype), 0)
    for bad in (math.inf, -math.inf, math.nan):
        values = torch.randn(3, 50257).to(dtype)
        values[2, 40000] = bad
        with pytest.raises(SaesteerError, match="infinite or NaN at new token 5"):
            check_finite(values, 4)


def test_a_clamp_within_the_rule_that_still_overflows_is_refused(tiny_loaded):
    """An SAE whose decoder rows are huge (1e35) turns the legal value 1e5 into an inf activation: the engines
    refuse the generation instead of returning token 0 over and over."""
    from conftest import make_sae
    from saesteer.steerer import Steerer

    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(1e35)
    for engine in ("reference", "auto"):
        st = Steerer(tiny_loaded, sae, engine=engine)
        with pytest.raises(SaesteerError, match="infinite or NaN"):
            st.generate("Hi", clamps={3: MAX_ABS_VALUE}, max_new_tokens=3)
        assert len(st.generate("Hi", clamps={3: 0.0}, max_new_tokens=3).tokens) == 3


def test_validate_refuses_absurd_values(capsys, tmp_path):
    assert run(["validate", "--values", "2,1e39", "--out", str(tmp_path / "v")]) == 2
    assert "between -100000 and 100000" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_json_clamps_report_floats(capsys, base):
    assert run(["generate", *base, "--clamp", "3=20", "--json", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["clamps"] == [{"feature": 3, "value": 20.0}]


def test_a_sweep_whose_outputs_overflow_is_marked_failed_and_stores_nothing(tiny_loaded, tmp_path):
    """A legal value that still overflows (huge decoder rows): the sweep stops with one line, its manifest says
    ``failed`` with the reason (not ``running``), and no "!!!!" row is stored."""
    from conftest import make_sae
    from saesteer.steerer import Steerer
    from saesteer.sweep.runner import Sweep

    sae = make_sae()
    with torch.no_grad():
        sae.W_dec[3].mul_(1e35)
    out = tmp_path / "sw"
    sw = Sweep(Steerer(tiny_loaded, sae), features="2:4", values=[MAX_ABS_VALUE], max_new_tokens=3, out=out,
               batch_size=1, reference_samples=2, reference_length=8)
    with pytest.raises(SaesteerError, match="infinite or NaN"):
        list(sw.run())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "infinite or NaN" in manifest["error"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert [r["feature"] for r in rows] == [2]  # feature 2 is fine; feature 3 is never stored
