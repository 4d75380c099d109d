"""SAE families beyond OpenAI/SAELens-standard, read from files in their real layouts: SAELens gated, TopK with
decoder-norm rescaling and run-time normalisations; SAELens releases through the registry; Gemma Scope; sparsify;
dictionary_learning; and the refusals (NaN weights, pickles that would run code). The same libraries'
own code serves as the oracle in test_sae_interop.py; here the maths is written out independently."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saesteer.errors import SaesteerError
from saesteer.saes import hub as hub_module
from saesteer.saes import load_sae, releases, save_sae

from _sae_files import new_cfg, saelens_tensors, write_saelens_folder


def one_line_error(spec, *words) -> str:
    with pytest.raises(SaesteerError) as err:
        load_sae(spec, progress=False)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def x_batch(d: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 5, d, generator=torch.Generator().manual_seed(seed))


class FakeHub:
    """Stands in for ``hf_hub_download``: files under ``root/REPO_ID/``; missing ones raise as the Hub's client."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        self.calls.append((repo_id, filename))
        path = self.root / repo_id / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{repo_id}/{filename}")
        return str(path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hub_module, "hf_hub_download", fake)
    return fake


# ------------------------------------------------------------------ SAELens architectures and normalisations
def gated_tensors(d_in=16, d_sae=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = saelens_tensors(d_in, d_sae, seed=seed)
    del t["b_enc"]
    t.update(b_gate=torch.randn(d_sae, generator=g) * 0.3, b_mag=torch.randn(d_sae, generator=g) * 0.3,
             r_mag=torch.randn(d_sae, generator=g) * 0.2)
    return t


def test_saelens_gated_encodes_gate_times_magnitude(tmp_path):
    t = gated_tensors()
    sae = load_sae(write_saelens_folder(tmp_path / "g", new_cfg(architecture="gated"), t))
    x = x_batch()
    x_enc = (x - t["b_dec"]) @ t["W_enc"]
    want = ((x_enc + t["b_gate"]) > 0) * torch.relu(x_enc * t["r_mag"].exp() + t["b_mag"])
    z = sae.encode(x)
    torch.testing.assert_close(z, want)
    assert 0 < (z > 0).float().mean() < 1
    torch.testing.assert_close(sae.decode(z), z @ t["W_dec"] + t["b_dec"])
    again = load_sae(save_sae(sae, tmp_path / "saved"))
    torch.testing.assert_close(again.encode(x), z, rtol=0, atol=0)


def test_saelens_topk_rescaled_by_decoder_norm(tmp_path):
    t = saelens_tensors()
    t["W_dec"] = t["W_dec"] * torch.linspace(0.2, 3.0, 48)[:, None]  # norms far from 1: the ranking changes
    cfg = new_cfg(architecture="topk", k=4, rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens_folder(tmp_path / "t", cfg, t))
    x = x_batch()
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    top = pre.topk(4, dim=-1)
    want_z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(sae.encode(x), want_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), (want_z / norms) @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)
    plain = load_sae(write_saelens_folder(tmp_path / "p", new_cfg(architecture="topk", k=4), t))
    assert not torch.equal(plain.encode(x) > 0, sae.encode(x) > 0)  # the flag matters


def test_saelens_constant_norm_rescale(tmp_path):
    t = saelens_tensors()
    sae = load_sae(write_saelens_folder(tmp_path / "c", new_cfg(normalize_activations="constant_norm_rescale"), t))
    x = x_batch() * 7
    coeff = 16**0.5 / x.norm(dim=-1, keepdim=True)
    z = torch.relu((x * coeff - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), (z @ t["W_dec"] + t["b_dec"]) / coeff, rtol=1e-5, atol=1e-5)
    with pytest.raises(SaesteerError, match="decode needs"):
        sae.decode(z)


@pytest.mark.parametrize("norm", ["none", "expected_average_only_in", "covariance_whitening"])
def test_saelens_normalisations_that_are_folded_before_saving_act_as_identity(tmp_path, norm):
    t = saelens_tensors()
    sae = load_sae(write_saelens_folder(tmp_path / "n", new_cfg(normalize_activations=norm), t))
    x = x_batch()
    torch.testing.assert_close(sae.encode(x), torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]))
    assert sae.cfg.normalize == "none" and sae.cfg.extra["normalize_activations"] == norm


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    t = saelens_tensors()
    t["W_dec"][3, 2] = bad
    one_line_error(write_saelens_folder(tmp_path / "nan", new_cfg(), t), "W_dec", "NaN or infinite")


class SystemCall:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


class Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.parametrize(("payload", "named"), [(SystemCall, "system"), (Eval, "eval")])
def test_code_running_pickles_are_refused_not_corrupt(tmp_path, writer, payload, named):
    path = tmp_path / "evil.pt"
    state = {"encoder.weight": torch.zeros(2, 2), "payload": payload()}
    if writer == "torch":
        torch.save(state, path)
    else:  # protocol 4 names os.system / builtins.eval
        path.write_bytes(pickle.dumps(state, protocol=4))
    assert "corrupt" not in one_line_error(path, "refusing to load", named)


# ------------------------------------------------------------------ SAELens releases
def test_vendored_registry_has_the_documented_releases():
    found = releases.lookup("gpt2-small-res-jb", "blocks.6.hook_resid_pre")
    assert (found.repo_id, found.path, found.conversion_func) == (
        "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.6.hook_resid_pre", None)
    assert found.neuronpedia_id == "gpt2-small/6-res-jb"
    gemma = releases.lookup("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert gemma.repo_id == "google/gemma-scope-2b-pt-res" and gemma.conversion_func == "gemma_2"
    assert gemma.path.startswith("layer_12/width_16k/average_l0_")
    assert releases.vendored()["source"].startswith("sae-lens ")


def test_release_spec_loads_saelens_folder_with_neuronpedia_id(hub, tmp_path):
    repo = hub.root / "jbloom/GPT2-Small-SAEs-Reformatted" / "blocks.6.hook_resid_pre"
    write_saelens_folder(repo, new_cfg(d_in=16, hook_name="blocks.6.hook_resid_pre"), saelens_tensors())
    sae = load_sae("saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre", progress=False)
    assert sae.hook_name == "blocks.6.hook_resid_pre"
    assert sae.cfg.extra["neuronpedia_id"] == "gpt2-small/6-res-jb"
    assert sae.cfg.extra["release"] == "gpt2-small-res-jb"
    assert sae.cfg.extra["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    # trained on TransformerLens's centred residual stream: the mean comes off on the way in, back on the way out
    assert sae.cfg.normalize == "center" and not sae.plain_maths
    t = saelens_tensors()
    x = x_batch() + 3.0
    mu = x.mean(dim=-1, keepdim=True)
    z = torch.relu((x - mu - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(sae.encode(x), z)
    torch.testing.assert_close(sae.reconstruct(x), z @ t["W_dec"] + t["b_dec"] + mu)
    with pytest.raises(SaesteerError, match="centres its input"):
        save_sae(sae, tmp_path / "saved")
    assert hub.calls[0] == ("jbloom/GPT2-Small-SAEs-Reformatted", "blocks.6.hook_resid_pre/cfg.json")


def test_release_norm_scaling_factor_is_folded(hub, monkeypatch):
    entry = {"repo_id": "me/scaled", "model": "gpt2", "conversion_func": None,
             "saes": {"a": {"path": "a", "norm_scaling_factor": 2.5}}}
    monkeypatch.setitem(releases.vendored()["releases"], "test-scaled-release", entry)
    t = saelens_tensors()
    write_saelens_folder(hub.root / "me/scaled/a", new_cfg(normalize_activations="expected_average_only_in"), t)
    sae = load_sae("saelens:test-scaled-release/a", progress=False)
    x = x_batch()
    z = torch.relu((2.5 * x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])  # scaled input into the unfolded SAE
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), (z @ t["W_dec"] + t["b_dec"]) / 2.5, rtol=1e-5, atol=1e-5)


def test_release_problems_are_one_line(hub):
    one_line_error("saelens:gpt2-small-res-jb/blocks.99.hook_resid_pre", "no SAE", "blocks.99", "e.g.")
    one_line_error("saelens:llama_scope_lxr_8x/l3r_8x" if releases.is_release("llama_scope_lxr_8x")
                   else "saelens:gemma-scope-2-4b-pt-transcoders-all/layer_0_width_16k_l0_big",
                   "conversion_func")


# ------------------------------------------------------------------ Gemma Scope
def write_gemmascope(folder: Path, d_in=16, d_sae=48, seed=0, lower=False) -> dict:
    t = saelens_tensors(d_in, d_sae, seed=seed, jumprelu=True)
    folder.mkdir(parents=True, exist_ok=True)
    if lower:
        save_file({k.lower(): v for k, v in t.items()}, str(folder / "params.safetensors"))
    else:
        np.savez(folder / "params.npz", **{k: v.numpy() for k, v in t.items()})
    return t


def test_gemmascope_npz_is_jumprelu_without_input_shift(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    t = write_gemmascope(folder)
    for spec in (folder, folder / "params.npz"):
        sae = load_sae(spec)
        assert sae.hook_name == "blocks.12.hook_resid_post" and sae.cfg.extra["format"] == "gemmascope"
        x = x_batch()
        pre = x @ t["W_enc"] + t["b_enc"]
        z = pre * (pre > t["threshold"])
        torch.testing.assert_close(sae.encode(x), z)
        torch.testing.assert_close(sae.reconstruct(x), z @ t["W_dec"] + t["b_dec"])


def test_gemmascope_release_via_hub(hub):
    found = releases.lookup("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    t = write_gemmascope(hub.root / found.repo_id / found.path)
    sae = load_sae("saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", progress=False)
    assert sae.hook_name == "blocks.12.hook_resid_post"
    assert sae.cfg.extra["neuronpedia_id"] == found.neuronpedia_id and sae.cfg.extra["model_name"] == "gemma-2-2b"
    torch.testing.assert_close(sae.W_enc, t["W_enc"])


def test_gemmascope2_safetensors_and_pickled_npz(tmp_path):
    t = write_gemmascope(tmp_path / "resid_post" / "layer_7_width_16k_l0_small", lower=True)
    sae = load_sae(tmp_path / "resid_post" / "layer_7_width_16k_l0_small")
    assert sae.hook_name == "blocks.7.hook_resid_post"
    torch.testing.assert_close(sae.threshold, t["threshold"])
    evil = tmp_path / "evil" / "params.npz"
    evil.parent.mkdir()
    np.savez(evil, W_enc=np.array([SystemCall()], dtype=object))
    one_line_error(evil, "refusing", "pickled")


# ------------------------------------------------------------------ sparsify
def write_sparsify(folder: Path, *, d_in=16, n=48, k=4, activation="topk", skip=False, transcode=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"encoder.weight": torch.randn(n, d_in, generator=g) / 4, "encoder.bias": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d_in, generator=g) / 4, "b_dec": torch.randn(d_in, generator=g) * 0.1}
    if skip:
        t["W_skip"] = torch.randn(d_in, d_in, generator=g) / 8
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "sae.safetensors"))
    cfg = {"activation": activation, "expansion_factor": 3, "normalize_decoder": True, "num_latents": n, "k": k,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": d_in}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


@pytest.mark.parametrize(("activation", "skip"), [("topk", False), ("groupmax", False), ("topk", True)])
def test_sparsify_folder(tmp_path, activation, skip):
    t = write_sparsify(tmp_path / "layers.6", activation=activation, skip=skip)
    sae = load_sae(tmp_path / "layers.6")
    assert sae.hook_name == "blocks.6.hook_resid_post" and sae.plain_maths == (activation == "topk" and not skip)
    x = x_batch()
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    if activation == "topk":
        top = pre.topk(4, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    else:
        groups = pre.view(3, 5, 4, 12)
        z = (groups == groups.amax(-1, keepdim=True)).float().mul(groups).view(3, 5, 48)
    torch.testing.assert_close(sae.encode(x), z)
    want = z @ t["W_dec"] + t["b_dec"] + (x @ t["W_skip"].T if skip else 0)
    torch.testing.assert_close(sae.reconstruct(x), want)


def test_sparsify_refusals(tmp_path):
    write_sparsify(tmp_path / "tc", transcode=True)
    one_line_error(tmp_path / "tc", "transcoders are not supported")
    write_sparsify(tmp_path / "gm", activation="groupmax", k=5)
    one_line_error(tmp_path / "gm", "groupmax", "divisible")


# ------------------------------------------------------------------ dictionary_learning
def write_dictlearn(folder: Path, dict_class: str, state: dict, *, layer=3, k=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    trainer = {"dict_class": dict_class, "activation_dim": 16, "dict_size": 48, "layer": layer,
               "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": f"resid_post_layer_{layer}"}
    if k is not None:
        trainer["k"] = k
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))


def test_dictionary_learning_batch_topk_uses_its_scalar_threshold(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"encoder.weight": torch.randn(48, 16, generator=g) / 4, "encoder.bias": torch.randn(48, generator=g) / 9,
             "decoder.weight": torch.randn(16, 48, generator=g) / 4, "b_dec": torch.randn(16, generator=g) / 9,
             "k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(0.2)}
    write_dictlearn(tmp_path / "btk", "BatchTopKSAE", state, k=4)
    sae = load_sae(tmp_path / "btk")
    assert sae.hook_name == "blocks.3.hook_resid_post" and sae.cfg.extra["model_name"].endswith("pythia-70m-deduped")
    x = x_batch()
    post = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    torch.testing.assert_close(sae.encode(x), post * (post > 0.2))
    state["threshold"] = torch.tensor(-1.0)  # never calibrated: every positive latent passes
    write_dictlearn(tmp_path / "raw", "BatchTopKSAE", state, k=4)
    torch.testing.assert_close(load_sae(tmp_path / "raw").encode(x), post)


# ------------------------------------------------------------------ Hub forms of every folder format
def test_hf_spec_finds_each_folder_format(hub):
    write_sparsify(hub.root / "EleutherAI/sae-test-32x" / "layers.4", activation="groupmax")
    sae = load_sae("hf:EleutherAI/sae-test-32x/layers.4", progress=False)
    assert sae.cfg.extra["format"] == "sparsify" and sae.hook_name == "blocks.4.hook_resid_post"
    write_gemmascope(hub.root / "google/gemma-scope-2b-pt-mlp" / "layer_3/width_16k/average_l0_50")
    sae = load_sae("hf:google/gemma-scope-2b-pt-mlp/layer_3/width_16k/average_l0_50", progress=False)
    assert sae.cfg.extra["format"] == "gemmascope" and sae.hook_name == "blocks.3.hook_mlp_out"
    write_saelens_folder(hub.root / "me/saes" / "l2", new_cfg(hook_name="blocks.2.hook_resid_pre"), saelens_tensors())
    assert load_sae("hf:me/saes/l2", progress=False).hook_name == "blocks.2.hook_resid_pre"
    one_line_error("hf:me/saes/missing", "found no SAELens, Gemma Scope, sparsify or dictionary_learning files")


def test_dictionary_learning_release_via_hub(hub):
    found = releases.lookup("qwen2.5-7b-instruct-andyrdt", "resid_post_layer_11_trainer_1")
    g = torch.Generator().manual_seed(2)
    state = {"bias": torch.randn(16, generator=g) / 9, "encoder.weight": torch.randn(48, 16, generator=g) / 4,
             "encoder.bias": torch.randn(48, generator=g) / 9, "decoder.weight": torch.randn(16, 48, generator=g) / 4}
    write_dictlearn(hub.root / found.repo_id / found.path, "AutoEncoder", state, layer=11)
    sae = load_sae("saelens:qwen2.5-7b-instruct-andyrdt/resid_post_layer_11_trainer_1", progress=False)
    assert sae.hook_name == "blocks.11.hook_resid_post" and sae.cfg.extra["dict_class"] == "AutoEncoder"
    x = x_batch()
    z = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    torch.testing.assert_close(sae.reconstruct(x), z @ state["decoder.weight"].T + state["bias"])


def test_fingerprint_covers_a_family_s_own_weights(tmp_path):
    from saesteer.evaluation.fingerprint import sae_fingerprint

    t = gated_tensors()
    a = load_sae(write_saelens_folder(tmp_path / "a", new_cfg(architecture="gated"), t))
    t["r_mag"] = t["r_mag"] + 0.5
    b = load_sae(write_saelens_folder(tmp_path / "b", new_cfg(architecture="gated"), t))
    assert sae_fingerprint(a) != sae_fingerprint(b)


def test_release_missing_from_the_shipped_copy_is_read_from_an_installed_sae_lens(monkeypatch):
    if not releases.installed_yaml():
        pytest.skip("sae-lens (interop extra) is not installed")
    monkeypatch.delitem(releases.vendored()["releases"], "gpt2-small-res-jb")
    found = releases.lookup("gpt2-small-res-jb", "blocks.6.hook_resid_pre")
    assert found.repo_id == "jbloom/GPT2-Small-SAEs-Reformatted" and found.neuronpedia_id == "gpt2-small/6-res-jb"
    assert not releases.is_release("no-such-release-anywhere")


def test_beyond_gpt2_page_prints_what_the_registry_says():
    page = (Path(__file__).resolve().parents[1] / "docs" / "beyond_gpt2.md").read_text(encoding="utf-8")
    gemma = releases.lookup("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    jb = releases.lookup("gpt2-small-res-jb", "blocks.6.hook_resid_pre")
    assert f"('{gemma.path}', '{gemma.neuronpedia_id}')" in page
    assert f"('{jb.neuronpedia_id}', '{jb.repo_id}')" in page
    # the reprs shown, built from the real shapes (on the meta device: no memory)
    from saesteer.saes import gemmascope

    meta = {k: torch.empty(s, device="meta") for k, s in
            (("W_enc", (2304, 16384)), ("W_dec", (16384, 2304)), ("b_enc", (16384,)), ("b_dec", (2304,)),
             ("threshold", (16384,)))}
    sae = gemmascope.sae_from_params(meta, source="doc", extra={"folder": gemma.path},
                                     hook_name=gemmascope.hook_from_path(f"{gemma.repo_id}/{gemma.path}"))
    assert repr(sae) in page


@pytest.mark.parametrize(("path", "hook"), [
    ("google/gemma-scope-9b-pt-res/layer_20/width_131k/average_l0_81", "blocks.20.hook_resid_post"),
    ("models--google--gemma-scope-2b-pt-mlp/snapshots/abc/layer_3/width_16k/average_l0_50", "blocks.3.hook_mlp_out"),
    ("google/gemma-scope-2b-pt-att/layer_5/width_16k/average_l0_30", "blocks.5.attn.hook_z"),
    ("google/gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6", "hook_embed"),
    ("google/gemma-scope-2-4b-pt/resid_post/layer_9_width_16k_l0_small", "blocks.9.hook_resid_post"),
    ("google/gemma-scope-2-4b-pt/transcoder_all/layer_9_width_16k_l0_big", None),
    ("/home/me/mlp-res-experiments/layer_3", None),  # not Gemma Scope's layout: the user passes --hook
])
def test_gemmascope_hook_from_path(path, hook):
    from saesteer.saes.gemmascope import hook_from_path

    assert hook_from_path(path.replace("--", "/")) == hook


def test_save_sae_refuses_maths_saelens_cannot_express(tmp_path):
    write_sparsify(tmp_path / "layers.1", activation="groupmax")
    sae = load_sae(tmp_path / "layers.1")
    with pytest.raises(SaesteerError, match="no equivalent architecture"):
        save_sae(sae, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    write_sparsify(tmp_path / "layers.2")  # plain TopK: saved, and it loads back with the same maths
    plain = load_sae(tmp_path / "layers.2")
    again = load_sae(save_sae(plain, tmp_path / "plain"))
    x = x_batch()
    torch.testing.assert_close(again.reconstruct(x), plain.reconstruct(x), rtol=0, atol=0)
