import csv
import json
import logging
import math
import sys

import numpy as np
import pytest
from scipy.stats import nct, t, ttest_rel

from taggnn.errors import ConfigError
from taggnn.study.report import write_report

SEEDS = [0, 1, 2, 3, 4]
# Per-seed top1 of three rows (made up): "B" the reference, "B+TE" about 3 points up, "B|x" about the same.
TOP1 = {
    "B": [52.1, 53.4, 50.9, 55.0, 51.7],
    "B+TE": [55.6, 55.9, 54.4, 58.3, 54.0],
    "B|x": [52.5, 52.8, 51.6, 54.1, 52.6],
}


def record(row, seed, value=None, status="done", error=None):
    return {"row": row, "seed": seed, "status": status, "folder": f"runs/{row}/seed-{seed}",
            "config_hash": f"hash-{row}-{seed}", "num_classes": 10,
            "metrics": {"top1": value, "top5": 90.0, "mca": value - 5} if status == "done" else {},
            "error": error, "wall_s": 12.5 if status in ("done", "failed") else None}


def records_of(table, seeds=SEEDS):
    return [record(row, seed, values[i]) for row, values in table.items() for i, seed in enumerate(seeds)]


def report_of(tmp_path, records, rows=("B", "B+TE", "B|x"), **kwargs):
    arguments = dict(rows=list(rows), reference="B", metric="top1", seeds=SEEDS, num_classes=10, select="last",
                     base="smoke")
    arguments.update(kwargs)
    return write_report(tmp_path, records, **arguments)


def by_name(report):
    return {entry["name"]: entry for entry in report["rows"]}


def test_numbers_match_scipy(tmp_path):
    report = report_of(tmp_path, records_of(TOP1), mde=1.0)
    rows = by_name(report)
    n = len(SEEDS)
    for name, values in TOP1.items():
        values = np.array(values)
        half = t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
        assert rows[name]["mean"] == pytest.approx(values.mean())
        assert rows[name]["std"] == pytest.approx(values.std(ddof=1))
        assert [rows[name]["ci_low"], rows[name]["ci_high"]] == pytest.approx(
            [values.mean() - half, values.mean() + half])
        assert rows[name]["values"] == {str(seed): pytest.approx(v) for seed, v in zip(SEEDS, values)}
    reference = np.array(TOP1["B"])
    p_values = {}
    for name in ("B+TE", "B|x"):
        comparison = rows[name]["vs_reference"]
        differences = np.array(TOP1[name]) - reference
        half = t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n)
        assert comparison["mean"] == pytest.approx(differences.mean())
        assert [comparison["ci_low"], comparison["ci_high"]] == pytest.approx(
            [differences.mean() - half, differences.mean() + half])
        p_values[name] = ttest_rel(TOP1[name], TOP1["B"]).pvalue
        assert comparison["p"] == pytest.approx(p_values[name], rel=1e-9)
        # the MDD has 80% power: the noncentral t, computed here
        critical = t.ppf(0.975, n - 1)
        delta = comparison["mdd"] / (differences.std(ddof=1) / math.sqrt(n))
        assert nct.sf(critical, n - 1, delta) + nct.cdf(-critical, n - 1, delta) == pytest.approx(0.8, abs=1e-8)
        # and by simulation: normal differences with the observed spread, the t-test rejecting 80% of the time
        rng = np.random.default_rng(0)
        samples = rng.normal(comparison["mdd"], differences.std(ddof=1), size=(20000, n))
        rejected = ttest_rel(samples, np.zeros_like(samples), axis=1).pvalue < 0.05
        assert rejected.mean() == pytest.approx(0.8, abs=0.015)
        # seeds for a 1-point difference: the fewest with >= 80% power
        needed = comparison["seeds_for_mde"]
        power = [nct.sf(t.ppf(0.975, k - 1), k - 1, 1.0 / (differences.std(ddof=1) / math.sqrt(k)))
                 + nct.cdf(-t.ppf(0.975, k - 1), k - 1, 1.0 / (differences.std(ddof=1) / math.sqrt(k)))
                 for k in (needed - 1, needed)]
        assert power[0] < 0.8 <= power[1]
    # Holm over the two comparisons, by hand
    low, high = sorted(p_values.values())
    holm = {name: min(1, 2 * low) if p == low else max(min(1, 2 * low), high) for name, p in p_values.items()}
    for name in ("B+TE", "B|x"):
        assert rows[name]["vs_reference"]["p_holm"] == pytest.approx(holm[name], rel=1e-9)
    assert rows["B+TE"]["vs_reference"]["verdict"] == "higher"  # p_holm < 0.001
    assert rows["B|x"]["vs_reference"]["verdict"] == "no difference"
    assert "vs_reference" not in rows["B"] and rows["B"]["is_reference"]
    assert report["study"]["chance"] == pytest.approx(10.0) and report["warnings"] == []


def test_holm_verdict_can_differ_from_the_unadjusted_interval(tmp_path):
    # Two rows each just significant alone (p = 0.042): Holm (x2 for the smaller) makes both "no difference".
    reference = [50.0, 51.0, 52.0, 53.0, 54.0]
    up = [r + d for r, d in zip(reference, [1.0, 3.0, 0.2, 2.5, 1.0])]
    report = report_of(tmp_path, records_of({"B": reference, "B+TE": up, "B|x": list(up)}))
    comparison = by_name(report)["B+TE"]["vs_reference"]
    assert comparison["p"] < 0.05 and comparison["verdict_unadjusted"] == "higher"
    assert comparison["p_holm"] >= 0.05 and comparison["verdict"] == "no difference"


def test_output_files(tmp_path):
    records = records_of(TOP1)
    report = report_of(tmp_path, records, spec_text="base: smoke\nrows:\n  B+TE: {}\n", mde=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forest.png", "report.json", "report.md", "runs.csv"]
    assert (tmp_path / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text()) == report
    with open(tmp_path / "runs.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(records) == 15
    assert lines[0]["folder"] == "runs/B/seed-0" and lines[0]["config_hash"] == "hash-B-0"
    assert float(lines[5]["top1"]) == TOP1["B+TE"][0] and lines[5]["status"] == "done"
    text = (tmp_path / "report.md").read_text()
    assert "Chance level: **10.00%** (10 classes)" in text
    assert "| B+TE | 5 | 55.64 |" in text  # the row name as given, its mean
    assert "| B\\|x |" in text  # a | in a name is escaped, not a column break
    assert "```yaml\nbase: smoke\nrows:\n  B+TE: {}\n```" in text
    assert "seeds for Δ=1" in text


def test_forest_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with caplog.at_level(logging.INFO, logger="taggnn"):
        report = report_of(tmp_path, records_of(TOP1))
    assert not (tmp_path / "forest.png").exists() and report["files"] == ["report.md", "report.json", "runs.csv"]
    assert "no forest.png" in caplog.text and "pip install 'taggnn[plot]'" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "runs.csv"]  # no temp files


def test_partial_study(tmp_path):
    records = records_of(TOP1)
    records = [r for r in records if not (r["row"] == "B|x" and r["seed"] in (3, 4))]  # no records: pending
    records = [r for r in records if not (r["row"] == "B+TE" and r["seed"] == 1)]
    records.append(record("B+TE", 1, status="failed", error="TrainingError: loss is nan at epoch 2"))
    records = [r if not (r["row"] == "B" and r["seed"] == 4) else record("B", 4, status="running") for r in records]
    report = report_of(tmp_path, records)
    assert report["counts"] == {"done": 11, "failed": 1, "running": 1, "pending": 2, "expected": 15}
    rows = by_name(report)
    assert rows["B"]["n"] == 4 and rows["B+TE"]["n"] == 4 and rows["B|x"]["n"] == 3
    assert rows["B+TE"]["counts"] == {"done": 4, "failed": 1, "running": 0, "pending": 0}
    # paired on the seeds both finished only
    assert rows["B+TE"]["vs_reference"]["seeds"] == [0, 2, 3]
    assert rows["B|x"]["vs_reference"]["seeds"] == [0, 1, 2]
    expected = ttest_rel([TOP1["B+TE"][i] for i in (0, 2, 3)], [TOP1["B"][i] for i in (0, 2, 3)]).pvalue
    assert rows["B+TE"]["vs_reference"]["p"] == pytest.approx(expected, rel=1e-9)
    assert any(w.startswith("partial study: 11 of 15 runs done (1 failed, 1 running, 2 pending)")
               for w in report["warnings"])
    text = (tmp_path / "report.md").read_text()
    assert "Runs: 11 of 15 done, 1 failed, 1 running, 2 pending." in text
    assert "- **B+TE** seed 1 (`runs/B+TE/seed-1`): TrainingError: loss is nan at epoch 2" in text
    with open(tmp_path / "runs.csv", newline="") as f:
        statuses = sorted(line["status"] for line in csv.DictReader(f))
    assert statuses.count("failed") == 1 and statuses.count("running") == 1 and len(statuses) == 13


def test_a_row_with_no_finished_run_or_one_seed(tmp_path):
    records = [r for r in records_of(TOP1) if r["row"] != "B|x" and not (r["row"] == "B+TE" and r["seed"] > 0)]
    report = report_of(tmp_path, records)
    rows = by_name(report)
    assert rows["B|x"]["n"] == 0 and rows["B|x"]["mean"] is None
    assert rows["B|x"]["vs_reference"]["verdict"] == "untested"
    assert rows["B+TE"]["n"] == 1 and rows["B+TE"]["ci_low"] is None and rows["B+TE"]["vs_reference"]["p"] is None
    assert rows["B+TE"]["vs_reference"]["mdd"] is None
    assert "one finished seed: no interval" in rows["B+TE"]["notes"]
    assert "no finished run" in rows["B|x"]["notes"]
    assert (tmp_path / "forest.png").exists()  # untested rows are labelled, not drawn


def test_a_study_of_the_reference_alone_or_without_it(tmp_path):
    report = report_of(tmp_path / "alone", records_of({"B": TOP1["B"]}), rows=["B"])
    assert report["rows"][0]["mean"] == pytest.approx(np.mean(TOP1["B"])) and report["warnings"] == []
    assert (tmp_path / "alone" / "forest.png").exists()
    report = report_of(tmp_path / "no-ref", [r for r in records_of(TOP1) if r["row"] != "B"])
    assert [entry["vs_reference"]["verdict"] for entry in report["rows"][1:]] == ["untested", "untested"]
    assert report["counts"]["pending"] == 5 and "no finished run" in report["rows"][0]["notes"]


def test_zero_variance_rows(tmp_path):
    table = {"B": list(TOP1["B"]), "B+TE": [v + 2.0 for v in TOP1["B"]], "B|x": list(TOP1["B"]),
             "flat": [40.0] * 5}
    report = report_of(tmp_path, records_of(table), rows=["B", "B+TE", "B|x", "flat"], mde=1.0)
    rows = by_name(report)
    same = rows["B|x"]["vs_reference"]
    assert same["mean"] == 0 and same["std"] == 0 and same["ci_low"] == same["ci_high"] == 0
    assert same["p"] == 1.0 and same["verdict"] == "no difference" and same["mdd"] == 0.0
    assert any("identical to 'B' on every paired seed" in note for note in rows["B|x"]["notes"])
    shifted = rows["B+TE"]["vs_reference"]
    assert shifted["mean"] == pytest.approx(2.0) and shifted["p"] == 0.0 and shifted["verdict"] == "higher"
    assert any("the same difference to 'B' on every paired seed" in note for note in rows["B+TE"]["notes"])
    assert rows["flat"]["std"] == 0 and rows["flat"]["ci_low"] == rows["flat"]["ci_high"] == 40.0
    assert any("all 5 seeds gave the same top1" in note for note in rows["flat"]["notes"])
    assert "all 5 seeds gave the same top1" in (tmp_path / "report.md").read_text()


def test_every_row_at_chance_is_a_warning(tmp_path, caplog):
    noise = {"B": [9.0, 12.0, 10.5, 8.0, 11.0], "B+TE": [10.0, 8.5, 12.5, 9.5, 11.0],
             "B|x": [11.0, 9.0, 10.0, 13.0, 8.0]}
    with caplog.at_level(logging.WARNING, logger="taggnn"):
        report = report_of(tmp_path, records_of(noise))
    assert all(entry["at_chance"] for entry in report["rows"])
    assert report["warnings"][0].startswith("every row's 95% interval includes chance (10.00%) or lies below it")
    assert "budget problem" in report["warnings"][0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"study report: {warning}" for warning in report["warnings"]]  # logged too: the command shows them
    text = (tmp_path / "report.md").read_text()
    assert "## Warnings" in text and "| B (ref) ⚠ not above chance |" in text
    # a row below chance on every seed is no better than guessing either
    report = report_of(tmp_path, records_of({**noise, "B+TE": [0.0] * 5}))
    assert by_name(report)["B+TE"]["at_chance"] and report["warnings"][0].startswith("every row's 95% interval")
    # one row clearly above chance: no study-wide warning (the rows at chance are still marked)
    noise["B+TE"] = [30.0, 31.0, 29.5, 30.5, 32.0]
    report = report_of(tmp_path, records_of(noise))
    assert report["warnings"] == [] and not by_name(report)["B+TE"]["at_chance"] and by_name(report)["B"]["at_chance"]


def test_accuracy_intervals_are_clipped_and_flagged(tmp_path):
    table = {"B": [99.0, 100.0, 96.0, 100.0, 98.0], "B+TE": [0.0, 2.0, 0.0, 5.0, 0.0], "B|x": [50.0] * 5}
    report = report_of(tmp_path, records_of(table))
    rows = by_name(report)
    assert rows["B"]["ci_high"] == 100.0 and rows["B"]["ci_clipped"]
    assert rows["B+TE"]["ci_low"] == 0.0 and rows["B+TE"]["ci_clipped"]
    assert not rows["B|x"]["ci_clipped"]
    text = (tmp_path / "report.md").read_text()
    assert ", 100.00]*" in text and "clipped there" in text


def test_refuses_a_bad_study_description(tmp_path):
    records = records_of(TOP1)
    with pytest.raises(ConfigError, match="metric must be one of top1, top5, mca; got 'top3'"):
        report_of(tmp_path, records, metric="top3")
    with pytest.raises(ConfigError, match="reference row 'A' is not one of"):
        report_of(tmp_path, records, reference="A")
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        report_of(tmp_path, records, num_classes=0)
    with pytest.raises(ConfigError, match="mde must be a positive number"):
        report_of(tmp_path, records, mde=-1)
    with pytest.raises(ValueError, match="two run records for row 'B' seed 0"):
        report_of(tmp_path, records + [records[0]])
    with pytest.raises(ValueError, match=r"row 'B' seed 0: top1 = 155.0 is not a percentage in \[0, 100\]"):
        report_of(tmp_path, [record("B", 0, 155.0)] + records[1:])
    assert list(tmp_path.iterdir()) == []  # nothing written before the checks pass


def test_write_study_report_from_a_description(tmp_path):
    from taggnn.study.report import study_num_classes, write_study_report

    description = {"rows": ["B", "B+TE", "B|x"], "reference": "B", "metric": "mca", "seeds": SEEDS, "select": "best",
                   "base": "smoke", "head_only": False, "spec": "base: smoke\n"}
    records = records_of(TOP1)
    written = write_study_report(records, description, tmp_path, mde=2.0)
    assert written == [tmp_path / name for name in ("report.md", "report.json", "runs.csv", "forest.png")]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["study"]["num_classes"] == 10 and report["study"]["metric"] == "mca"
    assert by_name(report)["B"]["mean"] == pytest.approx(np.mean(TOP1["B"]) - 5)  # the mca values
    # nothing finished and no class count anywhere: no chance level, no chance warning
    pending = [{**record("B", seed, status="pending"), "num_classes": None} for seed in SEEDS]
    assert study_num_classes(pending) is None
    report = write_report(tmp_path / "pending", pending, rows=["B"], reference="B", metric="top1", seeds=SEEDS,
                          num_classes=None, select="last", base="smoke")
    assert report["study"]["chance"] is None and report["rows"][0]["at_chance"] is None
    assert "Chance level: unknown" in (tmp_path / "pending" / "report.md").read_text()
    other = {**record("B|x", 0, 50.0), "num_classes": 20}
    with pytest.raises(ValueError, match=r"different numbers of classes \[10, 20\]"):
        study_num_classes(records[:-1] + [other])
    report = report_of(tmp_path / "mixed", records[:-1] + [{**record("B|x", 4, 50.0), "num_classes": 20}])
    assert "row 'B|x' seed 4 has 20 classes; the chance level is that of 10" in report["warnings"]


def test_a_dollar_in_a_row_name_is_plain_text_in_the_plot(tmp_path):
    name = "B+$\\nosuchcommand$"  # as math text this would not parse and the figure would fail
    report = report_of(tmp_path, records_of({"B": TOP1["B"], name: TOP1["B+TE"]}), rows=["B", name])
    assert (tmp_path / "forest.png").exists() and report["rows"][1]["name"] == name
