import sys

import pytest
import torch

from taggnn.cli import main
from taggnn.errors import MissingExtraError
from taggnn.graph import SpatioTemporalGraph

pytest.importorskip("matplotlib")


def line_colours(figure):
    from matplotlib.collections import LineCollection

    ax = figure.axes[0]
    return [c for c in ax.collections if isinstance(c, LineCollection)]


def test_small_graph_is_drawn_in_full_with_one_colour_per_family(tmp_path):
    g = SpatioTemporalGraph(3, 3, 3, spatial="grid4", temporal="aligned")
    figure = g.draw(tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    collections = line_colours(figure)
    assert len(collections) == 2  # spatial, temporal
    # every undirected pair once: 3 frames * 12 grid4 pairs, 2 * 9 aligned pairs
    assert sorted(len(c.get_segments()) for c in collections) == [18, 36]


def test_large_graph_is_drawn_as_one_neighbourhood():
    g = SpatioTemporalGraph(16, 14, 14, spatial="grid8", temporal="cube:1")
    figure = g.draw()
    assert sum(len(c.get_segments()) for c in line_colours(figure)) == 8 + 18  # the centre node's edges
    figure = g.draw(node=(0, 0, 0))
    assert sum(len(c.get_segments()) for c in line_colours(figure)) == 3 + 4


def test_dynamic_edges_are_drawn_from_features():
    g = SpatioTemporalGraph(2, 2, 2, spatial="none", temporal="none", dynamic="knn:2")
    figure = g.draw(x=torch.randn(8, 3))
    assert sum(len(c.get_segments()) for c in line_colours(figure)) == 16


def test_missing_matplotlib_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'taggnn\[plot\]'"):
        SpatioTemporalGraph(2, 2, 2).draw()


def test_cli_graph_draw(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["graph", "draw", "--spatial", "grid8", "--temporal", "window:2", "--grid", "4", "5", "5",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG image, whatever the backend in use
    assert "100 nodes, 826 edges" in capsys.readouterr().out
    assert main(["graph", "draw", "--temporal", "window:0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "window:0" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["g.txt", "g", "folder"])
def test_cli_graph_draw_refuses_paths_it_would_not_write(tmp_path, capsys, name):
    """An unknown suffix, no suffix (matplotlib would write g.png instead) or a folder: one line, exit 2,
    nothing written anywhere."""
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["graph", "draw", "--grid", "2", "3", "3", "--out", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and ".png" in captured.err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path.parent / "folder.png").exists()
