"""The taggnn command.

Commands:

    train     train (and finally test) a model from a preset or YAML config and ``--set`` overrides
    eval      Top-1, Top-5, MCA, per-class CSV and confusion matrix of a checkpoint
    predict   labels with probabilities for video files
    profile   parameters, multiply-adds and latency of a config
    tsne      t-SNE of backbone vs TAG-Head features
    features  cache the backbone's token grids of every split for head-only training
    export    write a checkpoint as TorchScript, a torch.export program, ONNX or safetensors
    synth     SynthGym tools: write clips as mp4 + CSV
    config    every config key of a preset: value, default, range or choices, help
    graph     token-grid graph tools (draw)
    study     ablation studies: rows of overrides x seeds, each an ordinary run, resumable

Examples:

    taggnn train --config synthgym_tiny --out runs/demo
    taggnn train --config gym99_r2plus1d34 --set data.root=/data/finegym --set train.epochs=30
    torchrun --nproc_per_node=4 -m taggnn train --config haa500_r2plus1d34 --set data.root=/data/haa500
    taggnn eval --checkpoint runs/demo/best.pt --split test
    taggnn predict clip.mp4 --checkpoint runs/demo/best.pt --topk 5
    taggnn profile --config gym99_r2plus1d34
    taggnn tsne --checkpoint runs/demo/best.pt --split test
    taggnn features --config synthgym_frozen --out runs/features
    taggnn export --checkpoint runs/demo/best.pt --format onnx
    taggnn synth write data/synthgym --split train
    taggnn config show gym99_authors
    taggnn graph draw --grid 4 5 5 --out graph.png
    taggnn study run study.yaml --out runs/study
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import shlex
import stat
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .data import SkippedClip, synthgym
from .data.constants import NORMALIZATIONS, RESIZE_RATIOS
from .data.synthgym import build_parser as synth_parser
from .data.views import average_views
from .engine import features as feature_cache
from .engine.config import (
    DEVICE_NAMES,
    EVAL_KEYS,
    FEATURE_KEYS,
    RESUMABLE_KEYS,
    allowed_text,
    apply_override,
    check_overrides,
    config_fields,
    describe_keys,
    docs_table,
    field_default,
    flatten,
    is_device_name,
    list_presets,
    load_config,
    migrate_key,
    validate,
)
from .engine.data import build_dataset, video_files
from .engine.plots import save_tsne
from .engine.runfolder import MANIFEST_NAME, RunLock, forget_outputs, read_manifest, record_outputs
from .engine.trainer import (
    eval_autocast_dtype,
    evaluate,
    load_trained,
    resume_config,
    train,
    trained_config,
    write_evaluation,
)
from .errors import CheckpointError, ConfigError, TaggnnError, TrainingError
from .graph import SpatioTemporalGraph
from .models import REFERENCE_SETUPS, build_model_from_config, load_reference_checkpoint
from .models.complexity import profile_model
from .models.export import default_export_path, export_model
from .models.hub import SHARED_FILES, WEIGHTS_NAME, is_pretrained_source, looks_like_hub_id, require_safetensors
from .study.executors import LocalExecutor, cpu_count
from .study.ray_executor import RayExecutor
from .study.report import write_study_report
from .study.runner import RECORDS_FILE, read_study, run_study, spec_of_study, study_status
from .study.spec import load_spec
from .utils.outputs import OutputExistsError, atomic_output, check_output, same_path
from .utils.version import __version__

logger = logging.getLogger("taggnn")

DEFAULT_CONFIG = "synthgym_tiny"  # the preset of `taggnn train` without --config (and without --resume)


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line, like every other ``taggnn`` error (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _device(name: str):
    """The torch device of ``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``; a name that is not a device, or one this machine lacks, is a
    :class:`~taggnn.errors.ConfigError`."""
    if not is_device_name(name):
        raise ConfigError(f"--device {name!r} is not a device: use {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def _check_set_values(overrides: List[str]) -> None:
    """Refuses an unknown key or an unreadable value of ``--set``, naming the key, before any work
    (read by :func:`taggnn.engine.config.apply_override`, the one reader of ``--set``)."""
    check_overrides(overrides)


def cmd_train(args) -> int:
    config_arg = getattr(args, "config", None)  # no default in --help: it depends on --resume
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        if not resume.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
        # the checkpoint's own config; --config / --set may change only the resumable keys
        config = resume_config(resume, config=config_arg, overrides=args.overrides,
                               rerun_options=f" --out {shlex.quote(args.out)}" if args.out else "")
    else:
        config = load_config(config_arg or DEFAULT_CONFIG, args.overrides)
    if args.out:
        out = Path(args.out)
    elif resume is not None:
        out = resume.parent  # continue in the run's own folder
    else:
        out = Path("runs") / config.name
    inputs = [Path(config_arg)] if config_arg and Path(config_arg).is_file() else []
    try:
        summary = train(config, out, resume=resume, progress=not args.no_progress, overwrite=args.overwrite,
                        inputs=inputs)
    finally:
        if dist.is_available() and dist.is_initialized():  # launched by torchrun
            dist.destroy_process_group()
    if "test" in summary:
        test = summary["test"]
        skipped = f"  ({test['skipped']} unreadable clips skipped)" if test.get("skipped") else ""
        print(f"test top-1 {test['top1']:.4f}  top-5 {test['top5']:.4f}  "
              f"MCA ({test['mca_convention']}) {test['mca']:.4f}  clips {test['count']}{skipped}  [{out}]")
        print(f"(one run, train.seed={config.train.seed}: another seed gives another figure; compare settings over "
              f"several seeds with taggnn study)")
    elif "test_skipped" in summary:
        print(f"test not evaluated: {summary['test_skipped']}")
    return 0


def _overridden_config(checkpoint_path: Path, overrides: List[str]):
    """The checkpoint's (or shared model's) config with --set overrides (only the keys that may
    change at evaluation time, :data:`~taggnn.engine.config.EVAL_KEYS`), validated."""
    config = trained_config(checkpoint_path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key = migrate_key(item.split("=", 1)[0].strip(), source="--set")
        if key in config_fields() and key not in EVAL_KEYS:
            raise ConfigError(f"--set {key}: the model of a checkpoint cannot be changed at evaluation time (keys that "
                              f"may change: {describe_keys(EVAL_KEYS)})")
        apply_override(config, item)
    return validate(config)


def dump_target(path: Path) -> Path:
    """The file ``--dump`` writes: ``path`` itself, which must end in ``.npz`` or ``.csv``."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".npz"):
        raise ConfigError(f"--dump {path}: the scores are written as .npz (numpy) or .csv; give a file name ending "
                          f"in one of them, e.g. --dump {path.with_suffix('.npz').name}")
    return path


def dump_scores(path: Path, dataset, meter, scores, names, config, *, overwrite: bool = True) -> None:
    """Per-video scores (after view averaging), labels and paths as ``.npz`` or ``.csv``
    (written atomically; an existing file is refused unless ``overwrite``)."""
    skipped = set(meter.skipped)
    samples = [s for s in getattr(dataset, "samples", [])]
    paths = [p for p, _ in samples if p not in skipped] if samples else [str(i) for i in range(len(scores))]
    labels = [label for p, label in samples if p not in skipped] if samples else []
    if len(paths) != len(scores):
        raise ValueError(f"--dump: {len(scores)} scores for {len(paths)} videos (multi-process evaluation "
                         f"cannot dump; run it in one process)")
    target = dump_target(path)
    e = config.eval
    already = e.average == "prob" and e.num_clips * e.num_crops > 1  # averaged view probabilities
    probabilities = scores if already else scores.float().softmax(1)
    with atomic_output(target, overwrite=overwrite) as staged:
        if target.suffix.lower() == ".csv":
            with open(staged, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label", "predicted",
                                 *(names or [str(c) for c in range(scores.shape[1])])])
                for p, label, row in zip(paths, labels, probabilities.tolist()):
                    writer.writerow([p, label, int(np.argmax(row)), *(f"{v:.6g}" for v in row)])
        else:
            with open(staged, "wb") as f:  # a file object: numpy would add .npz to a name without it
                np.savez_compressed(f, probabilities=probabilities.numpy(), labels=np.array(labels),
                                    paths=np.array(paths), classes=np.array(names or []),
                                    views=np.array(f"{e.num_clips}x{e.num_crops} {e.average}"))
    print(f"dumped {len(paths)} videos' scores to {target}")


def results_tag(split: str, overrides: List[str], checkpoint: Optional[Path] = None) -> str:
    """File-name tag of an evaluation: the split, the evaluated checkpoint's name and the
    overrides when there are any (``test.best``, ``test.last``,
    ``test.best.data.num_frames=32``), so that ``taggnn eval`` never writes over the run's own
    ``metrics_test.json`` (written by training's final test) nor over the results of another
    checkpoint or other settings. A shared model (a folder ``best`` written by ``taggnn export
    --format safetensors``, its ``model.safetensors`` or a Hub id ``owner/best``) is tagged
    ``best-shared``, apart from the checkpoint ``best.pt`` beside it."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9=._-]+", "-", text)

    tag = split
    if checkpoint is not None:
        path = Path(checkpoint)
        if is_pretrained_source(checkpoint):
            name = path.parent.name if path.name == WEIGHTS_NAME else path.name
            if name.endswith(".safetensors"):
                name = name[: -len(".safetensors")]
            tag += "." + clean(name or "model") + "-shared"
        else:
            tag += "." + clean(path.stem)
    if overrides:
        tag += "." + "_".join(clean(item) for item in overrides)[:150]
    return tag


def _record_in_run_folder(out: Path, names: List[str]) -> List[str]:
    """Lists files a command is about to write into ``out`` in the run folder's manifest (when
    ``out`` is a run folder), so that ``taggnn train --overwrite`` of that folder removes them as
    taggnn's own; returns the names it added (see :func:`_forget_outputs`)."""
    if not (Path(out) / MANIFEST_NAME).is_file():
        return []
    before = set(read_manifest(Path(out)) or [])
    record_outputs(Path(out), names)
    return [name for name in names if name not in before]


def _forget_outputs(out: Path, names: List[str]) -> None:
    """Takes names :func:`_record_in_run_folder` added off the manifest again: the files a refused
    or failed export did not write (a file of that name already there is not taggnn's), or an ONNX
    model's ``.data`` file that was not needed."""
    if names:
        forget_outputs(Path(out), names)


def _evaluation_files(tag: str) -> List[str]:
    return [f"metrics_{tag}.json", f"per_class_{tag}.csv", f"confusion_{tag}.png", f"skipped_{tag}.txt"]


def _checkpoint_argument(source: str) -> Path:
    """``--checkpoint`` as a path, refused in one line when it names nothing usable: a path that
    does not exist (unless it looks like a Hub id ``owner/name``), or something that is neither a
    regular file nor a folder (a device, a pipe, a broken link)."""
    path = Path(source)
    if not os.path.lexists(path):
        if looks_like_hub_id(source):
            return path
        raise CheckpointError(f"--checkpoint {source}: no such file or folder; give a taggnn checkpoint "
                              f"(runs/NAME/best.pt), a shared model's folder or a Hub id owner/name")
    if path.is_file() or path.is_dir():
        return path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        kind = "a link to nothing"
    else:
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a special file")
    raise CheckpointError(f"--checkpoint {source} is not a regular file ({kind}); give a taggnn checkpoint "
                          f"(runs/NAME/best.pt), a shared model's folder or a Hub id owner/name")


def checkpoint_state(source: Path) -> dict:
    """What identifies the evaluated state of ``source``: for a file (or a shared folder's
    ``model.safetensors``) its size, modification time and the first 16 hex digits of its SHA-256;
    for a taggnn checkpoint also its ``epoch`` and ``step``; ``{}`` for a Hub id."""
    path = Path(source)
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        return {}
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    info = file.stat()
    state = {"file": str(file), "bytes": info.st_size, "mtime": info.st_mtime, "sha256": digest.hexdigest()[:16]}
    if file.suffix != ".safetensors":
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # already read (and refused, if it is no checkpoint) by load_trained
            checkpoint = None
        if isinstance(checkpoint, dict):
            state.update({key: checkpoint[key] for key in ("epoch", "step") if isinstance(checkpoint.get(key), int)})
    return state


def _claim_results(out: Path, tag: str, checkpoint: Path, overwrite: bool) -> None:
    """Refuses (unless ``overwrite``) to replace ``metrics_<tag>.json`` that holds the results of
    another checkpoint (e.g. another run's ``best.pt`` evaluated into the same ``--out``); the
    results of the same checkpoint with the same settings are refreshed."""
    metrics = out / f"metrics_{tag}.json"
    if metrics.exists() and not overwrite:
        try:
            recorded = json.loads(metrics.read_text()).get("checkpoint")
        except (ValueError, AttributeError):
            recorded = None
        if recorded is None or not same_path(recorded, checkpoint):
            source = f"the results of {recorded}" if recorded else "a file taggnn eval did not write"
            raise OutputExistsError(f"{metrics} holds {source}, not of {checkpoint}; pass --overwrite to replace "
                                    f"them, or choose another --out")


def cmd_eval_reference(args) -> int:
    """The authors' released checkpoint with their architecture and preprocessing."""
    if args.dataset not in REFERENCE_SETUPS:
        raise ConfigError(f"--reference needs --dataset, one of {', '.join(REFERENCE_SETUPS)}")
    if args.data_root is None:
        raise ConfigError("--reference needs --data-root (the FineGym / HAA500 root, or the video root of --csv)")
    reference = Path(args.reference)
    split = "test" if args.csv else args.split
    out = Path(args.out) if args.out else reference.parent
    tag = results_tag(f"reference_{args.dataset}_{split}", args.overrides, reference)
    _claim_results(out, tag, reference, args.overwrite)
    overrides = [f"data.root={args.data_root}", *args.overrides]
    if args.csv:  # their split CSV: <data-root>/<Class>/<FileName>
        overrides += ["data.dataset=csv", f"data.test_csv={args.csv}", "data.csv_layout=authors"]
    config = load_config(f"{args.dataset}_authors", overrides)
    config.model.weights = None
    device = _device(args.device)
    model, setup = load_reference_checkpoint(reference, args.dataset)
    dataset = build_dataset(config, split, train=False)
    meter = evaluate(model.to(device), dataset, batch_size=config.train.eval_batch_size, device=device,
                     num_classes=setup.num_classes, config=config, progress=not args.no_progress)  # float32
    (out / f"skipped_{tag}.txt").unlink(missing_ok=True)  # a previous evaluation's list; rewritten if any
    metrics = write_evaluation(out, split, meter, getattr(dataset, "classes", None), "present",
                               {"checkpoint": str(reference), "preprocessing": "authors",
                                "overrides": list(args.overrides)}, tag=tag)
    d = config.data
    short_side = d.short_side or round(d.crop_size * RESIZE_RATIOS[d.transform_style])
    mean, std = NORMALIZATIONS[d.normalization]
    print(f"{args.dataset} ({reference.name}, the authors' preprocessing: {d.num_frames} frames by {d.sampling}, "
          f"short side {short_side}, centre {d.crop_size}, mean/std {mean[0]:g}/{std[0]:g}, float32): "
          f"top-1 {metrics['top1']:.4f}  "
          f"MCA (classes present, their convention) {metrics['mca_present']:.4f}  clips {metrics['count']}"
          f"  -> {out}/metrics_{tag}.json")
    return 0


def _evaluate_into(args, checkpoint: Path, config, out: Path, tag: str, dump: Optional[Path]) -> dict:
    """Evaluates ``checkpoint`` and writes its results (and ``--dump``) into ``out``; returns the metrics."""
    state = checkpoint_state(checkpoint)
    device = _device(args.device)
    model, config, names = load_trained(checkpoint, device, config)
    dataset = build_dataset(config, args.split, train=False, classes=names, views=True)
    result = evaluate(model, dataset, batch_size=config.train.eval_batch_size, device=device,
                      num_classes=model.num_classes, amp_dtype=eval_autocast_dtype(config, device), config=config,
                      progress=not args.no_progress, collect_logits=dump is not None)
    meter, scores = result if dump is not None else (result, None)
    if dump is not None:
        _record_in_run_folder(dump.parent, [dump.name])
        dump_scores(dump, dataset, meter, scores, names, config, overwrite=args.overwrite)
    e = config.eval
    _record_in_run_folder(out, _evaluation_files(tag))
    (out / f"skipped_{tag}.txt").unlink(missing_ok=True)  # a previous evaluation's list; rewritten if any
    return write_evaluation(out, args.split, meter, names, config.train.mca,
                            {"checkpoint": str(checkpoint), "checkpoint_state": state,
                             "overrides": list(args.overrides),
                             "views": f"{e.num_clips}x{e.num_crops} ({e.average})"}, tag=tag)


def cmd_eval(args) -> int:
    if args.reference:
        return cmd_eval_reference(args)
    if not args.checkpoint:
        raise ConfigError("eval needs --checkpoint (a taggnn checkpoint) or --reference (an authors' .pth)")
    checkpoint = _checkpoint_argument(args.checkpoint)
    if not args.out and not os.path.lexists(checkpoint):  # a Hub id: no local folder for the results
        raise ConfigError(f"--checkpoint {args.checkpoint} is a Hub model: give --out DIR for the metrics files")
    out = Path(args.out) if args.out else checkpoint.parent
    tag = results_tag(args.split, args.overrides, checkpoint)
    dump = dump_target(args.dump) if args.dump else None
    if dump is not None:  # every output is checked before the evaluation starts
        check_output(dump, overwrite=args.overwrite, inputs=[checkpoint], what="--dump")
    config = _overridden_config(checkpoint, args.overrides)
    _claim_results(out, tag, checkpoint, args.overwrite)
    lock = RunLock(out)
    lock.error = lambda message: TrainingError(f"{message}; or write this evaluation's results elsewhere with "
                                               f"--out DIR")
    created = not out.exists()
    try:
        with lock:  # a run training in `out` (or another evaluation) never sees its results written meanwhile
            _claim_results(out, tag, checkpoint, args.overwrite)  # again: another evaluation may have written them
            metrics = _evaluate_into(args, checkpoint, config, out, tag, dump)
    except BaseException:
        if created:  # a folder the lock created and nothing was written into
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    skipped = f"  skipped {metrics['skipped']} unreadable (-> skipped_{tag}.txt)" if metrics["skipped"] else ""
    print(f"{args.split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
          f"MCA (present) {metrics['mca_present']:.4f}  MCA (union) {metrics['mca_union']:.4f}  "
          f"clips {metrics['count']}{skipped}  -> {out}/metrics_{tag}.json, per_class_{tag}.csv")
    return 0


def cmd_predict(args) -> int:
    device = _device(args.device)
    config = _overridden_config(Path(args.checkpoint), args.overrides)
    if config.data.features is not None:
        raise ConfigError(f"{args.checkpoint} holds a head trained on cached backbone features (data.features="
                          f"{config.data.features}): it has no backbone, so it cannot take videos; predict with a "
                          f"checkpoint trained on videos (without data.features)")
    model, config, names = load_trained(Path(args.checkpoint), device, config)
    e = config.eval
    videos = video_files(config, args.videos, names)  # the test split's decoding, sampling and views
    amp_dtype = eval_autocast_dtype(config, device)  # train.eval_amp, as in taggnn eval
    results = []
    for index, path in enumerate(args.videos):
        views, _ = videos[index]  # (V, 3, T, S, S)
        with torch.no_grad(), (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype
                               else contextlib.nullcontext()):
            logits = model(views.to(device)).float().unsqueeze(0)  # (1, V, C)
            probabilities = average_views(logits, e.average).softmax(1)[0] if e.average == "logits" \
                else average_views(logits, "prob")[0]
        top = probabilities.topk(min(args.topk, probabilities.numel()))
        predictions = [{"label": int(i), "name": names[int(i)] if names else str(int(i)), "probability": float(p)}
                       for p, i in zip(top.values, top.indices)]
        results.append({"video": str(path), "predictions": predictions})
        if not args.json:
            print(path)
            for item in predictions:
                print(f"  {item['probability']:.3f}  {item['name']} ({item['label']})")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_profile(args) -> int:
    if args.json:
        check_output(args.json, overwrite=args.overwrite, inputs=[args.config] if Path(args.config).is_file() else [],
                     what="--json")
    config = load_config(args.config, args.overrides)
    config.model.weights = None  # counting and timing need no pretrained weights
    model = build_model_from_config(config, config.data.num_classes)
    d = config.data
    result = profile_model(model, d.num_frames, d.crop_size, d.crop_size, device=_device(args.device),
                           measure_latency=not args.no_latency)
    p, m = result["params"], result["macs"]
    print(f"{config.model.backbone} + TAG-Head, clip {d.num_frames}x{d.crop_size}x{d.crop_size}, "
          f"token grid {'x'.join(map(str, result['grid']))}")
    print(f"{'part':<32}{'params':>14}{'GMACs':>10}{'ms/clip':>10}")
    latency = result.get("latency_ms", {})
    head_parts = [("projection", "projection"), ("positional table", "positional_table"),
                  ("transformer", "transformer"), ("graph refinement", "graph_refinement"),
                  ("post-graph FFN", "post_graph"), ("readout", "readout"), ("other", "other")]
    always = ("positional_table", "transformer", "graph_refinement")  # the paper's Table 5 rows
    for part, params, macs, ms in [
        ("backbone", p["backbone"], m["backbone"], latency.get("backbone")),
        # the parts of other head options (projection, post-graph FFN, readout) when they hold parameters
        *[(label, p.get(key, 0), None, None) for label, key in head_parts if key in always or p.get(key)],
        ("classifier", p["classifier"], None, None),
        ("head (all of the above)", p["total"] - p["backbone"], m["head"], latency.get("head")),
        ("total", p["total"], m["total"], latency.get("total")),
        ("head w/o classifier (Table 5)", p["head_without_classifier"], None, None),
        ("total w/o classifier (Table 5)", p["total_without_classifier"], None, None),
    ]:
        print(f"{part:<32}{params:>14,}{'' if macs is None else f'{macs / 1e9:.2f}':>10}"
              f"{'' if ms is None else f'{ms:.1f}':>10}")
    if args.json:
        with atomic_output(args.json, overwrite=args.overwrite) as staged:
            staged.write_text(json.dumps(result, indent=2))
    return 0


def cmd_tsne(args) -> int:
    from sklearn.manifold import TSNE

    figure = importlib.util.find_spec("matplotlib") is not None  # else the embeddings are written (.npz)
    out = Path(args.out) if figure else Path(args.out).with_suffix(".npz")
    check_output(out, overwrite=args.overwrite, inputs=args.checkpoint, what="tsne --out")  # before any work
    device = _device(args.device)
    panels, labels, names = {}, None, None
    for index, path in enumerate(args.checkpoint):
        model, config, names = load_trained(Path(path), device)
        dataset = build_dataset(config, args.split, train=False, classes=names)
        chosen = stratified_indices(getattr(dataset, "targets", None) or [dataset[i][1] for i in range(len(dataset))],
                                    args.max_clips, seed=args.seed)
        backbone_features, head_features, split_labels = [], [], []
        with torch.no_grad():
            for i in chosen:
                sample = dataset[i]
                if isinstance(sample, SkippedClip):  # an unreadable clip (on_error=skip)
                    continue
                clip, label = sample
                features = model.forward_backbone(clip.unsqueeze(0).to(device))
                backbone_features.append(features.mean(dim=(2, 3, 4)).cpu())  # transfer-learning view
                head_features.append(model.head.forward_pooled(features).cpu())
                split_labels.append(label)
        labels = np.array(split_labels)
        tag = Path(path).parent.name if len(args.checkpoint) > 1 else ""
        for title, features in [("backbone features (pooled)", backbone_features),
                                ("TAG-Head features", head_features)]:
            embedded = TSNE(n_components=2, init="pca", perplexity=max(1, min(30, len(features) - 1)),
                            random_state=0).fit_transform(torch.cat(features).numpy())
            panels[f"{title} {tag}".strip()] = embedded
    with atomic_output(out, overwrite=args.overwrite) as staged:
        if figure:
            save_tsne(panels, labels, staged, names, columns=2)
        else:
            np.savez(staged, labels=labels, **{k.replace(" ", "_"): v for k, v in panels.items()})
    print(f"wrote {out}" if figure else f"matplotlib not installed: wrote the embeddings to {out}")
    return 0


def cmd_features(args) -> int:
    config = load_config(args.config, args.overrides)
    if config.data.features is not None:
        raise ConfigError("data.features is set: features are extracted from videos, not from cached features")
    paths = feature_cache.extract_features(config, Path(args.out),
                                           checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                                           splits=args.split or None, device=_device(args.device),
                                           progress=not args.no_progress,
                                           dtype=torch.float32 if args.float32 else torch.float16)
    for split, path in paths.items():
        print(f"{split}: {path}")
    sets = "".join(f" --set {shlex.quote(item)}" for item in [*args.overrides, f"data.features={args.out}"])
    print(f"train the head alone on them: taggnn train --config {shlex.quote(args.config)}{sets}")
    return 0


def stratified_indices(labels: List[int], count: int, *, seed: int = 0) -> List[int]:
    """Up to ``count`` indices spread over the classes (round-robin over a seeded shuffle of each
    class), instead of the first ``count`` in file order."""
    rng = random.Random(seed)
    by_class = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    for members in by_class.values():
        rng.shuffle(members)
    chosen, depth = [], 0
    while len(chosen) < min(count, len(labels)):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < count:
                chosen.append(by_class[label][depth])
        depth += 1
    return sorted(chosen)


def cmd_export(args) -> int:
    checkpoint = _checkpoint_argument(args.checkpoint)
    out = Path(args.out) if args.out else default_export_path(checkpoint, args.format)
    if args.format == "safetensors":  # a folder to share: checked before any work

        require_safetensors()
        if args.frames or args.crop or args.static_batch:
            raise ConfigError("--frames/--crop/--static-batch do not apply to --format safetensors: the shared model "
                              "takes any batch and keeps the clip size it was trained with (adapt it after loading "
                              "with model.head.set_grid)")
        check_output(out, overwrite=args.overwrite, inputs=[checkpoint], what="export", folder_of=SHARED_FILES)
    else:
        check_output(out, overwrite=args.overwrite, inputs=[checkpoint], what="export")  # before any work
    model, config, _ = load_trained(checkpoint, torch.device("cpu"))
    d = config.data
    frames, crop = args.frames or d.num_frames, args.crop or d.crop_size
    if hasattr(model, "backbone"):
        grid = model.backbone.feature_grid(frames, crop, crop)
        if grid != model.head.grid:
            model.head.set_grid(grid)  # interpolates the positional table
        example = torch.randn(args.batch, 3, frames, crop, crop)
    else:  # a head trained on cached features: its input is the backbone's feature grid, not a clip
        if args.frames or args.crop:
            raise ConfigError(f"--frames/--crop do not apply to {checkpoint}: a head trained on cached features "
                              f"takes backbone features (batch, {model.head.in_channels}, "
                              f"{', '.join(map(str, model.head.grid))}), not clips; export it without them")
        example = torch.randn(args.batch, model.head.in_channels, *model.head.grid)
    # an export into a run folder is listed in its manifest, so `taggnn train --overwrite` removes it too
    added = _record_in_run_folder(out.parent, [out.name, *([f"{out.name}.data"] if args.format == "onnx" else [])])
    try:
        result = export_model(model, example, out, args.format, overwrite=args.overwrite,
                              dynamic_batch=not args.static_batch)
    except BaseException:  # nothing was written (the export is staged): a file of that name is not ours
        _forget_outputs(out.parent, added)
        raise
    _forget_outputs(out.parent, [name for name in added if Path(name).name not in
                                 {Path(f).name for f in result["files"]}])  # e.g. no ONNX .data file
    check = (f"max |exported - eager| = {result['max_abs_diff']:.1e}" if result["verified"]
             else "not verified (onnxruntime missing)")
    beside = [Path(name).name for name in result["files"][1:]]  # e.g. an ONNX model's weights over 2 GB
    names = result["metadata"].get("class_names")
    print(f"wrote {out}" + (f" and {', '.join(beside)} (its weights, to keep beside it)" if beside else "")
          + f" ({args.format}, input {_shape_text(result['metadata'].get('input_shape'), example)}); {check}; "
          + "metadata: "
          + (f"{len(names)} class names, " if names else "no class names, ") + "preprocessing")
    return 0


def _shape_text(shape, example) -> str:
    """``(batch, 3, 8, 112, 112)`` for a dynamic batch, else the example's shape."""
    shape = shape if shape else list(example.shape)
    return "(" + ", ".join(str(size) for size in shape) + ")"


def cmd_synth(args) -> int:
    synthgym.run(args)
    return 0


def cmd_config(args) -> int:

    if args.action == "table":
        print(docs_table(), end="")
        return 0
    print(format_config(load_config(args.preset, args.overrides)), end="")
    return 0


def format_config(config) -> str:
    """Every key of ``config`` with its value, default, range or choices, the stages it may change
    in (``resume``, ``eval``; ``features``: it changes cached features) and its help, one line each."""

    values = flatten(config.to_dict())
    rows = [("key", "value", "default", "allowed", "flags", "help")]
    for key, f in config_fields().items():
        info = f.metadata
        stages = " ".join(name for name, flag in (("resume", info["resumable"]), ("eval", info["eval"]),
                                                   ("features", info["features"])) if flag)
        rows.append((key, repr(values[key]), repr(field_default(f)), allowed_text(key) or "", stages, info["help"]))
    widths = [min(max(len(row[i]) for row in rows), limit) for i, limit in enumerate((28, 24, 16, 40, 22))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    legend = ("flags: resume = may change on --resume; eval = may change in taggnn eval/predict; "
              "features = part of the cached features' settings")
    return "\n".join([*lines, "", legend]) + "\n"


#: The options several subcommands share, declared once: ``flag -> add_argument`` keywords
#: (a subcommand may change some, e.g. the help of ``--out``).
FLAGS = {
    "--set": dict(dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                  help="override a config value, e.g. --set optim.lr=1e-4 (repeatable); an empty value "
                       "(--set data.root=) clears an optional key; `taggnn config show PRESET` lists every key"),
    "--device": dict(default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N or mps"),
    "--no-progress": dict(action="store_true", help="no progress bars"),
    "--overwrite": dict(action="store_true", help="replace an existing output"),
    "--split": dict(default="test", help="the split to use"),
    "--checkpoint": dict(help="a taggnn checkpoint (best.pt / last.pt), a shared model's folder (taggnn export "
                              "--format safetensors), its model.safetensors, or a Hub id owner/name"),
    "--config": dict(default=DEFAULT_CONFIG, help="preset name or YAML file (see `taggnn config show PRESET`)"),
    "--json": dict(action="store_true", help="print JSON"),
}


def _add(parser: argparse.ArgumentParser, *flags: str, **changes) -> None:
    """Adds the shared ``flags`` (:data:`FLAGS`); ``changes`` maps a flag's name without dashes
    (``no_progress``) to keywords replacing its defaults."""
    for flag in flags:
        parser.add_argument(flag, **{**FLAGS[flag], **changes.get(flag.lstrip("-").replace("-", "_"), {})})


def _keys_epilog(*, keys=None, what: str = "Config keys --set takes") -> str:
    """The help text's note on config keys, read from the config's metadata."""

    keys = describe_keys(keys if keys is not None else config_fields())
    return (f"{what}: {keys}. `taggnn config show PRESET` lists every key with its value in PRESET, its "
            f"default, range or choices and help.")


_EVAL_KEYS_NOTE = "Config keys --set may change (the model of the checkpoint stays)"


def _subparser(sub, name: str, help: str, *, epilog: Optional[str] = None, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          **kwargs)


def _train_parser(sub, presets: str) -> None:

    p = _subparser(sub, "train", "train (and finally test) a model",
                   epilog=_keys_epilog() + f" With --resume only these may change: {describe_keys(RESUMABLE_KEYS)}.")
    _add(p, "--config", config=dict(default=argparse.SUPPRESS,
                                    help=f"preset name ({presets}) or YAML file (default: {DEFAULT_CONFIG}; with "
                                         f"--resume: the checkpoint's own config)"))
    _add(p, "--set")
    p.add_argument("--resume", help="continue exactly from this last.pt, with its own config (--config/--set may "
                                    "change only the resumable keys), in its own folder or an --out without a run")
    p.add_argument("--out", help="run folder (default: the resumed run's folder, else runs/<config name>)")
    _add(p, "--overwrite", "--no-progress", overwrite=dict(
        help="start over in a folder that holds a previous run: the files its manifest (.taggnn-manifest.json) "
             "lists are removed, never the command's inputs or files it does not list"))
    p.set_defaults(func=cmd_train)


def _eval_parser(sub, presets: str) -> None:

    p = _subparser(sub, "eval", "Top-1, Top-5, MCA, per-class CSV and confusion matrix of a checkpoint",
                   epilog=_keys_epilog(keys=EVAL_KEYS, what=_EVAL_KEYS_NOTE))
    _add(p, "--checkpoint")
    p.add_argument("--reference", help="an authors' released checkpoint (haa500_best.pth, gym99_best.pth, "
                                       "gym288_last.pth) or a file their train.py wrote (best_model.pth, "
                                       "last_checkpoint.pth), evaluated with their architecture and preprocessing")
    p.add_argument("--dataset", choices=("haa500", "gym99", "gym288"), help="--reference: which release")
    p.add_argument("--data-root", help="--reference: the dataset root (or the video root of --csv)")
    p.add_argument("--csv", help="--reference: their split CSV (FileName,Class,TotalFrames,ClassEncoded; "
                                 "videos at <data-root>/<Class>/<FileName>)")
    _add(p, "--split", "--set")
    p.add_argument("--out", help="where to write the results (default: the checkpoint's folder): "
                                 "metrics_<split>.<checkpoint name>[.<overrides>].json, per_class_*.csv, "
                                 "confusion_*.png, e.g. metrics_test.last.json; the run's own "
                                 "metrics_<split>.json (training's final test) is never replaced")
    p.add_argument("--dump", help="also write per-video scores, labels and paths (.npz or .csv; an existing "
                                  "file only with --overwrite)")
    _add(p, "--overwrite", "--device", "--no-progress", overwrite=dict(
        help="replace an existing --dump file, or results in --out that another checkpoint wrote"))
    p.set_defaults(func=cmd_eval)


def _predict_parser(sub, presets: str) -> None:

    p = _subparser(sub, "predict", "labels with probabilities for video files",
                   epilog=_keys_epilog(keys=EVAL_KEYS, what=_EVAL_KEYS_NOTE))
    p.add_argument("videos", nargs="+")
    _add(p, "--checkpoint", checkpoint=dict(required=True))
    p.add_argument("--topk", type=int_at_least(1), default=5, help="the best classes shown")
    _add(p, "--set", "--json", "--device")
    p.set_defaults(func=cmd_predict)


def _profile_parser(sub, presets: str) -> None:
    p = _subparser(sub, "profile", "parameters, multiply-adds and latency of a config (Table 5)",
                   epilog=_keys_epilog())
    _add(p, "--config", config=dict(help=f"preset name ({presets}) or YAML file"))
    _add(p, "--set")
    p.add_argument("--no-latency", action="store_true")
    _add(p, "--json", "--overwrite", "--device",
         json=dict(action="store", help="also write the result here (an existing file only with --overwrite)"),
         overwrite=dict(help="replace an existing --json file"), device=dict(default="cpu"))
    p.set_defaults(func=cmd_profile)


def _tsne_parser(sub, presets: str) -> None:
    p = _subparser(sub, "tsne", "t-SNE of backbone vs TAG-Head features (PNG like the paper's Fig. 3)",
                   description="One row of two panels per --checkpoint: the backbone's pooled features "
                               "(left) and the TAG-Head embedding (right), coloured by class. For the "
                               "paper's Fig. 3 pass three checkpoints: transfer learning (frozen backbone + "
                               "B), fine-tuned B, and TAG-Head.")
    _add(p, "--checkpoint", checkpoint=dict(action="append", required=True,
                                            help="repeatable: one row of panels each"))
    _add(p, "--split")
    p.add_argument("--max-clips", type=int_at_least(2), default=400,
                   help="clips, sampled stratified over the classes (a t-SNE needs 2 or more)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified sample")
    p.add_argument("--out", default="tsne.png", help="the figure (an existing file only with --overwrite)")
    _add(p, "--overwrite", "--device", overwrite=dict(help="replace an existing --out file"))
    p.set_defaults(func=cmd_tsne)


def _features_parser(sub, presets: str) -> None:

    p = _subparser(sub, "features", "cache the backbone's token grids of every split for head-only training",
                   description="Writes <split>.pt files and their manifest info.json into --out. One folder "
                               "holds the features of one backbone (weights) and one set of data settings: "
                               "adding a split made otherwise is refused, a split already there is kept, and a "
                               "folder holding files the cache did not write is refused. A lock keeps two runs "
                               "out of one folder; an interrupted run leaves only complete splits listed.",
                   epilog=_keys_epilog() + f" The keys that determine the features: {describe_keys(FEATURE_KEYS)}.")
    _add(p, "--config", config=dict(help=f"preset name ({presets}) or YAML file"))
    _add(p, "--set")
    _add(p, "--checkpoint", checkpoint=dict(help="take the backbone of this taggnn checkpoint, at the config's clip "
                                                 "size (its backbone must be the config's model.backbone; default: "
                                                 "model.backbone with model.weights)"))
    p.add_argument("--out", required=True, help="folder for <split>.pt and info.json: new, empty, or a features "
                                                "folder of the same backbone and settings")
    _add(p, "--split", split=dict(action="append", default=None,
                                  help="only these splits (repeatable; default: train, val, test)"))
    p.add_argument("--float32", action="store_true", help="store float32 instead of float16")
    _add(p, "--device", "--no-progress")
    p.set_defaults(func=cmd_features)


def _export_parser(sub, presets: str) -> None:
    p = _subparser(sub, "export", "write a checkpoint as TorchScript, a torch.export program, ONNX, or a "
                                  "safetensors folder to share (model.safetensors + config.json + README.md)")
    _add(p, "--checkpoint", checkpoint=dict(required=True, help="a taggnn checkpoint (best.pt / last.pt)"))
    p.add_argument("--format", choices=("onnx", "torchscript", "exported-program", "safetensors"),
                   default="exported-program")
    p.add_argument("--frames", type=int_at_least(1), help="clip length of the exported model (default: the config's)")
    p.add_argument("--crop", type=int_at_least(1), help="crop size of the exported model (default: the config's)")
    p.add_argument("--batch", type=int_at_least(1), default=1,
                   help="batch size of the example the export is traced and checked on (the exported model takes "
                        "any batch size unless --static-batch)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the exported model's batch size to --batch (default: dynamic)")
    p.add_argument("--out", help="output file, a folder for safetensors (default: next to the checkpoint, "
                                 "<stem>.torchscript.pt, <stem>.pt2, <stem>.onnx or the folder <stem>, e.g. best.pt "
                                 "-> best.onnx; never a checkpoint's own name)")
    _add(p, "--overwrite", overwrite=dict(help="replace an existing output (the checkpoint itself is never "
                                               "replaced)"))
    p.set_defaults(func=cmd_export)


def _synth_parser(sub, presets: str) -> None:

    p = sub.add_parser("synth", help="SynthGym tools: write clips as mp4 + CSV",
                       description="Write SynthGym clips as mp4 files + a VideoCSV file.")
    synth_parser(parser=p)
    p.set_defaults(func=cmd_synth)


def _config_parser(sub, presets: str) -> None:
    p = sub.add_parser("config", help="every config key of a preset: value, default, range or choices, help",
                       description="`taggnn config show PRESET` lists every config key with its value in PRESET "
                                   "(after --set), its default, its range or choices, whether it may change on "
                                   "resume or at evaluation time, whether it changes cached features, and its "
                                   "help. `taggnn config table` prints the same for the defaults as a Markdown "
                                   "table.")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the keys of a preset or YAML file")
    show.add_argument("preset", nargs="?", default=DEFAULT_CONFIG, help=f"preset name ({presets}) or YAML file")
    _add(show, "--set")
    actions.add_parser("table", help="every key as a Markdown table (defaults)")
    p.set_defaults(func=cmd_config)


def cmd_graph_draw(args) -> int:

    T, H, W = args.grid
    graph = SpatioTemporalGraph(T, H, W, spatial=args.spatial, temporal=args.temporal, self_loops=args.self_loops)
    node = tuple(args.node) if args.node else None
    graph.draw(args.out, node=node, max_edges=args.max_edges)
    print(f"wrote {args.out}: {graph.num_nodes} nodes, {graph.num_edges} edges (spatial={graph.spatial}, "
          f"temporal={graph.temporal})")
    return 0


def _graph_parser(sub, presets) -> None:
    """``taggnn graph draw``: a picture of a token-grid graph."""
    graph = sub.add_parser("graph", help="token-grid graph tools (draw)",
                           description="Tools for the spatio-temporal token graph.")
    graph_sub = graph.add_subparsers(dest="graph_command", required=True)
    p = graph_sub.add_parser("draw", help="draw a graph's frames side by side, edges coloured by family",
                             description="Draw a T x H x W token graph: frames side by side, edges coloured by "
                                         "family; a large graph as one node's neighbourhood. Needs matplotlib.")
    p.add_argument("--spatial", default="full", help="full | grid4 | grid8 | radius:r[:chebyshev] | none "
                                                     "(default: full)")
    p.add_argument("--temporal", default="aligned", help="aligned | window:k[:d] | cube:r | full | none "
                                                         "(default: aligned)")
    p.add_argument("--grid", nargs=3, type=int_at_least(1), metavar=("T", "H", "W"), default=[4, 5, 5],
                   help="token grid (default: 4 5 5)")
    p.add_argument("--node", nargs=3, type=int_at_least(0), metavar=("t", "y", "x"),
                   help="draw only this node's edges (default: all edges of a small graph, else the centre node's)")
    p.add_argument("--max-edges", type=int_at_least(1), default=2000, help="largest graph drawn in full")
    p.add_argument("--self-loops", action="store_true", help="list self-loops (not drawn)")
    p.add_argument("--out", required=True, help="image file, e.g. g.png")
    p.set_defaults(func=cmd_graph_draw)




def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(list_presets())
    parser = _Parser(prog="taggnn", description=__doc__ + f"\nPresets (--config): {presets}\n",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub, presets)
    return parser


# ------------------------------------------------------------------------ taggnn study


def _study_parser(sub, presets) -> None:
    """``taggnn study run|status|report``."""
    p = sub.add_parser("study", help="ablation studies: rows of overrides x seeds, each an ordinary run, resumable",
                       description="Ablation studies. A study file (YAML) names a base config, overrides shared by "
                                   "every run, rows (Table 4's built in, or your own override sets) and seeds; "
                                   "every (row, seed) is a taggnn run folder under DIR/runs/<row>/seed-<k>/.")
    actions = p.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="run every (row, seed) not finished yet; again: skips finished runs, "
                                         "continues interrupted ones, retries failed ones")
    run.add_argument("spec", help="the study file (YAML)")
    run.add_argument("--out", required=True, help="the study folder")
    run.add_argument("--workers", type=int_at_least(1), default=None,
                     help="--executor local: worker processes (default: one per CUDA device, else one per CPU core)")
    run.add_argument("--threads", type=int_at_least(1), default=None,
                     help="torch threads per run (default: the CPU cores split evenly among the workers; with "
                          "--executor ray: 1, the CPUs each run reserves)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local (default): persistent worker processes on this machine; ray: Ray tasks on this "
                          "machine or a Ray cluster (pip install 'taggnn[ray]')")
    run.add_argument("--address", default=None, help="--executor ray: the cluster's address, e.g. auto or "
                                                     "ray://HOST:10001 (default: RAY_ADDRESS, else a Ray instance "
                                                     "started on this machine)")
    run.add_argument("--overwrite", action="store_true",
                     help="start over when DIR holds a study with other definitions (removes only what taggnn "
                          "wrote there)")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_study_run)
    status = actions.add_parser("status", help="done / running / failed / pending runs of a study folder")
    status.add_argument("dir", help="the study folder")
    status.add_argument("--json", action="store_true", help="the records as JSON")
    status.set_defaults(func=cmd_study_status)
    report = actions.add_parser("report", help="the study's report (tables, paired differences) from its runs")
    report.add_argument("dir", help="the study folder")
    for parser in (run, report):
        parser.add_argument("--mde", type=float, default=None, metavar="POINTS",
                            help="also say how many seeds would detect a true difference of POINTS (80%% power)")
    report.set_defaults(func=cmd_study_report)


def _study_executor(args):
    """The executor of ``taggnn study run``: local worker processes, or Ray tasks."""
    if args.executor == "ray":
        if args.workers is not None:
            raise ConfigError("--workers applies to --executor local only; Ray runs as many runs at once as the "
                              "cluster's CPUs (and GPUs) hold: set the CPUs each run reserves with --threads")
        return RayExecutor(address=args.address, num_cpus=args.threads or 1)
    if args.address is not None:
        raise ConfigError("--address applies to --executor ray only")

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = args.workers or gpus or cpu_count()
    threads = args.threads or max(1, cpu_count() // workers)
    devices = [f"cuda:{i}" for i in range(gpus)] if gpus else None
    return LocalExecutor(workers, threads=threads, devices=devices)


def _print_records(records, metric: str) -> None:

    rows = OrderedDict()
    for record in records:
        rows.setdefault(record["row"], []).append(record)
    print(f"{'row':<18} {'done':>4} {'run':>4} {'fail':>4} {'wait':>4}  mean {metric} (done runs)")
    for row, items in rows.items():
        count = {s: sum(r["status"] == s for r in items) for s in ("done", "running", "failed", "pending")}
        values = [r["metrics"][metric] for r in items if r["status"] == "done"]
        mean = f"{sum(values) / len(values):.2f}" if values else "-"
        print(f"{row:<18} {count['done']:>4} {count['running']:>4} {count['failed']:>4} {count['pending']:>4}  {mean}")
    for record in records:
        if record["status"] == "failed":
            print(f"failed: {record['folder']}: {record['error']}")


def _write_study_report(study: Path, records, mde: Optional[float] = None) -> List[Path]:
    """Writes the study's report (``report.md``, ``report.json``, ``runs.csv``, ``forest.png``),
    naming the rows the folder holds that this study file does not list."""
    recorded = read_study(study)
    return write_study_report(records, recorded["description"], study, mde=mde,
                              other_rows=list(recorded.get("definitions", {})))


def cmd_study_run(args) -> int:
    spec = load_spec(args.spec)  # every row's config is checked before any run starts
    executor = _study_executor(args)
    try:
        records = run_study(spec, Path(args.out), executor=executor, overwrite=args.overwrite,
                            progress=not args.no_progress)
    finally:
        executor.close()
    _print_records(records, spec.metric)
    written = _write_study_report(Path(args.out), records, args.mde)
    _print_seeds_needed(Path(args.out), args.mde)
    print(f"records: {Path(args.out) / RECORDS_FILE}; report: {', '.join(map(str, written))}")
    failed = [r for r in records if r["status"] != "done"]
    if failed:
        print(f"{len(failed)} of {len(records)} runs did not finish; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


def cmd_study_status(args) -> int:
    records = study_status(Path(args.dir))
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        _print_records(records, spec_of_study(Path(args.dir)).metric)
    return 0


def _print_seeds_needed(study: Path, mde: Optional[float]) -> None:
    """With ``--mde``: the seeds each row would need against the reference (from ``report.json``)."""
    if mde is None:
        return
    report = json.loads((study / "report.json").read_text())
    needed = [f"{entry['name']}: {entry['vs_reference']['seeds_for_mde'] or '-'}" for entry in report["rows"]
              if entry.get("vs_reference") is not None]
    power = report["study"]["power"]
    print(f"seeds to detect a true difference of {mde:g} points to {report['study']['reference']} with {power:.0%} "
          f"power: {', '.join(needed) if needed else '- (no row to compare)'}")


def cmd_study_report(args) -> int:
    study = Path(args.dir)
    records = study_status(study)
    written = _write_study_report(study, records, args.mde)
    _print_seeds_needed(study, args.mde)
    print("report: " + ", ".join(map(str, written)))
    return 0


#: The subcommands, in ``--help`` order: each a function ``(subparsers, presets)`` adding its parser.
SUBCOMMANDS = [_train_parser, _eval_parser, _predict_parser, _profile_parser, _tsne_parser, _features_parser,
               _export_parser, _synth_parser, _config_parser, _graph_parser,
               _study_parser]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            raise
        return exit_.code  # a bad command line, reported in one line
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    try:
        _check_set_values(getattr(args, "overrides", None) or [])
        if getattr(args, "device", None) is not None:
            _device(args.device)  # a bad --device is refused before any checkpoint or data is read
        return args.func(args)
    except (TaggnnError, OSError) as error:
        message = " ".join(str(error).split())  # one line
        print(f"taggnn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"taggnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
