import numpy as np
import pytest
import torch

from taggnn.data import VideoCSV
from taggnn.data.views import MultiCropTransform, MultiViewClips, SpatialCrops, average_views, view_indices

from .helpers import read_index, write_index_video


def test_view_indices_spread_offsets_and_one_view_is_uniform():
    from taggnn.data import sample_indices

    assert view_indices(64, 8, 0, 1) == sample_indices(64, 8, "uniform")
    views = [view_indices(100, 4, v, 5) for v in range(5)]
    assert views[0] == [2, 27, 52, 77] and views[4] == [22, 47, 72, 97]  # offsets 0.1 and 0.9 of a segment
    assert all(a < b for a, b in zip(views[0], views[1]))
    with pytest.raises(ValueError):
        view_indices(10, 4, 3, 3)


def test_three_crops_run_along_the_long_side():
    frames = torch.arange(2 * 3 * 4 * 10, dtype=torch.float32).view(2, 3, 4, 10)  # (T, 3, H=4, W=10)
    crops = SpatialCrops(4, 3)(frames)
    assert crops.shape == (3, 2, 3, 4, 4)
    assert torch.equal(crops[0], frames[..., 0:4]) and torch.equal(crops[1], frames[..., 3:7])
    assert torch.equal(crops[2], frames[..., 6:10])
    tall = SpatialCrops(4, 3)(frames.transpose(-1, -2))  # H=10, W=4
    assert torch.equal(tall[2], frames.transpose(-1, -2)[..., 6:10, :])
    assert torch.equal(SpatialCrops(4, 1)(frames)[0], frames[..., 3:7])


def test_multi_view_dataset_stacks_clips_times_crops(tmp_path):
    write_index_video(tmp_path / "a.mp4", 40)
    (tmp_path / "s.csv").write_text("FileName,Class,TotalFrames,ClassEncoded\na.mp4,x,40,0\n")
    base = VideoCSV(tmp_path / "s.csv", tmp_path, num_frames=4)
    transform = MultiCropTransform(32, short_side=48, normalization=((0, 0, 0), (1, 1, 1)), num_crops=3)
    views, label = MultiViewClips(base, transform, num_clips=2)[0]
    assert views.shape == (6, 3, 4, 32, 32) and label == 0
    raw, _ = base.load_view(0, 1, 2)
    assert [read_index(f) for f in raw] == view_indices(40, 4, 1, 2)


def test_average_views():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])
    torch.testing.assert_close(average_views(logits, "logits"), torch.tensor([[1.0, 2.0]]))
    probs = average_views(logits, "prob")
    torch.testing.assert_close(probs, (logits.softmax(-1)).mean(1))
    assert np.isclose(float(probs.sum()), 1.0)
