"""Data that looks fine and is not: every case either works as meant or stops with one line."""
import logging

import numpy as np
import pytest
import torch

from taggnn.cli import main
from taggnn.data import VideoCSV, VideoFolder
from taggnn.data.video import load_clip, write_video
from taggnn.data.views import MultiCropTransform, MultiViewClips, view_indices
from taggnn.errors import AnnotationError, VideoError

from .helpers import index_frames, read_index, write_index_video

HEADER = "FileName,Class,TotalFrames,ClassEncoded\n"
TINY = ["data.num_frames=4", "data.crop_size=32", "data.short_side=32", "model.ffn_dim=32", "train.epochs=1",
        "train.batch_size=2", "train.eval_batch_size=2", "data.normalization=imagenet"]


def cli_set(*values):
    return [item for value in values for item in ("--set", value)]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for name in ("a.mp4", "b.mp4"):
        write_index_video(root / name, 20, height=32, width=80)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    return root


# ---------------------------------------------------------------- empty splits


def test_a_header_only_csv_is_an_error_naming_the_file(clips, tmp_path):
    (tmp_path / "train.csv").write_text(HEADER)
    with pytest.raises(AnnotationError, match=r"train\.csv: this split has no clips"):
        VideoCSV(tmp_path / "train.csv", clips, num_frames=4)


def test_training_on_a_header_only_csv_stops_with_one_line(clips, tmp_path, capsys):
    (tmp_path / "train.csv").write_text(HEADER)
    (tmp_path / "val.csv").write_text(HEADER + "a.mp4,x,20,0\n")
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--no-progress",
                 *cli_set(*TINY, "data.dataset=csv", f"data.root={clips}", f"data.train_csv={tmp_path / 'train.csv'}",
                          f"data.val_csv={tmp_path / 'val.csv'}", f"data.test_csv={tmp_path / 'val.csv'}")])
    assert code == 2
    assert "train.csv: this split has no clips" in one_line_error(capsys)
    assert not (out / "best.pt").exists()


def test_a_split_whose_clips_are_all_missing_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "s.csv").write_text(HEADER + "gone.mp4,x,20,0\n")
    with pytest.raises(AnnotationError, match=r"s\.csv: this split has no clips"):
        VideoCSV(tmp_path / "s.csv", tmp_path, num_frames=4, on_error="skip")


# ------------------------------------------------- multi-view on over-counted clips


def test_multi_view_clamps_to_the_decodable_frames_like_single_view(clips, tmp_path, caplog):
    (tmp_path / "s.csv").write_text(HEADER + "a.mp4,x,21,0\n")  # one frame more than the clip has
    dataset = VideoCSV(tmp_path / "s.csv", clips, num_frames=4)
    with caplog.at_level(logging.WARNING, logger="taggnn.data.video"):
        views, label = dataset.load_views(0, 3)  # the last view's last frame is frame 20 of 21
    assert view_indices(21, 4, 2, 3)[-1] == 20
    assert views.shape[:2] == (3, 4) and label == 0
    for view in range(3):
        assert [read_index(f) for f in views[view]] == view_indices(20, 4, view, 3)
    assert "21 frames expected" in caplog.text and "resampling 3 views on the 20 decodable frames" in caplog.text
    # one view is the single-view sampling, over-count included
    from taggnn.data.video import load_views

    single = load_clip(clips / "a.mp4", 4, total_frames=21)
    assert torch.equal(load_views(clips / "a.mp4", 4, 1, total_frames=21)[0], single)
    # the test-time dataset scores the clip instead of failing on it
    transform = MultiCropTransform(32, short_side=32, normalization="imagenet")
    stacked, label = MultiViewClips(dataset, transform, num_clips=3)[0]
    assert stacked.shape == (3, 3, 4, 32, 32) and label == 0


# ------------------------------------------------------------- rotation metadata


def test_a_display_rotation_is_applied_to_the_frames(tmp_path):
    frames = index_frames(12, height=32, width=80)
    write_video(tmp_path / "portrait.mp4", frames, rotation=-90)  # a phone's portrait video
    clip = load_clip(tmp_path / "portrait.mp4", 4)
    assert clip.shape == (4, 80, 32, 3)  # shown upright: 90 degrees clockwise
    # turning the frames back counter-clockwise gives the stored frames
    assert [read_index(np.rot90(f.numpy(), 1)) for f in clip] == [1, 4, 7, 10]
    write_video(tmp_path / "flipped.mp4", frames, rotation=180)
    upside_down = load_clip(tmp_path / "flipped.mp4", 4)
    assert upside_down.shape == (4, 32, 80, 3)
    assert [read_index(np.rot90(f.numpy(), 2)) for f in upside_down] == [1, 4, 7, 10]


def test_the_older_rotate_tag_is_applied_when_frames_carry_no_display_matrix(tmp_path):
    import av

    with av.open(str(tmp_path / "tagged.mkv"), "w") as container:  # FFmpeg's rotate tag: degrees clockwise
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 80, 32, "yuv420p"
        stream.metadata["rotate"] = "90"
        for image in index_frames(12, height=32, width=80):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    clip = load_clip(tmp_path / "tagged.mkv", 4)
    assert clip.shape == (4, 80, 32, 3)
    assert [read_index(np.rot90(f.numpy(), 1)) for f in clip] == [1, 4, 7, 10]


# ------------------------------------------------------- a resolution change


def test_a_resolution_change_mid_stream_is_resized_to_the_first_size(tmp_path, caplog):
    small = index_frames(10, height=32, width=80)
    large = np.repeat(np.repeat(index_frames(20, height=32, width=80)[10:], 2, axis=1), 2, axis=2)  # 64 x 160
    write_video(tmp_path / "small.h264", small)
    write_video(tmp_path / "large.h264", large)
    joined = tmp_path / "joined.h264"  # two H.264 streams back to back: the size changes at frame 10
    joined.write_bytes((tmp_path / "small.h264").read_bytes() + (tmp_path / "large.h264").read_bytes())
    with caplog.at_level(logging.WARNING, logger="taggnn.data.video"):
        clip = load_clip(joined, 20)
    assert clip.shape == (20, 32, 80, 3)
    assert [read_index(f) for f in clip] == list(range(20))
    assert "resolution changes from 80x32 to 160x64" in caplog.text


# ---------------------------------------------------------- text encodings


def test_a_latin1_csv_is_a_one_line_error_with_file_line_and_encoding(clips, tmp_path):
    (tmp_path / "s.csv").write_bytes((HEADER + "a.mp4,plié,20,0\n").encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"s\.csv:2: the file is not UTF-8 text") as error:
        VideoCSV(tmp_path / "s.csv", clips, num_frames=4)
    assert "\n" not in str(error.value)


def test_a_utf8_csv_with_a_byte_order_mark_is_read(clips, tmp_path):
    (tmp_path / "s.csv").write_bytes(("\ufeff" + HEADER + "a.mp4,plié,20,0\n").encode("utf-8"))
    dataset = VideoCSV(tmp_path / "s.csv", clips, num_frames=4)
    assert dataset.classes == ["plié"] and dataset.samples == [(str(clips / "a.mp4"), 0)]


# ------------------------------------------------------ hidden and system folders


def test_hidden_and_system_folders_are_not_classes(clips, tmp_path):
    for folder in ("jump", "spin", ".ipynb_checkpoints", "__MACOSX", ".cache", "__MACOSX/jump", "jump/.thumbs"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("jump", "spin", ".ipynb_checkpoints", "__MACOSX/jump", "jump/.thumbs"):
        (tmp_path / folder / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())
    (tmp_path / "jump" / "._a.mp4").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork, not a video
    dataset = VideoFolder(tmp_path, num_frames=4)
    assert dataset.classes == ["jump", "spin"]
    assert dataset.samples == [(str(tmp_path / "jump" / "a.mp4"), 0), (str(tmp_path / "spin" / "a.mp4"), 1)]


# ----------------------------------------------------- YAML text in string fields


@pytest.mark.parametrize("text", ["0777", "010", "12:30", "~", "yes", "1e3", "0x1F"])
def test_set_keeps_the_text_of_string_fields(text):
    from taggnn.engine.config import load_config

    config = load_config("synthgym_tiny", [f"data.root={text}", f"name={text}", f"data.train_csv={text}"])
    assert config.data.root == text and config.name == text and config.data.train_csv == text


def test_set_still_reads_numbers_booleans_and_none_for_their_fields():
    from taggnn.engine.config import load_config

    config = load_config("synthgym_tiny", ["optim.lr=1e-3", "data.flip=on", "train.max_steps=010",
                                           "model.weights=none", "data.root='0777'", "model.propagation=GATConv",
                                           "model.graph_kwargs={heads: 4}"])
    assert config.optim.lr == 1e-3 and config.data.flip is True and config.train.max_steps == 10
    assert config.model.weights is None and config.data.root == "0777" and config.model.graph_kwargs == {"heads": 4}


def test_a_yaml_file_keeps_the_text_of_string_fields(tmp_path):
    from taggnn.engine.config import load_config

    (tmp_path / "mine.yaml").write_text("base: synthgym_tiny\nname: 010\ndata:\n  root: 0777\n  val_csv: 12:30\n"
                                        "  test_csv: null\n  num_frames: 010\n")
    config = load_config(str(tmp_path / "mine.yaml"))
    assert config.name == "010" and config.data.root == "0777" and config.data.val_csv == "12:30"
    assert config.data.test_csv is None and config.data.num_frames == 10  # as --set reads it (not octal 8)


# --------------------------------------------- unreadable clips in loader workers


def test_a_worker_error_reaches_the_caller_as_itself(clips, tmp_path):
    from taggnn.engine.config import load_config
    from taggnn.engine.data import make_loader
    from taggnn.engine.distributed import ResumableSampler

    (tmp_path / "s.csv").write_text(HEADER + "a.mp4,x,20,0\nbroken.mp4,x,20,0\n")
    dataset = VideoCSV(tmp_path / "s.csv", clips, num_frames=4)
    config = load_config("synthgym_tiny", ["data.num_workers=1"])
    loader = make_loader(dataset, ResumableSampler(2, shuffle=False), 1, config, torch.device("cpu"))
    with pytest.raises(VideoError) as error:
        list(loader)
    assert error.value.path == str(clips / "broken.mp4") and "\n" not in str(error.value)


def test_training_with_workers_stops_on_an_unreadable_clip_with_its_one_line(clips, tmp_path, capsys):
    (tmp_path / "s.csv").write_text(HEADER + "a.mp4,x,20,0\nbroken.mp4,y,20,1\n")
    code = main(["train", "--out", str(tmp_path / "run"), "--no-progress",
                 *cli_set(*TINY, "data.dataset=csv", f"data.root={clips}", "data.num_workers=2",
                          *(f"data.{split}_csv={tmp_path / 's.csv'}" for split in ("train", "val", "test")))])
    assert code == 2
    err = one_line_error(capsys)
    assert err.startswith("taggnn train: error: ") and f"{clips / 'broken.mp4'}: " in err
