"""The figures of taggnn.engine.plots: readable whatever the class count and the title."""
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from PIL import Image  # noqa: E402

from taggnn.engine.plots import class_colours, confusion_figure, save_confusion_matrix, save_tsne  # noqa: E402

LONG_TAG = "test.best.eval.num_clips=3_eval.num_crops=3_eval.average=logits"


def test_a_3_class_confusion_matrix_is_not_a_thumbnail(tmp_path):
    path = save_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"], tmp_path / "cm.png", title="test")
    assert Image.open(path).size == (500, 500)  # 5 inches a side at least, at 100 dpi
    many = save_confusion_matrix(torch.eye(40, dtype=torch.long), None, tmp_path / "cm40.png")
    assert Image.open(many).size == (1600, 1600)  # 2 + 0.35 inch a class


@pytest.mark.parametrize("classes", [3, 40])
def test_the_confusion_title_fits_the_figure(classes):
    fig = confusion_figure(torch.eye(classes, dtype=torch.long), None, title=LONG_TAG)
    FigureCanvasAgg(fig).draw()
    title = fig.axes[0].title
    box, frame = title.get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    assert "(rows normalised)" in title.get_text() and LONG_TAG in title.get_text().replace("\n", "")
    assert classes == 40 or "\n" in title.get_text()  # the long title of a small figure wraps


def test_tsne_colours_do_not_repeat_beyond_20_classes():
    for n in (16, 99, 288, 500):
        colours = [tuple(round(c, 6) for c in colour) for colour in class_colours(n)]
        assert len(set(colours)) == n


def test_tsne_lays_out_one_row_per_checkpoint(tmp_path):
    import numpy as np

    points = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    panels = {f"{kind} model{i}": points for i in range(3) for kind in ("backbone", "head")}
    path = save_tsne(panels, labels, tmp_path / "t.png", ["a", "b", "c"], columns=2)
    width, height = Image.open(path).size
    assert height > width  # 3 rows x 2 columns
