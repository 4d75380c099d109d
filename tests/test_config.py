"""Job configs declared once: the CLI options, their help, the Python keywords, the checks and the recorded
settings all come from one set of fields."""

import json
import re
from dataclasses import dataclass

import click
import pytest
import torch
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


@pytest.mark.parametrize("command, config, own", [
    ("compare", "CompareConfig", {"--prompt", "--prompt-file", "--clamp", "--out", "--plot", "--json"}),
    ("feature", "FeatureCardConfig", {"--out", "--json"}),
])
def test_compare_and_feature_options_are_the_config_fields(capsys, command, config, own):
    """`saesteer compare` and `saesteer feature`: one option per command-line field of their config (the
    model options and the command's own inputs and outputs besides), with the field's help."""
    from saesteer.cli.compare_commands import COMMANDS
    from saesteer.cli.config_options import option_name
    from saesteer.cli.main import run
    from saesteer.cli.options import model_options
    from saesteer.config import settings_of
    from saesteer.evaluation import compare_config

    cls = getattr(compare_config, config)
    cmd = {c.name: c for c in COMMANDS}[command]
    fields = [option_name(f.name, s) for f, s, _ in settings_of(cls) if s.cli]
    opts = [o for p in cmd.params for o in p.opts if o.startswith("--")]
    model_opts = {o for p in click.command()(model_options(lambda **kw: None)).params for o in p.opts}
    assert sorted(set(opts) - model_opts - own) == sorted(fields) and len(fields) == len(set(fields))
    assert run([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    shown = set(re.findall(r"--[a-z-]+", out))
    for f, s, _ in settings_of(cls):
        assert (option_name(f.name, s) in shown) == s.cli, f.name
        if s.cli:
            assert " ".join(s.help.split()[:6]) in out, f.name
    assert "--cache-dir" not in shown and "--cards" not in shown


def test_compare_and_feature_configs_check_and_parse_their_fields(tmp_path):
    from saesteer.evaluation.compare_config import CompareConfig, FeatureCardConfig

    assert CompareConfig(values="-20, 0,20").values == (-20.0, 0.0, 20.0)
    assert CompareConfig(values="").values is None and FeatureCardConfig(values=()).values == ()
    assert CompareConfig(values=[1, 2]).to_dict()["values"] == [1.0, 2.0]
    for bad, word in (({"values": "1,x"}, "bad clamp value"), ({"samples": 3}, "temperature > 0"),
                      ({"samples": 0}, "at least 1"), ({"mode": "sideways"}, "unknown mode"),
                      ({"reference_text": str(tmp_path / "none.txt")}, "reference text file not found"),
                      ({"values": 5}, "list of clamp values")):
        with pytest.raises(SaesteerError, match=word) as e:
            CompareConfig(**bad)
        assert len(str(e.value).splitlines()) == 1
    c = CompareConfig(samples=4, temperature=1, seed=3)
    assert CompareConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(SaesteerError, match="at most 100"):
        FeatureCardConfig(n_tokens=101)


def test_an_option_on_by_default_is_a_no_flag():
    """A bool field that defaults to True is its --no-NAME flag (``--no-bos`` sets ``prepend_bos`` False)."""
    from saesteer.cli.config_options import config_from, config_options
    from saesteer.evaluation.compare_config import CompareConfig

    seen = {}

    @click.command()
    @config_options(CompareConfig)
    def cmd(**kw):
        seen["c"] = config_from(CompareConfig, kw)

    assert CliRunner().invoke(cmd, []).exit_code == 0 and seen["c"].prepend_bos and seen["c"].use_facts
    assert CliRunner().invoke(cmd, ["--no-bos", "--no-facts"]).exit_code == 0
    assert not seen["c"].prepend_bos and not seen["c"].use_facts

    @dataclass(frozen=True)
    class Bad(Config):
        on: bool = setting(True, help="On.")

    with pytest.raises(TypeError, match="--no-"):
        config_options(Bad)


def test_train_sae_options_are_the_train_and_data_config_fields(capsys):
    """`saesteer train-sae`: TrainConfig's and DataConfig's command-line fields, and the command's own."""
    from saesteer.cli.config_options import option_name
    from saesteer.cli.train_commands import train_sae
    from saesteer.config import settings_of
    from saesteer.training import DataConfig, TrainConfig

    fields = [option_name(f.name, s) for cls in (TrainConfig, DataConfig) for f, s, _ in settings_of(cls) if s.cli]
    opts = [o for p in train_sae.params for o in p.opts if o.startswith("--")]
    own = {"--model", "--hook", "--device", "--out", "--overwrite", "--quiet"}
    assert sorted(set(opts) - own) == sorted(fields) and len(opts) == len(set(opts))
    for bad, word in (({"text_file": __file__, "self_generate": True}, "not both"),
                      ({"separator": "\n"}, "--separator goes with --text"), ({"seq_len": 1}, "at least 2")):
        with pytest.raises(SaesteerError, match=word):
            DataConfig(**bad)


def test_collect_activations_keeps_the_end_of_the_text_for_evaluation(tiny_loaded, tmp_path):
    from saesteer.training import collect_activations, file_activations

    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat and looked at the dog. " * 40, encoding="utf-8")
    hook = "blocks.1.hook_resid_post"
    every = file_activations(tiny_loaded, text, hook, seq_len=32, progress=False)
    acts, held, source = collect_activations(tiny_loaded, hook, text_file=str(text), seq_len=32, eval_tokens=50,
                                             tokens=100, progress=False)
    assert source == {"text": str(text), "separator": None}
    assert torch.equal(held, every[-50:]) and torch.equal(acts, every[:100])
    _, none, _ = collect_activations(tiny_loaded, hook, text_file=str(text), seq_len=32,
                                     eval_tokens=every.shape[0], progress=False)
    assert none is None  # a held-out part over half the data is not taken
