import pytest
import torch

from taggnn.data import eval_transform, train_transform


def clip(T=8, H=90, W=160):
    return torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("style", ["paper", "authors"])
def test_shapes_and_dtype(style):
    out = train_transform(112, style=style)(clip())
    assert out.shape == (3, 8, 112, 112) and out.dtype == torch.float32
    out = eval_transform(112, style=style)(clip())
    assert out.shape == (3, 8, 112, 112)


def test_eval_is_deterministic_and_centre_crops():
    transform = eval_transform(64, short_side=64, normalization=((0, 0, 0), (1, 1, 1)))
    video = clip(H=64, W=100)
    out = transform(video)
    assert torch.equal(out, transform(video))
    expected = video[:, :, 18:82].permute(3, 0, 1, 2).float() / 255  # centre 64 of 100 columns
    torch.testing.assert_close(out, expected)


def test_normalisation_uses_the_preset():
    transform = eval_transform(32, short_side=32, normalization="slowfast")
    out = transform(torch.full((2, 32, 32, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.full_like(out, (1 - 0.45) / 0.225))


def test_one_crop_and_flip_per_clip():
    # all frames identical in -> all frames identical out (same crop/flip for every frame)
    frame = clip(T=1, H=126, W=200)
    video = frame.expand(6, -1, -1, -1).contiguous()
    torch.manual_seed(3)
    out = train_transform(112)(video)
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(6))


def test_bad_arguments():
    with pytest.raises(ValueError, match="style must be one of"):
        train_transform(112, style="mmaction")
    with pytest.raises(ValueError, match="normalization must be one of"):
        eval_transform(112, normalization="cifar")
    with pytest.raises(ValueError,
                       match=r"expected a clip of shape \(T, H, W, 3\) or \(T, 3, H, W\), got \(8, 4, 64, 64\)"):
        eval_transform(32)(torch.zeros(8, 4, 64, 64, dtype=torch.uint8))


def test_channels_first_frames_give_the_same_result():
    video = clip(T=4, H=40, W=60)
    transform = eval_transform(32)
    torch.testing.assert_close(transform(video), transform(video.permute(0, 3, 1, 2)))
