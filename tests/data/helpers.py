"""Videos the tests write: each frame encodes its index, so decoding can be checked exactly."""
import numpy as np

from taggnn.data.video import write_video

BITS = 10
STRIPE = 8


def index_frames(num_frames, height=48, width=BITS * STRIPE):
    """Frame i shows i in binary: stripe b is white when bit b of i is set."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        for b in range(BITS):
            if (i >> b) & 1:
                frames[i, :, b * STRIPE:(b + 1) * STRIPE] = 255
    return frames


def read_index(frame):
    """The index a decoded frame encodes (frame: (H, W, 3) uint8)."""
    frame = np.asarray(frame)
    value = 0
    for b in range(BITS):
        stripe = frame[:, b * STRIPE + 2:(b + 1) * STRIPE - 2]
        if stripe.mean() > 127:
            value |= 1 << b
    return value


def write_index_video(path, num_frames, fps=25, height=48, width=BITS * STRIPE, **kwargs):
    write_video(path, index_frames(num_frames, height, width), fps=fps, **kwargs)
    return path


def write_audio_only(path):
    """A file with one AAC audio stream and no video stream."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(5):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
