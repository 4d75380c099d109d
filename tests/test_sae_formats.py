"""Every SAE file format loads into the right SAEConfig and weights; bad input gives one-line errors."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _sae_files import (
    new_cfg,
    old_cfg,
    openai_state_dict,
    saelens_tensors,
    write_openai_pt,
    write_saelens_folder,
)
from saesteer.errors import SaesteerError
from saesteer.saes import SAE, SAEConfig, load_sae, save_sae
from saesteer.saes import hub as hub_module
from saesteer.saes import saelens as saelens_module


def one_line_error(spec, *words, **kwargs) -> str:
    """Load ``spec``, expect a one-line SaesteerError containing every word; return the message."""
    with pytest.raises(SaesteerError) as err:
        load_sae(spec, progress=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# ------------------------------------------------------------------ OpenAI .pt
def test_openai_v5_pt_loads_transposed(tmp_path):
    state = openai_state_dict(16, 64, activation="TopK", k=4)
    sae = load_sae(write_openai_pt(tmp_path / "x.pt", state))
    c = sae.cfg
    assert (c.d_in, c.d_sae, c.activation, c.k, c.normalize) == (16, 64, "topk", 4, "layer_norm")
    assert c.apply_b_dec_to_input is True and c.hook_name is None
    assert torch.equal(sae.W_enc, state["encoder.weight"].T)
    assert torch.equal(sae.W_dec, state["decoder.weight"].T)
    assert torch.equal(sae.b_enc, state["latent_bias"])
    assert torch.equal(sae.b_dec, state["pre_bias"])
    assert torch.equal(sae.decoder_directions[5], state["decoder.weight"][:, 5])


@pytest.mark.parametrize("activation", ["ReLU", None])
def test_openai_relu_pt_has_no_normalisation(tmp_path, activation):
    state = openai_state_dict(12, 40, activation=activation)
    sae = load_sae(write_openai_pt(tmp_path / "x.pt", state), hook_name="blocks.2.hook_mlp_out")
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.normalize) == ("relu", None, "none")
    assert sae.hook_name == "blocks.2.hook_mlp_out"


def test_openai_pt_in_openai_layout_knows_its_hook(tmp_path):
    path = tmp_path / "resid_post_attn_v5_128k" / "autoencoders" / "3.pt"
    sae = load_sae(write_openai_pt(path, openai_state_dict(16, 64)))
    assert sae.hook_name == "blocks.3.hook_resid_mid"
    assert sae.cfg.extra["neuronpedia_id"] == "gpt2-small/3-res_mid_128k-oai"
    v1 = load_sae(write_openai_pt(tmp_path / "mlp_post_act" / "autoencoders" / "0.pt", openai_state_dict(activation="ReLU")))
    assert v1.hook_name == "blocks.0.mlp.hook_post" and v1.cfg.extra["family"] == "v1"
    assert "neuronpedia_id" not in v1.cfg.extra
    assert load_sae(path, hook_name="blocks.9.hook_resid_pre").hook_name == "blocks.9.hook_resid_pre"


def test_dtype_and_device_arguments(tmp_path):
    path = write_openai_pt(tmp_path / "x.pt", openai_state_dict(16, 64))
    assert load_sae(path, dtype="bfloat16").dtype == torch.bfloat16
    half = load_sae(path, dtype=torch.float16, device="cpu")
    assert half.W_dec.dtype == torch.float16 and half.device.type == "cpu"
    one_line_error(path, "dtype", dtype="int8")
    one_line_error(path, "cannot move the SAE to device 'bogus'", device="bogus")


class Evil:
    """Pickles as a call to ``_touch(marker)``: loading it with plain pickle would run that call."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path):
    Path(path).write_text("code ran")
    return path


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2), "payload": Evil(marker)}, path)
    message = one_line_error(path, "refusing to load", "arbitrary unpickling", "_touch")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unsafe load does run the payload
    assert marker.read_text() == "code ran", message


def test_corrupt_and_non_sae_pt_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not a pickle at all")
    one_line_error(tmp_path / "junk.pt", "could not read", "junk.pt", "corrupt")
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(tmp_path / "empty.pt", "could not read", "EOFError")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    one_line_error(tmp_path / "tensor.pt", "not an SAE state dict")
    torch.save({"foo": torch.zeros(3)}, tmp_path / "dict.pt")
    one_line_error(tmp_path / "dict.pt", "missing", "encoder.weight", "pre_bias")
    state = openai_state_dict()
    state["activation"] = "GELU"
    one_line_error(write_openai_pt(tmp_path / "gelu.pt", state), "unsupported OpenAI activation", "GELU")


def test_full_shape_v5_32k_file_loads(tmp_path):
    """A file shaped like OpenAI's resid_post_mlp_v5_32k/autoencoders/6.pt (768 x 32768, ~200 MB)."""
    d_model, n_latents = 768, 32768
    state = openai_state_dict(d_model, 8, activation="TopK", k=32)
    g = torch.Generator().manual_seed(7)
    state["encoder.weight"] = torch.randn(n_latents, d_model, generator=g)
    state["decoder.weight"] = torch.randn(d_model, n_latents, generator=g)
    for key in ("latent_bias", "latents_activation_frequency", "latents_mean_square"):
        state[key] = torch.rand(n_latents, generator=g)
    state["stats_last_nonzero"] = torch.zeros(n_latents, dtype=torch.long)
    path = write_openai_pt(tmp_path / "resid_post_mlp_v5_32k" / "autoencoders" / "6.pt", state)
    start = time.perf_counter()
    sae = load_sae(path)
    elapsed = time.perf_counter() - start
    assert tuple(sae.W_enc.shape) == (768, 32768) and tuple(sae.W_dec.shape) == (32768, 768)
    assert (sae.cfg.k, sae.cfg.normalize, sae.hook_name) == (32, "layer_norm", "blocks.6.hook_resid_post")
    assert torch.equal(sae.W_dec[12345], state["decoder.weight"][:, 12345])
    assert torch.equal(sae.W_enc[:, 32767], state["encoder.weight"][32767])
    assert elapsed < 30, elapsed


# ------------------------------------------------------------------ SAELens folders
def test_saelens_new_schema_topk(tmp_path):
    tensors = saelens_tensors(16, 48)
    folder = write_saelens_folder(tmp_path / "sae", new_cfg(architecture="topk", k=7), tensors)
    sae = load_sae(folder)
    c = sae.cfg
    assert (c.d_in, c.d_sae, c.activation, c.k, c.normalize) == (16, 48, "topk", 7, "none")
    assert c.hook_name == "blocks.3.hook_resid_pre"  # from metadata, SAELens >= 6
    assert c.extra["model_name"] == "gpt2-small" and c.extra["neuronpedia_id"] == "gpt2-small/3-test"
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(sae, key), tensors[key])


def test_saelens_new_schema_top_level_hook_and_bf16(tmp_path):
    tensors = saelens_tensors(16, 48, jumprelu=True)
    cfg = new_cfg(architecture="jumprelu", hook_name="blocks.1.hook_resid_post", dtype="bfloat16",
                  apply_b_dec_to_input=False)
    sae = load_sae(write_saelens_folder(tmp_path / "sae", cfg, tensors))
    assert sae.cfg.activation == "jumprelu" and sae.cfg.apply_b_dec_to_input is False
    assert sae.hook_name == "blocks.1.hook_resid_post"
    assert sae.dtype == torch.bfloat16
    assert torch.equal(sae.threshold, tensors["threshold"].to(torch.bfloat16))
    assert load_sae(tmp_path / "sae", dtype="float32").dtype == torch.float32


def test_saelens_old_schema_like_the_openai_mirrors(tmp_path):
    sae = load_sae(write_saelens_folder(tmp_path / "v5_32k_layer_6.pt", old_cfg(), saelens_tensors(16, 48)))
    c = sae.cfg
    assert (c.activation, c.k, c.normalize, c.hook_name) == ("topk", 5, "layer_norm", "blocks.6.hook_resid_post")
    assert sae.dtype == torch.float32


def test_saelens_old_schema_relu_with_boolean_normalisation(tmp_path):
    cfg = old_cfg(activation_fn_str="relu", activation_fn_kwargs={}, normalize_activations=False)
    sae = load_sae(write_saelens_folder(tmp_path / "a", cfg, saelens_tensors()))
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.normalize) == ("relu", None, "none")
    cfg = old_cfg(normalize_activations=True)  # meant expected_average_only_in before 6.0: identity once saved
    sae = load_sae(write_saelens_folder(tmp_path / "b", cfg, saelens_tensors()))
    assert sae.cfg.normalize == "none" and sae.cfg.extra["normalize_activations"] == "expected_average_only_in"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"normalize_activations": "batch_norm"}, ["unsupported normalize_activations", "batch_norm", "layer_norm"]),
        ({"architecture": "abstopk"}, ["unsupported SAELens architecture", "abstopk"]),
        ({"architecture": "skip_transcoder"}, ["unsupported SAELens architecture", "skip_transcoder"]),
        ({"architecture": "topk"}, ["needs 'k'"]),
        ({"activation_fn_str": "tanh-relu"}, ["unsupported activation_fn", "tanh-relu"]),
        ({"dtype": "int4"}, ["unknown dtype"]),
        ({"d_sae": "48"}, ["integer 'd_sae'"]),
    ],
)
def test_saelens_unsupported_configs_are_one_line(tmp_path, change, words):
    folder = write_saelens_folder(tmp_path / "sae", new_cfg(**change), saelens_tensors())
    one_line_error(folder, *words)


def test_saelens_folder_problems(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(empty, "not an SAE folder", "cfg.json", "params.npz", "ae.pt")
    folder = write_saelens_folder(tmp_path / "mismatch", new_cfg(d_sae=50), saelens_tensors(16, 48))
    one_line_error(folder, "W_enc", "(16, 50)")
    folder = write_saelens_folder(tmp_path / "jump", new_cfg(architecture="jumprelu"), saelens_tensors())
    one_line_error(folder, "threshold")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "cfg.json").write_text("{not json")
    (tmp_path / "badjson" / "sae_weights.safetensors").write_bytes(b"")
    one_line_error(tmp_path / "badjson", "JSON")


# ------------------------------------------------------------------ bare .safetensors
def test_safetensors_with_cfg_beside(tmp_path):
    folder = write_saelens_folder(tmp_path / "sae", new_cfg(architecture="topk", k=3), saelens_tensors())
    sae = load_sae(folder / "sae_weights.safetensors")
    assert (sae.cfg.activation, sae.cfg.k, sae.hook_name) == ("topk", 3, "blocks.3.hook_resid_pre")


def test_safetensors_saelens_keys_without_cfg(tmp_path):
    tensors = saelens_tensors(16, 48)
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    sae = load_sae(tmp_path / "plain.safetensors")
    assert (sae.d_in, sae.d_sae, sae.cfg.activation, sae.cfg.normalize, sae.hook_name) == (16, 48, "relu", "none", None)
    save_file(tensors, str(tmp_path / "meta.safetensors"),
              metadata={"architecture": "topk", "k": "6", "hook_name": "blocks.4.hook_resid_post"})
    sae = load_sae(tmp_path / "meta.safetensors")
    assert (sae.cfg.activation, sae.cfg.k, sae.hook_name) == ("topk", 6, "blocks.4.hook_resid_post")
    assert torch.equal(sae.W_dec, tensors["W_dec"])


def test_safetensors_openai_keys(tmp_path):
    state = openai_state_dict(16, 64)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(tmp_path / "oai.safetensors"), metadata={"activation": "TopK", "k": "4"})
    sae = load_sae(tmp_path / "oai.safetensors", hook_name="blocks.6.hook_resid_post")
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.normalize) == ("topk", 4, "layer_norm")
    assert torch.equal(sae.W_enc, state["encoder.weight"].T) and torch.equal(sae.b_dec, state["pre_bias"])
    save_file(tensors, str(tmp_path / "relu.safetensors"))
    assert load_sae(tmp_path / "relu.safetensors").cfg.normalize == "none"


def test_safetensors_problems(tmp_path):
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    one_line_error(tmp_path / "other.safetensors", "neither SAELens weights", "foo")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage!")
    one_line_error(tmp_path / "bad.safetensors", "could not read", "safetensors")


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("openai:v6/resid_post_mlp/6", ["unknown OpenAI SAE family 'v6'", "v1, v4, v5_32k, v5_128k"]),
        ("openai:v5_32k/mlp_post_act/6", ["unknown location 'mlp_post_act'", "resid_post_mlp"]),
        ("openai:v1/resid_post_mlp/6", ["unknown location 'resid_post_mlp'", "mlp_post_act, resid_delta_mlp"]),
        ("openai:v4/mlp_post_act/12", ["bad layer '12'", "0..11"]),
        ("openai:v5_128k/resid_delta_mlp/-1", ["bad layer '-1'"]),
        ("openai:v5_32k/6", ["openai:FAMILY/LOCATION/LAYER"]),
        ("saelens:only-a-repo", ["saelens:REPO_ID/FOLDER"]),
        ("hf:foo", ["bad Hub SAE spec", "hf:REPO_ID/FOLDER"]),
        ("ftp:foo/bar", ["unknown SAE spec", "openai:FAMILY/LOCATION/LAYER", "saelens:REPO_ID/FOLDER"]),
        ("/definitely/not/here.pt", ["no such SAE file"]),
        ("/definitely/not/here.safetensors", ["no such SAE file"]),
    ],
)
def test_bad_specs_are_one_line(spec, words):
    one_line_error(spec, *words)


def test_unrecognised_local_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"1234")
    one_line_error(tmp_path / "weights.bin", "cannot tell what kind of SAE")


def test_openai_spec_urls_and_paths(monkeypatch, tmp_path):
    from saesteer.saes.openai import DEFAULT_BASE_URL, parse_spec

    monkeypatch.delenv("SAESTEER_OPENAI_BASE_URL", raising=False)
    expected = {
        "v1/mlp_post_act/0": ("mlp_post_act/autoencoders/0.pt", "blocks.0.mlp.hook_post", None),
        "v4/resid_delta_mlp/11": ("resid_delta_mlp_v4/autoencoders/11.pt", "blocks.11.hook_mlp_out", None),
        "v5_32k/resid_post_mlp/6": ("resid_post_mlp_v5_32k/autoencoders/6.pt", "blocks.6.hook_resid_post",
                                    "gpt2-small/6-res_post_32k-oai"),
        "v5_32k/resid_delta_attn/2": ("resid_delta_attn_v5_32k/autoencoders/2.pt", "blocks.2.hook_attn_out",
                                      "gpt2-small/2-att_32k-oai"),
        "v5_128k/resid_post_attn/9": ("resid_post_attn_v5_128k/autoencoders/9.pt", "blocks.9.hook_resid_mid",
                                      "gpt2-small/9-res_mid_128k-oai"),
        "v5_128k/resid_delta_mlp/5": ("resid_delta_mlp_v5_128k/autoencoders/5.pt", "blocks.5.hook_mlp_out",
                                      "gpt2-small/5-mlp_128k-oai"),
    }
    for spec, (rel, hook, npid) in expected.items():
        parsed = parse_spec("openai:" + spec)
        assert parsed.url() == DEFAULT_BASE_URL + rel
        assert parsed.hook_name == hook and parsed.neuronpedia_id == npid
        assert parsed.cache_path(tmp_path) == tmp_path / "openai" / "gpt2-small" / rel
    assert DEFAULT_BASE_URL == "https://openaipublic.blob.core.windows.net/sparse-autoencoder/gpt2-small/"


# ------------------------------------------------------------------ saelens: hub spec
class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download, serving a local folder tree as one repo."""

    def __init__(self, root: Path, repo_id: str):
        self.root, self.repo_id, self.calls = root, repo_id, []

    def __call__(self, repo_id, filename, **kwargs):
        self.calls.append((repo_id, filename, kwargs.get("local_files_only")))
        from huggingface_hub.errors import LocalEntryNotFoundError

        path = self.root / filename
        if repo_id != self.repo_id or not path.is_file():
            raise LocalEntryNotFoundError(f"{repo_id}/{filename}")
        return str(path)


def test_saelens_hub_spec_downloads_cfg_and_weights(tmp_path, monkeypatch):
    folder = "v5_32k_layer_6.pt"
    write_saelens_folder(tmp_path / "repo" / folder, old_cfg(activation_fn_kwargs={"k": 32}), saelens_tensors(16, 48))
    hub = FakeHub(tmp_path / "repo", "jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs")
    monkeypatch.setattr(hub_module, "hf_hub_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "saelens:jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/" + folder
    sae = load_sae(spec, progress=False)
    assert [c[1] for c in hub.calls] == [f"{folder}/cfg.json", f"{folder}/sae_weights.safetensors"]
    assert all(c[0] == hub.repo_id and c[2] is True for c in hub.calls)  # offline -> local files only
    assert (sae.cfg.activation, sae.cfg.k, sae.hook_name) == ("topk", 32, "blocks.6.hook_resid_post")
    assert sae.cfg.source == spec and sae.cfg.extra["folder"] == folder
    one_line_error("saelens:jbloom/GPT2-Small-OAI-v5-32k-resid-post-SAEs/v5_32k_layer_7.pt",
                   "could not download", "v5_32k_layer_7.pt/cfg.json", "--sae /path/to/v5_32k_layer_7.pt")


def test_saelens_hub_spec_offline_with_the_real_client(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error("saelens:saesteer-tests/no-such-repo-4f1c/layer_3", "could not download", "offline",
                   "--sae /path/to/layer_3")


# ------------------------------------------------------------------ save_sae
def _random_sae(activation, dtype=torch.float32, **cfg):
    tensors = saelens_tensors(16, 48, seed=5, jumprelu=activation == "jumprelu")
    config = SAEConfig(d_in=16, d_sae=48, activation=activation, hook_name="blocks.2.hook_resid_post",
                       extra={"model_name": "gpt2-small", "neuronpedia_id": "gpt2-small/2-x"}, **cfg)
    return SAE(config, **{k: v.to(dtype) for k, v in tensors.items()}) if activation == "jumprelu" else SAE(
        config, *(tensors[k].to(dtype) for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    )


@pytest.mark.parametrize(
    ("activation", "dtype", "cfg"),
    [
        ("relu", torch.float32, {}),
        ("topk", torch.float32, {"k": 5, "normalize": "layer_norm"}),
        ("jumprelu", torch.bfloat16, {"apply_b_dec_to_input": False}),
    ],
)
def test_save_sae_round_trips_exactly(tmp_path, activation, dtype, cfg):
    sae = _random_sae(activation, dtype, **cfg)
    out = save_sae(sae, tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary folder left
    written = json.loads((out / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "k", "hook_name", "normalize_activations",
                "apply_b_dec_to_input", "dtype", "model_name"):
        assert key in written
    back = load_sae(out)
    assert replace(back.cfg, source="") == replace(sae.cfg, source="")
    assert back.cfg.extra["model_name"] == "gpt2-small" and back.cfg.extra["neuronpedia_id"] == "gpt2-small/2-x"
    assert back.dtype == dtype
    for key in ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if activation == "jumprelu" else ()):
        assert torch.equal(getattr(back, key), getattr(sae, key)), key


def test_save_sae_of_a_loaded_openai_sae(tmp_path):
    path = write_openai_pt(tmp_path / "resid_post_mlp_v5_32k" / "autoencoders" / "4.pt", openai_state_dict(16, 64))
    sae = load_sae(path)
    back = load_sae(save_sae(sae, tmp_path / "converted"))
    assert replace(back.cfg, source="") == replace(sae.cfg, source="")
    x = torch.randn(3, 16)
    assert torch.equal(back.reconstruct(x), sae.reconstruct(x))


def test_save_sae_into_existing_folder_keeps_other_files(tmp_path):
    out = tmp_path / "saved"
    out.mkdir()
    (out / "README.md").write_text("mine")
    save_sae(_random_sae("relu"), out)
    assert (out / "README.md").read_text() == "mine"
    save_sae(_random_sae("topk", k=3), out)
    assert load_sae(out).cfg.k == 3
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cfg.json", "sae_weights.safetensors"]


def test_save_sae_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(tensors, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(saelens_module, "_write_weights", boom)
    with pytest.raises(OSError):
        save_sae(_random_sae("relu"), tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaesteerError):
        save_sae(_random_sae("relu"), tmp_path / "file")


def test_save_sae_into_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    save_sae(_random_sae("topk", k=2), tmp_path / "out")
    assert load_sae(tmp_path / "out").cfg.k == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
