"""download_file and the openai: spec against a loopback HTTP server: resume, size checks, offline, cache."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from _sae_files import openai_state_dict
from _sae_http import file_server, online  # noqa: F401  (fixtures)
from saesteer.errors import SaesteerError
from saesteer.saes import load_sae
from saesteer.saes.download import default_cache_dir, download_file

DATA = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, every byte position distinguishable
PATH = "/sparse-autoencoder/gpt2-small/resid_post_mlp_v5_32k/autoencoders/6.pt"


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_full_download(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    dest = tmp_path / "sub" / "6.pt"
    out = download_file(file_server.url(PATH), dest, progress=False, chunk=4096)
    assert out == dest
    assert dest.read_bytes() == DATA
    assert _leftovers(dest.parent) == ["6.pt"]  # no .partial left behind
    assert file_server.requests == [(PATH, None)]


def test_cut_connection_is_resumed_with_range_within_one_call(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    file_server.cut[PATH] = 300_000
    dest = tmp_path / "6.pt"
    download_file(file_server.url(PATH), dest, progress=False, retries=2, backoff=0, chunk=4096)
    assert dest.read_bytes() == DATA
    assert [r[0] for r in file_server.requests] == [PATH, PATH] and file_server.requests[0][1] is None
    resumed_at = _range_start(file_server.requests[1][1])
    assert 300_000 - 4096 < resumed_at <= 300_000  # at most the chunk being read when the cut came is lost


def _range_start(header):
    assert header is not None and header.startswith("bytes=") and header.endswith("-")
    return int(header[len("bytes="):-1])


def test_cut_connection_is_resumed_by_the_next_call(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    file_server.cut[PATH] = 123_457
    dest = tmp_path / "6.pt"
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url(PATH), dest, progress=False, retries=0, backoff=0, chunk=4096)
    assert "\n" not in str(err.value) and "run again to resume" in str(err.value)
    assert not dest.exists()
    partial = tmp_path / "6.pt.partial"
    kept = partial.read_bytes()
    assert 123_457 - 4096 < len(kept) <= 123_457 and kept == DATA[: len(kept)]  # a valid prefix is kept

    download_file(file_server.url(PATH), dest, progress=False, retries=0, chunk=4096)
    assert dest.read_bytes() == DATA
    assert file_server.requests[-1] == (PATH, f"bytes={len(kept)}-")
    assert not partial.exists()


def test_server_that_ignores_range_restarts_cleanly(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    file_server.ignore_range = True
    (tmp_path / "6.pt.partial").write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False)
    assert (tmp_path / "6.pt").read_bytes() == DATA
    assert file_server.requests == [(PATH, "bytes=1000-")]


def test_complete_partial_is_finished_from_416(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    (tmp_path / "6.pt.partial").write_bytes(DATA)
    download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False)
    assert (tmp_path / "6.pt").read_bytes() == DATA
    assert file_server.requests == [(PATH, f"bytes={len(DATA)}-")]


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_size_is_an_error_and_leaves_nothing(file_server, online, tmp_path, delta):
    file_server.files[PATH] = DATA
    dest = tmp_path / "6.pt"
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url(PATH), dest, progress=False, expected_size=len(DATA) + delta)
    message = str(err.value)
    assert "\n" not in message and str(len(DATA)) in message and str(len(DATA) + delta) in message
    assert _leftovers(tmp_path) == []


def test_size_is_checked_when_the_server_sends_no_length(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    file_server.no_length = True
    download_file(file_server.url(PATH), tmp_path / "ok.pt", progress=False)
    assert (tmp_path / "ok.pt").read_bytes() == DATA
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False, expected_size=len(DATA) + 5)
    assert f"has {len(DATA)} bytes, expected {len(DATA) + 5}" in str(err.value)
    assert _leftovers(tmp_path) == ["ok.pt"]


def test_wrong_size_of_a_resumed_file_is_an_error(file_server, online, tmp_path):
    file_server.files[PATH] = DATA
    (tmp_path / "6.pt.partial").write_bytes(DATA[:5000])
    with pytest.raises(SaesteerError):
        download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False, expected_size=len(DATA) - 7)
    assert _leftovers(tmp_path) == []


def test_404_is_one_line_and_not_retried(file_server, online, tmp_path):
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url("/missing.pt"), tmp_path / "missing.pt", progress=False, backoff=0)
    message = str(err.value)
    assert "\n" not in message and "404" in message and "pass its local path" in message
    assert file_server.requests == [("/missing.pt", None)]
    assert _leftovers(tmp_path) == []


def test_server_errors_are_retried_then_reported(file_server, online, tmp_path):
    file_server.fail_status[PATH] = 503
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False, retries=2, backoff=0)
    assert "503" in str(err.value) and "\n" not in str(err.value)
    assert len(file_server.requests) == 3


def test_unreachable_host_is_retried_then_one_line(online, tmp_path):
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SaesteerError) as err:
        download_file(f"http://127.0.0.1:{port}/6.pt", tmp_path / "6.pt", progress=False, retries=1, backoff=0)
    message = str(err.value)
    assert "\n" not in message and "no network?" in message and "--sae /path/to/6.pt" in message


@pytest.mark.parametrize("var", ["SAESTEER_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_fails_at_once_without_a_request(file_server, online, tmp_path, monkeypatch, var):
    file_server.files[PATH] = DATA
    monkeypatch.setenv(var, "1")
    with pytest.raises(SaesteerError) as err:
        download_file(file_server.url(PATH), tmp_path / "6.pt", progress=False)
    assert "\n" not in str(err.value) and "pass its local path" in str(err.value)
    assert file_server.requests == []


def test_cached_file_makes_no_request_even_offline(file_server, monkeypatch, tmp_path):
    monkeypatch.setenv("SAESTEER_OFFLINE", "1")
    dest = tmp_path / "6.pt"
    dest.write_bytes(b"cached")
    assert download_file(file_server.url(PATH), dest, progress=False) == dest
    assert dest.read_bytes() == b"cached"
    assert file_server.requests == []


def test_concurrent_download_waits_for_the_lock_holder(file_server, online, tmp_path):
    import fcntl
    import threading

    file_server.files[PATH] = DATA
    dest = tmp_path / "6.pt"
    result = {}
    with open(tmp_path / "6.pt.lock", "a+b") as held:  # another worker is downloading 6.pt
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        worker = threading.Thread(
            target=lambda: result.update(path=download_file(file_server.url(PATH), dest, progress=False))
        )
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and file_server.requests == []  # it waits instead of downloading too
        dest.write_bytes(b"finished by the other worker")
        (tmp_path / "6.pt.lock").unlink()
    worker.join(5)
    assert result["path"] == dest and dest.read_bytes() == b"finished by the other worker"
    assert file_server.requests == []
    assert _leftovers(tmp_path) == ["6.pt"]


def test_progress_bar_only_when_asked(file_server, online, tmp_path, capsys):
    file_server.files[PATH] = DATA
    download_file(file_server.url(PATH), tmp_path / "a.pt", progress=False)
    assert capsys.readouterr().err == ""
    download_file(file_server.url(PATH), tmp_path / "b.pt", progress=True)
    assert "b.pt" in capsys.readouterr().err


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SAESTEER_CACHE")
    assert default_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "saesteer"


# ------------------------------------------------------------------ openai: spec end to end
def _serve_openai_file(server, tmp_path, state):
    local = tmp_path / "served.pt"
    torch.save(state, local)
    server.files[PATH] = local.read_bytes()


def test_openai_spec_end_to_end(file_server, online, tmp_path, monkeypatch):
    state = openai_state_dict(16, 64, activation="TopK", k=4, seed=3)
    _serve_openai_file(file_server, tmp_path, state)
    file_server.cut[PATH] = 2000  # the first transfer is cut: the loader must retry
    monkeypatch.setenv("SAESTEER_OPENAI_BASE_URL", file_server.base + "/sparse-autoencoder/gpt2-small")
    monkeypatch.setattr("saesteer.saes.download.time", __import__("types").SimpleNamespace(sleep=lambda s: None))
    cache = tmp_path / "cache"

    sae = load_sae("openai:v5_32k/resid_post_mlp/6", cache_dir=cache, progress=False)
    assert [r[0] for r in file_server.requests] == [PATH, PATH]
    cached = cache / "openai" / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders" / "6.pt"
    assert cached.read_bytes() == file_server.files[PATH]
    assert sae.hook_name == "blocks.6.hook_resid_post"
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.normalize) == ("topk", 4, "layer_norm")
    assert sae.cfg.source == "openai:v5_32k/resid_post_mlp/6"
    extra = sae.cfg.extra
    assert (extra["family"], extra["location"], extra["layer"]) == ("v5_32k", "resid_post_mlp", 6)
    assert extra["neuronpedia_id"] == "gpt2-small/6-res_post_32k-oai"
    assert torch.equal(sae.W_dec, state["decoder.weight"].T)
    assert torch.equal(sae.b_dec, state["pre_bias"])

    # Loaded again: served from the cache, no request; the SAESTEER_CACHE default is honoured too.
    monkeypatch.setenv("SAESTEER_OFFLINE", "1")
    again = load_sae("openai:v5_32k/resid_post_mlp/6", cache_dir=cache, progress=False)
    assert torch.equal(again.W_enc, sae.W_enc) and len(file_server.requests) == 2
    monkeypatch.setenv("SAESTEER_CACHE", str(cache))
    assert load_sae("openai:v5_32k/resid_post_mlp/6", progress=False).d_sae == 64


def test_openai_spec_missing_on_server_is_one_line(file_server, online, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_OPENAI_BASE_URL", file_server.base + "/sparse-autoencoder/gpt2-small/")
    with pytest.raises(SaesteerError) as err:
        load_sae("openai:v1/mlp_post_act/0", cache_dir=tmp_path, progress=False)
    assert "\n" not in str(err.value) and "404" in str(err.value)
    assert file_server.requests == [("/sparse-autoencoder/gpt2-small/mlp_post_act/autoencoders/0.pt", None)]
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_openai_spec_offline_and_uncached_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAESTEER_OPENAI_BASE_URL", "http://192.0.2.1/never-contacted/")
    with pytest.raises(SaesteerError) as err:
        load_sae("openai:v5_128k/resid_delta_attn/11", cache_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message and "--sae /path/to/11.pt" in message
    assert "resid_delta_attn_v5_128k/autoencoders/11.pt" in message
    assert not os.listdir(tmp_path)
