import sys

import pytest
import torch

from taggnn.models import build_backbone

pytorchvideo = pytest.importorskip("pytorchvideo", reason="optional extra 'zoo' not installed")


@pytest.mark.parametrize("name,frames,size,channels", [
    ("x3d_s", 4, 64, 192), ("slow_r50", 4, 64, 2048), ("i3d_r50", 4, 64, 2048), ("csn_r101", 4, 64, 2048),
])
def test_shapes_agree_with_feature_grid(name, frames, size, channels):
    backbone = build_backbone(name).eval()
    assert backbone.out_channels == channels
    grid = backbone.feature_grid(frames, size, size)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, frames, size, size)).shape == (1, channels, *grid)


def test_model_zoo_file_layout_loads(tmp_path):
    from pytorchvideo.models import hub

    full = hub.x3d_s(pretrained=False)  # the zoo architecture, head included
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in full.state_dict().items()}
    path = tmp_path / "X3D_S.pyth"
    torch.save({"model_state": state, "epoch": 10}, path)  # pytorchvideo zoo checkpoints are dicts
    backbone = build_backbone("x3d_s", weights=str(path))
    key = "blocks.0.conv.conv_t.weight"
    assert torch.equal(backbone.state_dict()[key], state[key])
    assert backbone.weights_catalogue()["KINETICS400"].mean == (0.45, 0.45, 0.45)  # the normalisation of the zoo


def test_clear_error_without_pytorchvideo(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorchvideo.models", None)
    with pytest.raises(ImportError, match=r"backbone 'slow_r50' needs pytorchvideo: pip install 'taggnn\[zoo\]'"):
        build_backbone("slow_r50")
