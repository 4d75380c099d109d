"""Job configs declared once: the CLI options, their help, the Python keywords, the checks and the recorded
settings all come from one set of fields."""

import json
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from saesteer.config import Config, setting
from saesteer.errors import SaesteerError
from saesteer.sweep.config import RayConfig, SweepConfig


@dataclass(frozen=True)
class Job(Config):
    name = "job settings"

    steps: int = setting(10, min=1, max=100, help="Steps to run.")
    rate: float = setting(0.5, min=0, min_open=True, help="Step size.")
    kind: str = setting("a", choices=("a", "b"), help="Which kind.")
    loud: bool = setting(False, help="Say more.")
    tags: tuple[float, ...] = setting((1.0, 2.0), multiple=True, help="Tags.")
    secret: int = setting(3, cli=False, record=False, help="Python only.")


def test_one_field_is_an_option_with_its_help_type_bounds_and_default():
    from saesteer.cli.config_options import config_from, config_options

    seen = {}

    @click.command()
    @config_options(Job)
    def cmd(**kw):
        seen["job"] = config_from(Job, kw)
        seen["rest"] = kw

    r = CliRunner().invoke(cmd, ["--help"])
    assert r.exit_code == 0
    for text in ("--steps", "Steps to run.", "1<=x<=100", "--rate", "--kind", "[a|b]", "--loud", "--tags",
                 "[default: 10; 1<=x<=100]"):
        assert text in r.output, text
    assert "--secret" not in r.output
    r = CliRunner().invoke(cmd, ["--steps", "7", "--kind", "b", "--loud", "--tags", "3", "--tags", "4"])
    assert r.exit_code == 0, r.output
    assert seen["job"] == Job(steps=7, kind="b", loud=True, tags=(3.0, 4.0)) and seen["rest"] == {}
    assert CliRunner().invoke(cmd, []).exit_code == 0 and seen["job"] == Job()
    assert CliRunner().invoke(cmd, ["--steps", "0"]).exit_code == 2  # bounds on the command line
    assert CliRunner().invoke(cmd, ["--rate", "0"]).exit_code == 2


def test_fields_are_checked_coerced_and_recorded():
    assert Job(steps="3").steps == 3 and Job(rate=1).rate == 1.0
    for bad, word in (({"steps": 0}, "at least 1"), ({"steps": 101}, "at most 100"), ({"rate": 0.0}, "above 0"),
                      ({"kind": "c"}, "use one of a, b"), ({"steps": 2.5}, "must be int")):
        with pytest.raises(SaesteerError, match=word) as e:
            Job(**bad)
        assert len(str(e.value).splitlines()) == 1
    job = Job(steps=4, tags=(5.0,))
    d = job.to_dict()
    assert d == {"steps": 4, "rate": 0.5, "kind": "a", "loud": False, "tags": [5.0]}  # no "secret"
    assert Job.from_dict(json.loads(json.dumps(d))) == Job(steps=4, tags=[5.0])
    with pytest.raises(SaesteerError, match=r"job settings in m\.json are not valid \(steps must be at least 1"):
        Job.from_dict({**d, "steps": -1}, where="m.json")
    with pytest.raises(TypeError, match="unexpected keywords: nope"):
        Job.build(None, {"nope": 1})
    assert Job.build(job, {"kind": "b"}) == Job(steps=4, tags=(5.0,), kind="b")


def test_sweep_options_are_the_config_fields(capsys):
    """`saesteer sweep`'s options are SweepConfig's and RayConfig's command-line fields (and the command's own)."""
    from saesteer.cli.config_options import option_name
    from saesteer.cli.main import run
    from saesteer.cli.options import model_options
    from saesteer.cli.sweep_commands import sweep
    from saesteer.config import settings_of

    fields = [option_name(f.name, s) for cls in (SweepConfig, RayConfig) for f, s, _ in settings_of(cls) if s.cli]
    opts = [o for p in sweep.params for o in p.opts]
    assert set(fields) <= set(opts)
    model_opts = [o for p in click.command()(model_options(lambda **kw: None)).params for o in p.opts]
    assert set(opts) - set(fields) == set(model_opts) | {"--out", "--quiet"}
    assert run(["sweep", "--help"]) == 0
    out = capsys.readouterr().out
    for f, s, _ in settings_of(SweepConfig):
        if s.cli:
            assert option_name(f.name, s) in out
    assert "--cache-dir" not in out


def test_sweep_config_normalises_text_forms():
    c = SweepConfig(values=["20", "-10,20", 5], shard="1/3", features=[3, 1, 2])
    assert c.values == (20.0, -10.0, 5.0) and c.shard == (1, 3) and c.features == "3,1,2"
    assert SweepConfig(shard=(0, 2)).to_dict()["shard"] == "0/2"
    assert SweepConfig.from_dict(SweepConfig(shard=(1, 2)).to_dict()).shard == (1, 2)
    with pytest.raises(SaesteerError, match="mode"):
        SweepConfig(mode="sideways")
    with pytest.raises(SaesteerError, match="max_new_tokens must be at least 1"):
        SweepConfig(max_new_tokens=0)


def test_a_sweep_option_is_one_field(tmp_path, monkeypatch):
    """--reference-seed was added as one line of SweepConfig: the option reaches the facts (their key), the
    identity of the folder and the manifest."""
    from saesteer.cli.main import run
    from saesteer.sweep import runner

    seen = []

    class Spy(runner.Sweep):
        def __init__(self, steerer, config, **kw):
            seen.append(config)
            raise SaesteerError("stopped before any work")

    monkeypatch.setattr("saesteer.cli.sweep_commands.Sweep", Spy)
    monkeypatch.setattr("saesteer.cli.sweep_commands.build_steerer", lambda *a: None)
    assert run(["sweep", "--reference-seed", "7", "--values", "20", "--out", str(tmp_path / "x")]) == 2
    assert seen[0].reference_seed == 7 and seen[0].to_dict()["reference_seed"] == 7


@pytest.mark.parametrize("features", ["", "  ", []])
def test_an_empty_feature_selection_is_refused(features):
    with pytest.raises(SaesteerError, match="--features is empty"):
        SweepConfig(features=features)


def test_cli_refuses_empty_features_in_one_line_before_any_work(tmp_path, capsys):
    from saesteer.cli.main import run

    assert run(["sweep", "--features", "", "--out", str(tmp_path / "x"), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--features is empty" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_train_settings_are_one_config_for_the_api_and_the_command(capsys):
    import torch

    from saesteer.cli.config_options import option_name
    from saesteer.cli.main import run
    from saesteer.config import settings_of
    from saesteer.training import TrainConfig, train_topk_sae

    assert run(["train-sae", "--help"]) == 0
    out = capsys.readouterr().out
    for f, s, _ in settings_of(TrainConfig):
        assert (option_name(f.name, s) in out) == s.cli, f.name
    assert "SAE width (d_sae)." in out and "--aux-coef" not in out
    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    a, _ = train_topk_sae(acts, d_sae=16, k=2, steps=3, batch_size=16, seed=1, progress=False)
    b, _ = train_topk_sae(acts, TrainConfig(d_sae=16, k=2, steps=3, batch_size=16), seed=1, progress=False)
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)
    with pytest.raises(TypeError, match="d_sae= and k="):
        train_topk_sae(acts, steps=3)
    with pytest.raises(SaesteerError, match="decay_fraction must be at most 1"):
        train_topk_sae(acts, d_sae=16, k=2, decay_fraction=2.0, progress=False)


def test_every_steering_mode_is_offered_by_the_web_api():
    pytest.importorskip("pydantic")
    from saesteer.steering.clamp import MODES
    from saesteer.web.schemas import MODES as WEB_MODES

    assert tuple(WEB_MODES) == tuple(MODES)
