import numpy as np
import pytest
import torch

from taggnn.data import VideoError, count_frames, load_clip, sample_indices

from .helpers import read_index, write_audio_only, write_index_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "short": write_index_video(root / "short.mp4", 9),
        "medium": write_index_video(root / "medium.mp4", 100),
        "long": write_index_video(root / "long.mp4", 700),
        "mpeg4": write_index_video(root / "clip.avi", 40, codec="mpeg4"),
        "root": root,
    }


def test_uniform_indices_spread_evenly():
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(32, 32) == list(range(32))
    assert sample_indices(64, 32) == list(range(1, 64, 2))
    assert sample_indices(10, 1) == [5]
    assert sample_indices(1, 5) == [0] * 5


@pytest.mark.parametrize("n,T", [(9, 32), (25, 64), (140, 64), (1, 1), (7, 7)])
@pytest.mark.parametrize("sampling", ["uniform", "linspace", "random"])
def test_indices_are_valid_sorted_and_cover_the_clip(n, T, sampling):
    idx = sample_indices(n, T, sampling, generator=torch.Generator().manual_seed(0))
    assert len(idx) == T and all(0 <= i < n for i in idx) and idx == sorted(idx)
    if T >= n:
        assert set(idx) == set(range(n))  # short clips repeat frames, none is lost
    segment = n / T
    if sampling == "random":
        assert all(int(k * segment) <= i <= min(n - 1, int((k + 1) * segment)) for k, i in enumerate(idx))


def test_linspace_hits_both_ends():
    # the authors' torch.linspace(0, 49, 5).long(): 36.75 truncates to 36
    assert sample_indices(50, 5, "linspace") == [0, 12, 24, 36, 49]


def test_random_sampling_is_reproducible_and_varies():
    a = sample_indices(300, 8, "random", generator=torch.Generator().manual_seed(1))
    b = sample_indices(300, 8, "random", generator=torch.Generator().manual_seed(1))
    c = sample_indices(300, 8, "random", generator=torch.Generator().manual_seed(2))
    assert a == b and a != c


def test_bad_sampling_arguments():
    with pytest.raises(ValueError, match="sampling must be one of"):
        sample_indices(10, 4, "dense")
    with pytest.raises(ValueError, match="num_frames must be >= 1, got 0"):
        sample_indices(10, 0)


@pytest.mark.parametrize("name,frames", [("medium", 100), ("short", 9), ("long", 700), ("mpeg4", 40)])
def test_decoded_frames_are_the_sampled_ones(videos, name, frames):
    assert count_frames(videos[name]) == frames
    for T in (1, 8, 32):
        clip = load_clip(videos[name], T)
        assert clip.dtype == torch.uint8 and clip.shape == (T, 48, 80, 3)
        assert [read_index(f) for f in clip] == sample_indices(frames, T)


def test_seeking_equals_sequential_decoding(videos):
    seek = load_clip(videos["long"], 6, seek_threshold=8)
    sequential = load_clip(videos["long"], 6, seek_threshold=10**9)
    assert [read_index(f) for f in seek] == [read_index(f) for f in sequential] == sample_indices(700, 6)


def test_short_clip_sampled_to_32(videos):
    clip = load_clip(videos["short"], 32)
    assert [read_index(f) for f in clip] == sample_indices(9, 32)
    assert set(read_index(f) for f in clip) == set(range(9))


def test_explicit_indices(videos):
    clip = load_clip(videos["medium"], 3, indices=[5, 50, 99])
    assert [read_index(f) for f in clip] == [5, 50, 99]


def test_missing_empty_directory_and_garbage_files(videos, tmp_path):
    with pytest.raises(VideoError, match=r"nope\.mp4: file does not exist"):
        load_clip(tmp_path / "nope.mp4", 8)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.mp4: file is empty \(0 bytes\)"):
        load_clip(tmp_path / "empty.mp4", 8)
    with pytest.raises(VideoError, match="is a directory"):
        load_clip(tmp_path, 8)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"garbage\.mp4: cannot be opened as a video"):
        load_clip(tmp_path / "garbage.mp4", 8)


def test_truncated_video_raises_or_resamples_never_black(videos, tmp_path):
    data = open(videos["medium"], "rb").read()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    try:
        clip = load_clip(truncated, 8)
    except VideoError as error:
        assert "truncated.mp4" in str(error)
    else:  # decodable part only: real frames, none invented
        indices = [read_index(f) for f in clip]
        assert indices == sorted(indices) and clip.float().mean() > 0


def test_audio_only_file(tmp_path):
    path = write_audio_only(tmp_path / "audio.m4a")
    with pytest.raises(VideoError, match=r"audio\.m4a: has no video stream \(streams: audio\)"):
        load_clip(path, 8)


def test_out_of_range_indices_raise_video_error(videos):
    path = videos["long"]
    with pytest.raises(VideoError, match=r"frame indices must be in \[0, "):
        load_clip(path, 2, indices=[0, 10_000])


def test_failed_seeking_falls_back_to_decoding_from_the_first_frame(videos, monkeypatch):
    import taggnn.data.video as video

    path = videos["long"]

    def seek_then_give_up(container, stream, wanted, rate):
        for index, _ in enumerate(container.decode(stream)):  # part-way through the file
            if index == 300:
                return None

    monkeypatch.setattr(video, "_decode_by_seeking", seek_then_give_up)
    total = video.count_frames(path)
    clip = load_clip(path, 4, seek_threshold=0)
    assert [read_index(f) for f in clip] == sample_indices(total, 4)
