"""data.decoder: TorchCodec returns PyAV's frames; asked for where it cannot run, a config error."""
import sys

import numpy as np
import pytest
import torch

from taggnn.data import VideoError, VideoFolder, load_clip, sample_indices
from taggnn.data.decoders import DECODERS, torchcodec_problem
from taggnn.engine.config import Config, ConfigError, load_config

from .helpers import read_index, write_audio_only, write_index_video

needs_torchcodec = pytest.mark.skipif(torchcodec_problem() is not None,
                                      reason=f"torchcodec cannot run here: {torchcodec_problem()}")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "short": (write_index_video(root / "short.mp4", 9), 9),
        "medium": (write_index_video(root / "medium.mp4", 100), 100),
        "long": (write_index_video(root / "long.mp4", 700), 700),
        "mpeg4": (write_index_video(root / "clip.avi", 40, codec="mpeg4"), 40),
    }


@pytest.fixture
def without_torchcodec(monkeypatch):
    """TorchCodec made unimportable, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    torchcodec_problem.cache_clear()
    yield
    torchcodec_problem.cache_clear()


def test_decoder_is_a_checked_config_choice():
    assert Config().data.decoder == "pyav" and DECODERS == ("pyav", "torchcodec")
    with pytest.raises(ConfigError, match=r"data.decoder='ffmpeg' is not one of pyav, torchcodec"):
        load_config("synthgym_tiny", ["data.decoder=ffmpeg"])


def test_torchcodec_missing_is_one_config_error_naming_the_extra(without_torchcodec, videos):
    with pytest.raises(ConfigError) as caught:
        load_config("synthgym_tiny", ["data.decoder=torchcodec"])
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install 'taggnn[torchcodec]'" in message and "apt-get install ffmpeg" in message
    assert "data.decoder=pyav" in message
    with pytest.raises(ConfigError, match=r"taggnn\[torchcodec\]"):  # also when decoding directly
        load_clip(videos["medium"][0], 4, decoder="torchcodec")
    # a checkpoint's config that names torchcodec stays loadable (evaluate may --set data.decoder=pyav)
    saved = load_config("synthgym_tiny").to_dict()
    saved["data"]["decoder"] = "torchcodec"
    assert Config.from_dict(saved).data.decoder == "torchcodec"
    # PyAV, the default, needs nothing more
    assert load_config("synthgym_tiny").data.decoder == "pyav"


@needs_torchcodec
@pytest.mark.parametrize("name", ["short", "medium", "long", "mpeg4"])
def test_torchcodec_frames_equal_pyav_frames(videos, name):
    path, frames = videos[name]
    for T in (1, 8, 32):
        pyav = load_clip(path, T)
        torchcodec = load_clip(path, T, decoder="torchcodec")
        assert torchcodec.dtype == torch.uint8 and torchcodec.shape == pyav.shape == (T, 48, 80, 3)
        assert torch.equal(torchcodec, pyav)
        assert [read_index(f) for f in torchcodec] == sample_indices(frames, T)


@needs_torchcodec
def test_torchcodec_every_frame_of_each_codec_equals_pyav(videos):
    for name in ("medium", "mpeg4"):
        path, frames = videos[name]
        every = list(range(frames))
        assert torch.equal(load_clip(path, frames, indices=every, decoder="torchcodec"),
                           load_clip(path, frames, indices=every))


@needs_torchcodec
@pytest.mark.parametrize("sampling", ["random", "linspace"])
def test_torchcodec_samplings_and_explicit_indices(videos, sampling):
    path, frames = videos["long"]
    a = load_clip(path, 8, sampling=sampling, generator=torch.Generator().manual_seed(3), decoder="torchcodec")
    b = load_clip(path, 8, sampling=sampling, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    clip = load_clip(path, 4, indices=[5, 5, 350, 699], decoder="torchcodec")
    assert [read_index(f) for f in clip] == [5, 5, 350, 699]


@needs_torchcodec
def test_torchcodec_resamples_like_pyav_when_the_count_over_counts(videos, caplog):
    path, frames = videos["medium"]
    a = load_clip(path, 8, total_frames=150, decoder="torchcodec")  # e.g. a CSV's TotalFrames too large
    b = load_clip(path, 8, total_frames=150)
    assert torch.equal(a, b) and [read_index(f) for f in a] == sample_indices(frames, 8)
    assert "header says 150 frames, 100 decodable" in caplog.text
    with pytest.raises(VideoError, match=r"has 100 decodable frames, index 120 requested"):
        load_clip(path, 1, indices=[120], total_frames=150, decoder="torchcodec")
    with pytest.raises(VideoError, match=r"frame indices must be in \[0, 99\], got 0\.\.100"):
        load_clip(path, 2, indices=[0, 100], decoder="torchcodec")


@needs_torchcodec
def test_torchcodec_unreadable_files_raise_the_same_video_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    audio = write_audio_only(tmp_path / "audio.m4a")
    cases = [(tmp_path / "nope.mp4", r"nope\.mp4: file does not exist"),
             (tmp_path / "empty.mp4", r"empty\.mp4: file is empty \(0 bytes\)"),
             (tmp_path, "is a directory"),
             (garbage, r"garbage\.mp4: cannot be opened as a video"),
             (audio, r"audio\.m4a: has no video stream \(streams: audio\)")]
    for path, message in cases:
        for decoder in DECODERS:
            with pytest.raises(VideoError, match=message):
                load_clip(path, 8, decoder=decoder)


@needs_torchcodec
def test_datasets_decode_with_the_configured_decoder(tmp_path, monkeypatch):
    for label in ("a", "b"):
        (tmp_path / "train" / label).mkdir(parents=True)
        write_index_video(tmp_path / "train" / label / "clip.mp4", 30 if label == "a" else 60)
    pyav = VideoFolder(tmp_path / "train", num_frames=4)
    torchcodec = VideoFolder(tmp_path / "train", num_frames=4, decoder="torchcodec")
    for index in range(2):
        assert torch.equal(pyav[index][0], torchcodec[index][0])
        assert torch.equal(pyav.load_view(index, 1, 2)[0], torchcodec.load_view(index, 1, 2)[0])

    from taggnn.data import decoders
    from taggnn.engine.data import build_dataset

    calls = []
    real = decoders.load_clip_torchcodec
    monkeypatch.setattr(decoders, "load_clip_torchcodec", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    config = load_config("synthgym_tiny", ["data.dataset=folder", f"data.root={tmp_path}", "data.decoder=torchcodec",
                                           "data.num_frames=4", "data.crop_size=32"])
    dataset = build_dataset(config, "train", train=True)
    assert dataset.decoder == "torchcodec" and dataset[0][0].shape[1] == 4 and len(calls) == 1


def test_benchmark_times_both_decoders_and_writes_json(tmp_path):
    import json

    from benchmarks import decoders

    out = tmp_path / "decoders.json"
    rows = decoders.main(["--frames", "30", "--width", "96", "--height", "64", "--gops", "10", "--sparse", "4",
                          "--dense", "12", "--window", "6", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and [row["sampling"] for row in rows] == ["sparse 4 uniform", "dense 12 uniform",
                                                                           "window 6 consecutive"]
    assert saved["environment"]["av"] and saved["settings"]["gops"] == [10]
    assert all(row["pyav_ms"] > 0 for row in rows)
    if torchcodec_problem() is None:
        assert all(row["identical"] and row["torchcodec_ms"] > 0 for row in rows)
    else:
        assert saved["environment"]["torchcodec_problem"] and "torchcodec_ms" not in rows[0]
