"""Decoding threads: ``threads`` reaches every stream load_clip decodes from, including the streams
it opens again (after a failed seek, and to resample when fewer frames decode than expected)."""
import pytest

import taggnn.data.video as video
from taggnn.data import load_clip
from taggnn.data.video import load_views

from .helpers import read_index, write_index_video


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("threads") / "clip.mp4", 100)


@pytest.fixture
def decoder_streams(monkeypatch):
    """(thread_type, thread_count) of every stream a frame is decoded from, in order."""
    seen = []
    sequential = video._decode_sequentially

    def record(stream):
        seen.append((str(stream.thread_type).split(".")[-1].upper(), stream.thread_count))

    def decode_sequentially(container, stream, wanted):
        record(stream)
        return sequential(container, stream, wanted)

    def give_up_seeking(container, stream, wanted, rate):  # as when seeking fails part-way
        record(stream)
        for index, _ in enumerate(container.decode(stream)):
            if index == 20:
                return None

    monkeypatch.setattr(video, "_decode_sequentially", decode_sequentially)
    monkeypatch.setattr(video, "_decode_by_seeking", give_up_seeking)
    return seen


def test_threads_reach_the_stream_opened_again_to_resample(clip_file, decoder_streams):
    clip = load_clip(clip_file, 8, total_frames=150, threads=3)  # 150 expected, 100 decode: resampled
    assert [read_index(frame) for frame in clip] == video.sample_indices(100, 8)
    assert len(decoder_streams) == 2  # the first pass, then the stream opened again
    assert decoder_streams == [("AUTO", 3)] * 2


def test_threads_reach_the_stream_opened_again_after_a_failed_seek(clip_file, decoder_streams):
    clip = load_clip(clip_file, 4, seek_threshold=0, threads=2)
    assert [read_index(frame) for frame in clip] == video.sample_indices(100, 4)
    assert decoder_streams == [("AUTO", 2)] * 2  # seeking, then decoding from the first frame


def test_threads_reach_every_stream_of_multi_view_decoding(clip_file, decoder_streams):
    views = load_views(clip_file, 4, 2, total_frames=150, threads=3, seek_threshold=10_000)
    assert views.shape[:2] == (2, 4)
    assert decoder_streams == [("AUTO", 3)] * 2
