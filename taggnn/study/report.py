r"""The report of a study: each row's metric over seeds, and its paired difference to the reference.

:func:`write_report` reads the run records of a study (one per row and seed, see the runner) and
writes four files into the study folder, each atomically (temporary file, then rename):

- ``report.md``: the table a person reads, with what is needed to judge it: the chance level
  beside the metric, warnings (no row above chance, a partial study), notes on
  degenerate rows, the per-seed values, the failed runs and the study's spec;
- ``report.json``: the same numbers for programs (NaN written as ``null``);
- ``runs.csv``: one line per run with its status, folder, config hash and metrics;
- ``forest.png``: each row's paired difference to the reference with its interval, the Holm
  verdicts marked (needs matplotlib, the ``plot`` extra; without it the figure is skipped and a
  log line says so).

For each row: the mean, sample standard deviation and 95% Student-:math:`t` interval of the metric
over its finished seeds (clipped to :math:`[0, 100]`, and flagged when clipped). For each other
row: the per-seed differences to the reference on the seeds both finished (paired), their mean and
95% interval, the paired :math:`t`-test p-value, and Holm's adjusted p-value over all the rows
compared (:func:`~taggnn.analysis.stats.holm_adjust`): the verdict ``higher`` / ``lower`` holds at a
family-wise error rate of 5%. Since "no difference" is only as telling as the study's power, each
comparison also gives the minimum difference a two-sided 5% paired :math:`t`-test on these seeds
detects with 80% power given the observed spread of the differences, and (with ``mde``) how many
seeds would detect a difference of ``mde`` points
(:func:`~taggnn.analysis.stats.minimum_detectable_difference`,
:func:`~taggnn.analysis.stats.seeds_needed`). The intervals of the differences are per comparison
(not adjusted); the verdicts are.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..analysis.stats import (
    holm_adjust,
    minimum_detectable_difference,
    paired_difference,
    seeds_needed,
    summarize,
)
from ..errors import ConfigError
from ..utils.optional import install_hint
from ..utils.outputs import write_atomic, write_text_atomic

__all__ = ["METRICS", "write_report", "compute_report", "write_study_report", "study_num_classes"]

logger = logging.getLogger(__name__)

METRICS = ("top1", "top5", "mca")
"""The metrics a study can compare (percent, 0..100)."""

STATUSES = ("done", "failed", "running", "pending")

RUN_COLUMNS = ["row", "seed", "status", "folder", "config_hash", "top1", "top5", "mca", "wall_s", "error"]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def _clip(low: float, high: float, lower: float, upper: float):
    """``(low, high, clipped)``: the interval cut to ``[lower, upper]``, and whether it was."""
    if low != low:
        return low, high, False
    clipped = low < lower or high > upper
    return max(low, lower), min(high, upper), clipped


def _check_arguments(rows, reference, metric, seeds, num_classes, mde) -> None:
    if not rows:
        raise ConfigError("a study report needs at least one row; got none")
    if len(set(rows)) != len(rows):
        duplicated = sorted({row for row in rows if list(rows).count(row) > 1})
        raise ConfigError(f"study rows must have distinct names; {duplicated} appear more than once")
    if reference not in rows:
        raise ConfigError(f"the reference row {reference!r} is not one of the study's rows {list(rows)}")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if not seeds:
        raise ConfigError("a study report needs at least one seed; got none")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive integer (or None: unknown); got {num_classes!r}")
    if mde is not None and not (isinstance(mde, (int, float)) and math.isfinite(mde) and mde > 0):
        raise ConfigError(f"mde must be a positive number of points; got {mde!r}")


def compute_report(records: Sequence[Mapping[str, Any]], *, rows: Sequence[str], reference: str, metric: str,
                   seeds: Sequence[int], num_classes: Optional[int], select: str, base: str,
                   spec_text: Optional[str] = None, mde: Optional[float] = None, confidence: float = 0.95,
                   power: float = 0.8, other_rows: Sequence[str] = ()) -> Dict[str, Any]:
    """The report's numbers (what :func:`write_report` writes as ``report.json``, NaN kept as NaN).

    Args:
        records (list of dict): The run records (``row``, ``seed``, ``status``, ``folder``,
            ``config_hash``, ``metrics``, ``error``, ``wall_s``). Records of rows or seeds that are
            not in the study are listed in ``runs.csv`` but left out of the table. A (row, seed)
            without a record counts as pending.
        rows (list of str): The rows, in the order of the table (names as given).
        reference (str): The row the others are compared to.
        metric (str): ``"top1"``, ``"top5"`` or ``"mca"`` (percent).
        seeds (list of int): The study's seeds.
        num_classes (int, optional): The number of classes (chance level ``100 / num_classes``);
            ``None`` when unknown (no run finished): no chance level is given.
        select (str): Which checkpoint the metrics are of (``"last"`` or ``"best"``), for the reader.
        base (str): The base preset or config, for the reader.
        spec_text (str, optional): The study's spec, reproduced in the report.
        mde (float, optional): A difference in points: the report says how many seeds would
            detect it at 80% power.
        confidence (float): The level of the intervals; ``1 - confidence`` is the test level.
        power (float): The power of the minimum detectable difference and of ``mde``'s seeds.
        other_rows (list of str): Rows the study folder holds besides ``rows`` (from an earlier,
            wider study file): named in the report, not reported.
    """
    _check_arguments(rows, reference, metric, seeds, num_classes, mde)
    alpha = 1 - confidence
    chance = 100.0 / num_classes if num_classes is not None else float("nan")
    seeds = [int(seed) for seed in seeds]
    by_key: Dict[tuple, Mapping[str, Any]] = {}
    for record in records:
        key = (record["row"], int(record["seed"]))
        if key in by_key:
            raise ValueError(f"two run records for row {key[0]!r} seed {key[1]}")
        by_key[key] = record

    warnings: List[str] = []
    counts = {status: 0 for status in STATUSES}
    row_reports: List[Dict[str, Any]] = []
    failed_runs: List[Dict[str, Any]] = []
    for row in rows:
        values: Dict[int, float] = {}
        row_counts = {status: 0 for status in STATUSES}
        for seed in seeds:
            record = by_key.get((row, seed))
            status = record.get("status", "pending") if record is not None else "pending"
            if status not in STATUSES:
                raise ValueError(f"run record for row {row!r} seed {seed} has status {status!r}; "
                                 f"expected one of {', '.join(STATUSES)}")
            value = (record.get("metrics") or {}).get(metric) if status == "done" else None
            if status == "done" and (value is None or not math.isfinite(float(value))):
                status = "failed"
                warnings.append(f"row {row!r} seed {seed} is done but has no finite {metric!r} metric: "
                                "counted as failed")
            if status == "done" and num_classes is not None and record.get("num_classes") not in (None, num_classes):
                warnings.append(f"row {row!r} seed {seed} has {record['num_classes']} classes; the chance level "
                                f"is that of {num_classes}")
            if status == "done" and not 0.0 <= float(value) <= 100.0:
                raise ValueError(f"run record for row {row!r} seed {seed}: {metric} = {value!r} is not a percentage "
                                 "in [0, 100]")
            row_counts[status] += 1
            counts[status] += 1
            if status == "done":
                values[seed] = float(value)
            elif status == "failed":
                failed_runs.append({"row": row, "seed": seed, "folder": (record or {}).get("folder"),
                                    "error": (record or {}).get("error")})
        entry: Dict[str, Any] = {"name": row, "is_reference": row == reference, "counts": row_counts,
                                 "values": {str(seed): value for seed, value in values.items()}, "notes": []}
        if values:
            summary = summarize(list(values.values()), confidence)
            low, high, clipped = _clip(summary["ci_low"], summary["ci_high"], 0.0, 100.0)
            entry.update(n=summary["n"], mean=summary["mean"], std=summary["std"], ci_low=low, ci_high=high,
                         ci_clipped=clipped)
            # not above chance: the interval includes chance or lies below it (a row scoring 0 on
            # every seed is no better than guessing either)
            entry["at_chance"] = bool(low <= chance) if low == low and chance == chance else None
            if clipped:
                entry["notes"].append(f"its {confidence:.0%} interval reaches past [0, 100] and is clipped there")
            if summary["n"] >= 2 and summary["std"] == 0:
                entry["notes"].append(f"all {summary['n']} seeds gave the same {metric}: its interval is "
                                      "degenerate (width 0), not a certainty")
            if summary["n"] == 1:
                entry["notes"].append("one finished seed: no interval")
        else:
            entry.update(n=0, mean=float("nan"), std=float("nan"), ci_low=float("nan"), ci_high=float("nan"),
                         ci_clipped=False, at_chance=None)
            entry["notes"].append("no finished run")
        row_reports.append(entry)

    reference_values = {int(seed): value for seed, value in row_reports[list(rows).index(reference)]["values"].items()}
    compared = [entry for entry in row_reports if not entry["is_reference"]]
    for entry in compared:
        values = {int(seed): value for seed, value in entry["values"].items()}
        paired_seeds = [seed for seed in seeds if seed in values and seed in reference_values]
        comparison: Dict[str, Any] = {"seeds": paired_seeds, "n": len(paired_seeds)}
        if paired_seeds:
            differences = [values[seed] - reference_values[seed] for seed in paired_seeds]
            result = paired_difference([values[s] for s in paired_seeds], [reference_values[s] for s in paired_seeds],
                                       confidence)
            low, high, clipped = _clip(result["ci_low"], result["ci_high"], -100.0, 100.0)
            comparison.update(mean=result["mean"], std=result["std"], ci_low=low, ci_high=high, ci_clipped=clipped,
                              p=result["p"], verdict_unadjusted=result["verdict"])
            comparison["differences"] = {str(seed): d for seed, d in zip(paired_seeds, differences)}
            if len(paired_seeds) >= 2 and all(d == 0 for d in differences):
                entry["notes"].append(f"identical to {reference!r} on every paired seed (difference exactly 0): "
                                      "the interval of the difference is degenerate")
            elif len(paired_seeds) >= 2 and result["std"] == 0:
                entry["notes"].append(f"the same difference to {reference!r} on every paired seed: the interval is "
                                      "degenerate and p = 0 says nothing beyond these seeds")
            elif len(paired_seeds) == 1:
                entry["notes"].append(f"one seed paired with {reference!r}: no test")
        else:
            comparison.update(mean=float("nan"), std=float("nan"), ci_low=float("nan"), ci_high=float("nan"),
                              ci_clipped=False, p=float("nan"), verdict_unadjusted="untested", differences={})
            entry["notes"].append(f"no seed finished by both this row and {reference!r}: no comparison")
        comparison["mdd"] = minimum_detectable_difference(comparison["std"], comparison["n"], power, alpha)
        comparison["seeds_for_mde"] = (seeds_needed(mde, comparison["std"], power, alpha)
                                       if mde is not None else None)
        entry["vs_reference"] = comparison
    adjusted = holm_adjust([entry["vs_reference"]["p"] for entry in compared])
    for entry, p_holm in zip(compared, adjusted):
        comparison = entry["vs_reference"]
        comparison["p_holm"] = p_holm
        if p_holm != p_holm:
            comparison["verdict"] = "untested"
        elif p_holm < alpha:
            comparison["verdict"] = "higher" if comparison["mean"] > 0 else "lower"
        else:
            comparison["verdict"] = "no difference"

    known = [entry for entry in row_reports if entry["at_chance"] is not None]
    if known and all(entry["at_chance"] for entry in known):
        warnings.insert(0, f"every row's {confidence:.0%} interval includes chance ({chance:.2f}%) or lies below "
                           "it: the rows are no better than guessing, so this table cannot tell them apart. That is "
                           "a budget problem (too few epochs, clips or seeds), not a finding.")
    expected = len(rows) * len(seeds)
    if counts["done"] < expected:
        warnings.append(f"partial study: {counts['done']} of {expected} runs done ({counts['failed']} failed, "
                        f"{counts['running']} running, {counts['pending']} pending); the table uses the finished "
                        "runs only")
    return {
        "study": {"rows": list(rows), "reference": reference, "metric": metric, "seeds": seeds,
                  "num_classes": num_classes, "chance": chance, "select": select, "base": base,
                  "confidence": confidence, "power": power, "alpha": alpha, "mde": mde, "spec": spec_text,
                  "other_rows": [row for row in other_rows if row not in rows]},
        "counts": {**counts, "expected": expected},
        "rows": row_reports,
        "failed_runs": failed_runs,
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Optional[float], digits: int = 2, signed: bool = False) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval(low: float, high: float, clipped: bool, signed: bool = False) -> str:
    if low != low:
        return "—"
    return f"[{_number(low, signed=signed)}, {_number(high, signed=signed)}]" + ("*" if clipped else "")


def _p(value: float) -> str:
    if value != value:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _markdown(report: Dict[str, Any]) -> str:
    study = report["study"]
    metric, reference, chance = study["metric"], study["reference"], study["chance"]
    level = f"{study['confidence']:.0%}"
    counts = report["counts"]
    compared = len(study["rows"]) - 1
    lines = [
        f"# Study report: {metric}",
        "",
        f"- Metric: **{metric}** (%) of the `{study['select']}` checkpoint; base: `{_cell(study['base'])}`.",
        f"- Chance level: **{chance:.2f}%** ({study['num_classes']} classes)." if chance == chance else
        "- Chance level: unknown (the number of classes is not known: no run finished).",
        f"- Seeds: {', '.join(str(seed) for seed in study['seeds'])} ({len(study['seeds'])}).",
        f"- Runs: {counts['done']} of {counts['expected']} done, {counts['failed']} failed, {counts['running']} "
        f"running, {counts['pending']} pending."
        + (f" The folder also holds rows this study file does not list (not reported here): "
           f"{', '.join(_cell(row) for row in study['other_rows'])}." if study.get("other_rows") else ""),
        f"- Reference: **{_cell(reference)}**. Δ is row − reference on the seeds both finished (paired), with its "
        f"{level} Student-t interval (per comparison); p is the paired t-test's, p (Holm) adjusted over the "
        f"{compared} comparison{'s' if compared != 1 else ''}, and the verdict holds at a family-wise error rate "
        f"of {study['alpha']:.0%}.",
        f"- MDD: the smallest true difference a two-sided {study['alpha']:.0%} paired t-test on these seeds detects "
        f"with {study['power']:.0%} power, given the observed spread of the per-seed differences (a \"no "
        "difference\" verdict rules out little below it).",
    ]
    if any(entry["ci_clipped"] or entry.get("vs_reference", {}).get("ci_clipped") for entry in report["rows"]):
        lines.append("- `*`: the interval reaches past [0, 100] (accuracy) or [-100, 100] (difference) and is "
                     "clipped there.")
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- **{_cell(warning)}**" for warning in report["warnings"]]
    mde = study["mde"]
    header = ["row", "n", f"mean {metric}", "std", f"{level} CI", "Δ vs ref", f"{level} CI of Δ", "p", "p (Holm)",
              "verdict (Holm)", f"MDD ({study['power']:.0%})"]
    if mde is not None:
        header.append(f"seeds for Δ={mde:g}")
    lines += ["", "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in report["rows"]:
        name = _cell(entry["name"]) + (" (ref)" if entry["is_reference"] else "")
        if entry["at_chance"]:
            name += " ⚠ not above chance"
        cells = [name, str(entry["n"]), _number(entry["mean"]), _number(entry["std"]),
                 _interval(entry["ci_low"], entry["ci_high"], entry["ci_clipped"])]
        comparison = entry.get("vs_reference")
        if comparison is None:
            cells += ["—"] * (len(header) - len(cells))
        else:
            cells += [_number(comparison["mean"], signed=True),
                      _interval(comparison["ci_low"], comparison["ci_high"], comparison["ci_clipped"], signed=True),
                      _p(comparison["p"]), _p(comparison["p_holm"]), comparison["verdict"], _number(comparison["mdd"])]
            if mde is not None:
                needed = comparison["seeds_for_mde"]
                cells.append(str(needed) if needed is not None else "—")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [(entry["name"], note) for entry in report["rows"] for note in entry["notes"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{_cell(name)}**: {_cell(note)}" for name, note in notes]
    seeds = study["seeds"]
    lines += ["", f"## Per-seed {metric}", "", "| row | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
              "|" + "---|" * (len(seeds) + 1)]
    for entry in report["rows"]:
        lines.append("| " + _cell(entry["name"]) + " | "
                     + " | ".join(_number(entry["values"].get(str(seed))) for seed in seeds) + " |")
    if report["failed_runs"]:
        lines += ["", "## Failed runs", ""]
        for run in report["failed_runs"]:
            folder = f" (`{run['folder']}`)" if run["folder"] else ""
            lines.append(f"- **{_cell(run['row'])}** seed {run['seed']}{folder}: {_cell(run['error'] or 'no error')}")
    if study["spec"]:
        lines += ["", "## Spec", "", "```yaml", study["spec"].rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- other files


def _runs_csv(records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RUN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        metrics = record.get("metrics") or {}
        writer.writerow({"row": record["row"], "seed": record["seed"], "status": record.get("status", "pending"),
                         "folder": record.get("folder", ""), "config_hash": record.get("config_hash", ""),
                         **{name: metrics.get(name, "") for name in METRICS},
                         "wall_s": "" if record.get("wall_s") is None else f"{record['wall_s']:.1f}",
                         "error": record.get("error") or ""})
    return buffer.getvalue()


VERDICT_COLOURS = {"higher": "tab:green", "lower": "tab:red", "no difference": "tab:gray", "untested": "lightgray"}


def _forest_png(report: Dict[str, Any], path: Path) -> Optional[Path]:
    """The forest plot, or ``None`` (logged) when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib not installed: no forest.png (%s)", install_hint("plot"))
        return None
    study = report["study"]
    compared = [entry for entry in report["rows"] if not entry["is_reference"]]
    figure = Figure(figsize=(7, 1.2 + 0.45 * max(len(compared), 1)))
    axes = figure.subplots()
    for position, entry in enumerate(reversed(compared)):
        comparison = entry["vs_reference"]
        colour = VERDICT_COLOURS[comparison["verdict"]]
        mean = comparison["mean"]
        if mean == mean:
            low, high = comparison["ci_low"], comparison["ci_high"]
            if low == low:
                axes.plot([low, high], [position, position], color=colour, linewidth=2)
            significant = comparison["verdict"] in ("higher", "lower")
            axes.plot([mean], [position], marker="o", color=colour, markerfacecolor=colour if significant else "white",
                      markersize=7)
    axes.axvline(0.0, color="black", linewidth=0.8)
    # a $ in a row name is a dollar, not the start of matplotlib's math text
    axes.set_yticks(range(len(compared)), [f"{entry['name']} ({entry['vs_reference']['verdict']})".replace("$", r"\$")
                                           for entry in reversed(compared)])
    axes.set_ylim(-0.7, max(len(compared), 1) - 0.3)
    reference = study["reference"].replace("$", r"\$")
    axes.set_xlabel(f"Δ {study['metric']} vs {reference} (points, {study['confidence']:.0%} CI; "
                    "filled: Holm-significant)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return write_atomic(path, lambda f: f.write(buffer.getvalue()))


def write_report(study_dir: Union[str, Path], records: Sequence[Mapping[str, Any]], *, rows: Sequence[str],
                 reference: str, metric: str, seeds: Sequence[int], num_classes: Optional[int], select: str, base: str,
                 spec_text: Optional[str] = None, mde: Optional[float] = None, confidence: float = 0.95,
                 power: float = 0.8, other_rows: Sequence[str] = ()) -> Dict[str, Any]:
    """Writes ``report.md``, ``report.json``, ``runs.csv`` and (with matplotlib) ``forest.png`` into
    :obj:`study_dir`, each atomically, and returns the report (``report.json``'s content, NaN as
    ``None``). The arguments are :func:`compute_report`'s.

    Raises:
        ConfigError: An unknown metric or reference row, no rows or seeds, duplicate row names, a
            ``num_classes`` that is not a positive integer or an ``mde`` that is not positive.
        ValueError: Two records for the same row and seed, a record with an unknown status, or a
            metric outside [0, 100].
    """
    report = compute_report(records, rows=rows, reference=reference, metric=metric, seeds=seeds,
                            num_classes=num_classes, select=select, base=base, spec_text=spec_text, mde=mde,
                            confidence=confidence, power=power, other_rows=other_rows)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    files = ["report.md", "report.json", "runs.csv"]
    write_text_atomic(study_dir / "runs.csv", _runs_csv(records))
    write_text_atomic(study_dir / "report.md", _markdown(report))
    if _forest_png(report, study_dir / "forest.png") is not None:
        files.append("forest.png")
    report["files"] = files
    report = _nan_to_none(report)
    write_text_atomic(study_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    for warning in report["warnings"]:
        logger.warning("study report: %s", warning)
    logger.info("study report written to %s (%s)", study_dir, ", ".join(files))
    return report


def study_num_classes(records: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """The number of classes of a study's runs: that of its finished runs (the one their metrics
    were computed over), else the one the other records give (their configs'), else ``None``.

    Raises:
        ValueError: Finished runs disagree (rows of different datasets share no chance level).
    """
    for statuses in (("done",), ("failed", "running", "pending")):
        found = sorted({int(r["num_classes"]) for r in records
                        if r.get("status", "pending") in statuses and r.get("num_classes") is not None})
        if len(found) > 1 and statuses == ("done",):
            raise ValueError(f"the finished runs of the study have different numbers of classes {found}: "
                             "their accuracies share no chance level")
        if found:
            return found[0] if len(found) == 1 else None
    return None


def write_study_report(records: Sequence[Mapping[str, Any]], description: Mapping[str, Any],
                       study_dir: Union[str, Path], *, mde: Optional[float] = None,
                       other_rows: Sequence[str] = ()) -> List[Path]:
    """:func:`write_report` from a study's description (``rows``, ``reference``, ``metric``,
    ``seeds``, ``select``, ``base`` and ``spec``, the spec's text; ``num_classes`` when known,
    else :func:`study_num_classes` of the records) and the folder's ``other_rows``; returns the
    files written."""
    num_classes = description.get("num_classes")
    if num_classes is None:
        num_classes = study_num_classes(records)
    report = write_report(study_dir, records, rows=description["rows"], reference=description["reference"],
                          metric=description["metric"], seeds=description["seeds"], num_classes=num_classes,
                          select=description["select"], base=description["base"], spec_text=description.get("spec"),
                          mde=mde, other_rows=other_rows)
    return [Path(study_dir) / name for name in report["files"]]
