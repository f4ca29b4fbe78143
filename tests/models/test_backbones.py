import pytest
import torch

from taggnn.models import WeightsError, build_backbone, list_backbones, r2plus1d_34
from taggnn.models.backbones import IG65M_WEIGHTS


def test_r2plus1d_34_matches_the_ig65m_release():
    backbone = r2plus1d_34()
    assert sum(p.numel() for p in backbone.parameters()) == 63_491_975
    assert backbone.layer2[0].conv2[0][0].out_channels == 288
    assert backbone.layer3[0].conv2[0][0].out_channels == 576
    assert backbone.layer4[0].conv2[0][0].out_channels == 1152
    assert all(m.eps == 1e-3 for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert backbone.out_channels == 512


@pytest.mark.parametrize("frames,size,grid",
                         [(32, 112, (4, 7, 7)), (64, 112, (8, 7, 7)), (16, 128, (2, 8, 8)), (8, 96, (1, 6, 6))])
def test_r2plus1d_34_grids(frames, size, grid):
    assert r2plus1d_34().feature_grid(frames, size, size) == grid


@pytest.mark.parametrize("name,frames,size,channels,grid", [
    ("r2plus1d_18", 16, 112, 512, (2, 7, 7)),
    ("r3d_18", 8, 112, 512, (1, 7, 7)),
    ("mc3_18", 8, 112, 512, (8, 7, 7)),
    ("r2plus1d_tiny", 16, 64, 128, (4, 4, 4)),
    ("r2plus1d_tiny", 8, 96, 128, (2, 6, 6)),
    ("s3d", 16, 112, 1024, (2, 3, 3)),
])
def test_real_forward_shapes_agree_with_feature_grid(name, frames, size, channels, grid):
    backbone = build_backbone(name).eval()
    assert backbone.feature_grid(frames, size, size) == grid
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, frames, size, size))
    assert out.shape == (1, channels, *grid)
    assert backbone.out_channels == channels


def test_swin3d_is_channels_first():
    backbone = build_backbone("swin3d_t").eval()
    grid = backbone.feature_grid(4, 64, 64)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 4, 64, 64)).shape == (1, 768, *grid)


def test_registry_errors_and_listing():
    names = list_backbones()
    assert {"r2plus1d_34", "r2plus1d_tiny", "r2plus1d_18", "slow_r50", "csn_r101"} <= set(names)
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'; choose one of"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match=r"expected a video batch of shape \(B, 3, T, H, W\), got \(3, 8, 64, 64\)"):
        build_backbone("r2plus1d_tiny")(torch.randn(3, 8, 64, 64))
    with pytest.raises(ValueError, match="widths must be 4 positive integers"):
        build_backbone("r2plus1d_tiny", widths=(8, 16))


def test_weights_round_trip_in_release_layout(tmp_path):
    # A file laid out like the IG-65M releases: torchvision VideoResNet keys plus fc.
    source = build_backbone("r2plus1d_tiny")
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(400, 128), torch.randn(400)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": state}, path)
    target = build_backbone("r2plus1d_tiny", weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_ig65m_layout_loads_into_r2plus1d_34(tmp_path):
    source = r2plus1d_34()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(359, 512), torch.randn(359)
    path = tmp_path / "r2plus1d_34_clip32_ig65m_from_scratch.pth"
    torch.save(state, path)
    target = build_backbone("r2plus1d_34", weights=str(path))
    assert torch.equal(target.layer4[0].conv2[0][0].weight, state["layer4.0.conv2.0.0.weight"])
    assert set(IG65M_WEIGHTS) == {"IG65M_CLIP8", "IG65M_CLIP32", "IG65M_KINETICS_CLIP8", "IG65M_KINETICS_CLIP32"}


def test_weight_errors_name_keys_and_shapes(tmp_path):
    source = build_backbone("r2plus1d_tiny", widths=(16, 32, 64, 96))
    path = tmp_path / "narrow.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(WeightsError, match=r"shape mismatch.*layer4\.\S+: checkpoint \(96, .*\) vs model \(128, .*\)"):
        build_backbone("r2plus1d_tiny", weights=str(path))

    partial = {k: v for k, v in build_backbone("r2plus1d_tiny").state_dict().items() if not k.startswith("layer4")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"missing key\(s\) \['layer4.*1 unexpected key\(s\) \['extra.weight'\]"):
        build_backbone("r2plus1d_tiny", weights=str(tmp_path / "partial.pth"))
    backbone = build_backbone("r2plus1d_tiny", weights=str(tmp_path / "partial.pth"), strict=False)
    assert backbone.out_channels == 128

    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("r2plus1d_tiny", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read as a PyTorch weights file"):
        build_backbone("r2plus1d_tiny", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError,
                       match=r"unknown weights 'IMAGENET' for backbone 'r2plus1d_34'; known: \['IG65M_CLIP32'"):
        build_backbone("r2plus1d_34", weights="IMAGENET")


def test_hash_prefix_is_checked(tmp_path):
    from taggnn.models.weights import fetch, sha256_of

    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, path)
    digest = sha256_of(path)
    assert fetch(path, sha256_prefix=digest[:8]) == path
    with pytest.raises(WeightsError, match="does not match the expected prefix deadbeef"):
        fetch(path, sha256_prefix="deadbeef")


def test_unreachable_url_gives_a_clear_error(tmp_path, monkeypatch):
    from taggnn.models.weights import fetch

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match="could not download .*pass the local path instead"):
        fetch("https://example.invalid/r2plus1d_34-449a7af9.pth", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_download_goes_through_cache_and_hash(tmp_path, monkeypatch):
    from taggnn.models.weights import fetch, sha256_of

    payload = tmp_path / "payload.pth"
    torch.save({"w": torch.ones(2)}, payload)
    prefix = sha256_of(payload)[:8]
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        with open(payload, "rb") as src, open(dst, "wb") as out:
            out.write(src.read())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    cache = tmp_path / "cache"
    url = f"https://example.invalid/model-{prefix}.pth"
    path = fetch(url, cache_dir=cache)
    assert path == cache / f"model-{prefix}.pth" and path.exists()
    fetch(url, cache_dir=cache)
    assert len(calls) == 1  # the second call used the cache
    with pytest.raises(WeightsError, match="does not match"):
        fetch("https://example.invalid/model-00000000.pth", cache_dir=tmp_path / "other")


class NotATensor:
    pass


def test_pickled_objects_need_trust(tmp_path):
    from taggnn.models.weights import load_state_dict

    path = tmp_path / "with_config.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "cfg": NotATensor()}, path)
    with pytest.raises(WeightsError, match="holds pickled objects other than tensors.*trusted=True"):
        load_state_dict(path)
    assert torch.equal(load_state_dict(path, trusted=True)["w"], torch.ones(1))


def test_torchvision_weights_enum_resolves_to_the_catalogue(tmp_path, monkeypatch):
    from torchvision.models.video import R2Plus1D_18_Weights

    from taggnn.models.weights import sha256_of

    source = build_backbone("r2plus1d_18")
    state = dict(source.state_dict(), **{"fc.weight": torch.zeros(400, 512), "fc.bias": torch.zeros(400)})
    payload = tmp_path / "payload.pth"
    torch.save(state, payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    # put the "downloaded" file where the cache expects it, under torchvision's release name
    name = R2Plus1D_18_Weights.KINETICS400_V1.url.rsplit("/", 1)[1]
    monkeypatch.setenv("TAGGNN_CACHE", str(cache))
    (cache / name).write_bytes(payload.read_bytes())
    with pytest.raises(WeightsError, match="does not match the expected prefix 91a641e6"):
        build_backbone("r2plus1d_18", weights=R2Plus1D_18_Weights.KINETICS400_V1)  # our bytes are not theirs
    assert sha256_of(payload)  # the file itself is readable
