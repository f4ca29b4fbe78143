"""URL weights go through torch.hub's cache (``$TORCH_HOME``) with its hash check.

The downloads are real ``file://`` URLs to files the tests write: no network, no fakes of
``torch.hub.download_url_to_file``.
"""
import os
from pathlib import Path

import pytest
import torch

from taggnn.models.weights import WeightsError, default_cache_dir, fetch, load_state_dict, sha256_of


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("TAGGNN_CACHE", raising=False)
    return home


def release_file(folder, state):
    """A file named like a torch.hub release, ``<name>-<first 8 hex digits of its SHA-256>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    draft = folder / "draft.pth"
    torch.save(state, draft)
    path = folder / f"weights-{sha256_of(draft)[:8]}.pth"
    draft.rename(path)
    return path


def test_default_cache_is_torch_hub_checkpoints_under_torch_home(torch_home):
    assert default_cache_dir() == torch_home / "hub" / "checkpoints"
    assert default_cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_url_weights_land_in_torch_home_once(tmp_path, torch_home):
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3)}
    source = release_file(tmp_path / "server", state)
    url = source.as_uri()
    path = fetch(url, progress=False)
    assert path == torch_home / "hub" / "checkpoints" / source.name
    assert torch.equal(load_state_dict(url)["conv.weight"], state["conv.weight"])
    source.unlink()  # served from the cache from now on
    assert fetch(url, progress=False) == path
    # torch.hub's own loader finds the same file without downloading it (the server copy is gone)
    loaded = torch.hub.load_state_dict_from_url(url, check_hash=True, progress=False, weights_only=True)
    assert torch.equal(loaded["conv.weight"], state["conv.weight"])
    assert sorted(os.listdir(path.parent)) == [source.name]


def test_url_with_wrong_hash_leaves_nothing_in_the_cache(tmp_path, torch_home):
    source = release_file(tmp_path / "server", {"w": torch.ones(3)})
    wrong = source.with_name("weights-00000000.pth")
    source.rename(wrong)
    with pytest.raises(WeightsError, match="does not match the expected prefix 00000000"):
        fetch(wrong.as_uri(), progress=False)
    cache = torch_home / "hub" / "checkpoints"
    assert not cache.exists() or not list(cache.iterdir())


def test_explicit_hash_prefix_overrides_the_name(tmp_path, torch_home):
    source = release_file(tmp_path / "server", {"w": torch.ones(3)})
    with pytest.raises(WeightsError, match="does not match the expected prefix deadbeef"):
        fetch(source.as_uri(), sha256_prefix="deadbeef", progress=False)
    assert fetch(source.as_uri(), sha256_prefix=sha256_of(source)[:12], progress=False).is_file()


def test_corrupted_cached_file_is_refused(tmp_path, torch_home):
    source = release_file(tmp_path / "server", {"w": torch.ones(3)})
    path = fetch(source.as_uri(), progress=False)
    path.write_bytes(b"not the release")
    with pytest.raises(WeightsError, match="does not match the expected prefix"):
        fetch(source.as_uri(), progress=False)


def test_local_files_load_and_verify_as_before(tmp_path, torch_home):
    path = release_file(tmp_path / "local", {"w": torch.full((2,), 3.0)})
    assert fetch(path) == path  # a path is used where it is, nothing copied
    assert not (torch_home / "hub").exists()
    assert torch.equal(load_state_dict(path, sha256_prefix=sha256_of(path)[:8])["w"], torch.full((2,), 3.0))
    with pytest.raises(WeightsError, match="does not match the expected prefix deadbeef"):
        load_state_dict(path, sha256_prefix="deadbeef")
