"""Interop with the real libraries as oracles: SAEs with random weights written by SAELens, EleutherAI's sparsify
and dictionary_learning with their own save code; saesteer's encode and decode must equal each library's own on
the same inputs. And a folder saesteer writes loads in SAELens with equal outputs.

The libraries are the ``interop`` extra; a test whose library is not installed is skipped with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from saesteer.saes import load_sae, save_sae

pytestmark = pytest.mark.filterwarnings("ignore")
D_IN, D_SAE, K = 16, 48, 4
TOL = dict(rtol=1e-5, atol=1e-5)


def x_batch(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Every parameter random (biases too), so that no term of the maths can hide behind a zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def ours(path, x):
    sae = load_sae(path)
    z, stats = sae.encode_with_stats(x)
    return sae, z, sae.decode(z, stats)


# ------------------------------------------------------------------ SAELens
def saelens():
    return pytest.importorskip("sae_lens", reason="sae-lens (interop extra) is not installed")


def saelens_sae(arch: str, normalize: str, **kw):
    sl = saelens()
    classes = {"standard": (sl.StandardSAE, sl.StandardSAEConfig), "topk": (sl.TopKSAE, sl.TopKSAEConfig),
               "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig), "gated": (sl.GatedSAE, sl.GatedSAEConfig)}
    cls, cfg_cls = classes[arch]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, normalize_activations=normalize, **kw))
    randomise(sae)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(sae.threshold.abs())
    return sae


def saelens_outputs(sae, x):
    with torch.no_grad():
        z = sae.encode(x)
        return z, sae.decode(z)


CASES = [
    ("standard", "none", {}),
    ("standard", "layer_norm", {}),
    ("standard", "constant_norm_rescale", {}),
    ("standard", "expected_average_only_in", {}),
    ("topk", "none", {"k": K}),
    ("topk", "none", {"k": K, "rescale_acts_by_decoder_norm": True}),
    ("topk", "layer_norm", {"k": K, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", "none", {}),
    ("jumprelu", "layer_norm", {}),
    ("gated", "none", {}),
    ("gated", "constant_norm_rescale", {}),
]


@pytest.mark.parametrize(("arch", "normalize", "kw"), CASES, ids=[f"{a}-{n}-{len(k)}" for a, n, k in CASES])
def test_saelens_folders_equal_saelens(tmp_path, arch, normalize, kw):
    sae = saelens_sae(arch, normalize, **kw)
    sae.save_model(tmp_path / "sae")
    x = x_batch()
    z_ref, out_ref = saelens_outputs(sae, x)
    mine, z, out = ours(tmp_path / "sae", x)
    torch.testing.assert_close(z, z_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)
    assert 0 < (z_ref > 0).float().mean() < 1  # a real mix of active and inactive latents


def test_saelens_batchtopk_as_saved_for_inference(tmp_path):
    sl = saelens()
    train = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    randomise(train)
    with torch.no_grad():
        train.topk_threshold.fill_(0.4)
    train.save_inference_model(tmp_path / "btk")
    assert json.loads((tmp_path / "btk" / "cfg.json").read_text())["architecture"] == "jumprelu"
    ref = sl.SAE.load_from_disk(tmp_path / "btk")
    x = x_batch()
    z_ref, out_ref = saelens_outputs(ref, x)
    _, z, out = ours(tmp_path / "btk", x)
    torch.testing.assert_close(z, z_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saesteer_folders_load_in_saelens(tmp_path, arch):
    sl = saelens()
    original = saelens_sae(arch, "layer_norm" if arch == "topk" else "none", **({"k": K} if arch == "topk" else {}))
    original.save_model(tmp_path / "orig")
    mine = load_sae(tmp_path / "orig")
    save_sae(mine, tmp_path / "ours")
    theirs = sl.SAE.load_from_disk(tmp_path / "ours")
    x = x_batch(7)
    z_ref, out_ref = saelens_outputs(theirs, x)
    z, stats = mine.encode_with_stats(x)
    torch.testing.assert_close(z_ref, z, **TOL)
    torch.testing.assert_close(out_ref, mine.decode(z, stats), **TOL)


# ------------------------------------------------------------------ sparsify
@pytest.mark.parametrize(("activation", "skip"), [("topk", False), ("groupmax", False), ("topk", True)])
def test_sparsify_folders_equal_sparsify(tmp_path, activation, skip):
    sp = pytest.importorskip("sparsify", reason="eai-sparsify (interop extra) is not installed")
    cfg = sp.SparseCoderConfig(activation=activation, num_latents=D_SAE, k=K, skip_connection=skip)
    coder = sp.SparseCoder(D_IN, cfg)
    randomise(coder)
    coder.save_to_disk(tmp_path / "layers.5")
    x = x_batch().reshape(-1, D_IN)
    with torch.no_grad():
        enc = coder.encode(x)
        z_ref = torch.zeros(x.shape[0], D_SAE).scatter(-1, enc.top_indices, enc.top_acts)
        out_ref = coder(x).sae_out
    mine, z, out = ours(tmp_path / "layers.5", x)
    assert mine.hook_name == "blocks.5.hook_resid_post"
    torch.testing.assert_close(z, z_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)


# ------------------------------------------------------------------ dictionary_learning
def dictionary_learning_classes():
    pytest.importorskip("dictionary_learning", reason="dictionary-learning (interop extra) is not installed")
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {
        "AutoEncoder": lambda: AutoEncoder(D_IN, D_SAE),
        "AutoEncoderTopK": lambda: AutoEncoderTopK(D_IN, D_SAE, K),
        "BatchTopKSAE": lambda: BatchTopKSAE(D_IN, D_SAE, K),
        "MatryoshkaBatchTopKSAE": lambda: MatryoshkaBatchTopKSAE(D_IN, D_SAE, K, [16, 32]),
        "JumpReluAutoEncoder": lambda: JumpReluAutoEncoder(D_IN, D_SAE),
        "GatedAutoEncoder": lambda: GatedAutoEncoder(D_IN, D_SAE),
    }


def save_like_train_sae(ae, folder, dict_class):
    """What dictionary_learning's ``trainSAE`` writes: ``config.json`` {"trainer": trainer.config, "buffer": ...}
    and ``ae.pt`` = {k: v.cpu() for k, v in ae.state_dict().items()} (the trainer's config fields used here)."""
    folder.mkdir(parents=True)
    config = {"trainer": {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "k": K, "layer": 2,
                          "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_2"},
              "buffer": {"d_submodule": D_IN, "ctx_len": 128}}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
                                        "JumpReluAutoEncoder", "GatedAutoEncoder"])
def test_dictionary_learning_folders_equal_dictionary_learning(tmp_path, dict_class):
    ae = dictionary_learning_classes()[dict_class]()
    randomise(ae)
    with torch.no_grad():
        if hasattr(ae, "threshold"):
            ae.threshold.copy_(ae.threshold.abs() if ae.threshold.dim() else torch.tensor(0.3))
    save_like_train_sae(ae, tmp_path / "trainer_0", dict_class)
    x = x_batch()
    with torch.no_grad():
        z_ref = ae.encode(x)
        out_ref = ae.decode(z_ref)
    mine, z, out = ours(tmp_path / "trainer_0", x)
    assert mine.hook_name == "blocks.2.hook_resid_post"
    torch.testing.assert_close(z, z_ref, **TOL)
    torch.testing.assert_close(out, out_ref, **TOL)
    assert 0 < (z_ref > 0).float().mean() < 1
