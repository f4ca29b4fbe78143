"""The oversmoothing benchmark's figure: no empty panel, coinciding curves kept apart, zeros shown."""
import pytest

pytest.importorskip("matplotlib")

from benchmarks.oversmoothing import figure, plot  # noqa: E402


def _rows(timed: bool):
    """Two operators with the same values everywhere (as APPNP's alphas give for the rank), one with a zero."""
    rows = [{"grid": "4x7x7", "depth": 0, "operator": "input", "mode": "-", "energy_within_ratio": 1.0,
             "energy_across_ratio": 1.0, "mad": 0.5, "effective_rank": 40.0}]
    for operator, scale in (("appnp a=0.05", 1.0), ("appnp a=0.1", 1.0), ("gcn", 0.5)):
        for depth in (1, 2, 4):
            row = {"grid": "4x7x7", "depth": depth, "operator": operator, "mode": "propagation",
                   "energy_within_ratio": scale / depth, "energy_across_ratio": scale / depth ** 2,
                   "mad": 0.0 if operator == "gcn" and depth == 4 else scale * 0.1, "effective_rank": 10.0 * scale}
            if timed:
                row["fwd_bwd_ms"] = float(depth)
            rows.append(row)
    return rows


def test_without_latency_the_figure_has_no_latency_panel():
    assert [ax.get_title() for ax in figure(_rows(timed=False), "4x7x7").axes] == [
        "within-frame energy / input", "across-frame energy / input", "MAD", "effective rank"]
    assert figure(_rows(timed=True), "4x7x7").axes[-1].get_title() == "forward+backward ms"


def test_identical_curves_get_distinct_styles_and_a_note():
    panel = figure(_rows(timed=False), "4x7x7").axes[0]
    lines = {line.get_label(): line for line in panel.get_lines()}
    first, second = lines["appnp a=0.05"], lines["appnp a=0.1"]
    assert list(first.get_ydata()) == list(second.get_ydata())  # drawn on top of each other...
    assert (first.get_linestyle(), first.get_marker()) != (second.get_linestyle(), second.get_marker())  # ...told apart
    notes = [text.get_text() for text in panel.texts]
    assert "same values: appnp a=0.05 = appnp a=0.1" in notes


def test_a_zero_on_a_log_axis_is_drawn_at_a_marked_floor():
    panel = figure(_rows(timed=False), "4x7x7").axes[2]  # MAD: gcn reaches 0 at depth 4
    gcn = next(line for line in panel.get_lines() if line.get_label() == "gcn")
    assert list(gcn.get_xdata()) == [1, 2, 4]  # the zero is not dropped
    floor = gcn.get_ydata()[-1]
    assert floor == pytest.approx(0.005)  # a decade under the smallest positive value (0.05)
    assert any("drawn at floor" in text.get_text() for text in panel.texts)


def test_plot_writes_one_png_per_grid(tmp_path):
    rows = _rows(timed=False) + [dict(row, grid="8x7x7") for row in _rows(timed=False)]
    assert [path.name for path in plot(rows, tmp_path / "oversmoothing")] == [
        "oversmoothing_4x7x7.png", "oversmoothing_8x7x7.png"]
