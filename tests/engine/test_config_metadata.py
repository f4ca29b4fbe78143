"""The config's metadata is the one source of its ranges, choices, help and resume / features /
eval rules; the authors' setup is one table; one ``--set`` reader; renamed keys stay readable."""
import inspect
import logging
import re

import pytest
import torch

from taggnn.cli import main
from taggnn.engine import config as config_module
from taggnn.engine.config import (
    EVAL_KEYS,
    FEATURE_KEYS,
    RANGES,
    RESUMABLE_KEYS,
    Config,
    ConfigError,
    apply_override,
    config_fields,
    docs_table,
    flatten,
    load_config,
    valid_keys,
)

#: The authors' presets as resolved before the one table (values every one shares, then each one's).
AUTHORS_COMMON = {
    'data.crop_size': 112,
    'data.csv_layout': 'flat',
    'data.decode_threads': 0,
    'data.decoder': 'pyav',
    'data.features': None,
    'data.flip': True,
    'data.holdout': 0.0,
    'data.holdout_min_clips': 10,
    'data.normalization': 'slowfast',
    'data.num_workers': 8,
    'data.on_error': 'raise',
    'data.persistent_workers': False,
    'data.pin_memory': None,
    'data.prefetch_factor': 2,
    'data.root': None,
    'data.sampler': 'random',
    'data.sampling': 'linspace',
    'data.seed': 0,
    'data.short_side': None,
    'data.synth_long_tail': None,
    'data.synth_size': 64,
    'data.synth_task': 'fine',
    'data.synth_test': 640,
    'data.synth_train': 1600,
    'data.synth_val': 320,
    'data.test_csv': None,
    'data.train_csv': None,
    'data.train_sampling': 'linspace',
    'data.transform_style': 'authors',
    'data.val_csv': None,
    'data.val_split': 'val',
    'data.version': 'v1.1',
    'eval.average': 'prob',
    'eval.num_clips': 1,
    'eval.num_crops': 1,
    'model.K': 2,
    'model.alpha': 0.1,
    'model.backbone': 'r2plus1d_34',
    'model.backend': None,
    'model.bn_eps': 0.001,
    'model.bn_momentum': 0.9,
    'model.dropout': 0.5,
    'model.edge_weights': 'fixed',
    'model.embed_dim': None,
    'model.fast_cpu_dropout': True,
    'model.freeze_backbone': False,
    'model.graph_activation': 'relu',
    'model.graph_heads': 8,
    'model.graph_kwargs': {},
    'model.graph_residual': False,
    'model.graph_spatial': 'full',  # the edge families: the paper's graph by default
    'model.graph_temporal': 'aligned',
    'model.graph_dynamic': None,
    'model.graph_edge_attr': None,
    'model.head_dropout': 0.0,
    'model.intra': True,
    'model.layer_scale': None,
    'model.norm_first': False,
    'model.num_graph_layers': 2,
    'model.num_heads': 8,
    'model.num_layers': 2,
    'model.pos_init': 'normal',
    'model.pos_init_std': 1.0,
    'model.post_graph': 'none',
    'model.pre_classifier_norm': True,
    'model.propagation': 'appnp',
    'model.readout': 'mean',
    'model.temporal': True,
    'model.use_transformer': True,
    'model.weights': 'IG65M_CLIP32',
    'optim.accumulate': 1,
    'optim.backbone_lr_mult': 1.0,
    'optim.class_weights': 'none',
    'optim.grad_clip': None,
    'optim.label_smoothing': 0.0,
    'optim.lr': 1e-05,
    'optim.min_lr': 0.0,
    'optim.momentum': 0.9,
    'optim.no_decay_norm_bias': True,
    'optim.optimizer': 'adam',
    'optim.schedule_unit': 'epoch',
    'optim.scheduler': 'cosine',
    'optim.warmup_epochs': 0.0,
    'optim.weight_decay': 0.0,
    'train.amp': 'off',
    'train.batch_size': 8,
    'train.checkpoint_every_steps': 0,
    'train.compile': False,
    'train.deterministic': False,
    'train.device': 'auto',
    'train.eval_amp': 'off',
    'train.eval_batch_size': 16,
    'train.eval_every': 1,
    'train.export_backbone': False,
    'train.log_every': 10,
    'train.loggers': ['jsonl'],
    'train.max_steps': None,
    'train.mca': 'present',
    'train.seed': 42,
}
AUTHORS_OWN = {
    'gym99_authors': {'data.dataset': 'finegym', 'data.num_classes': 99, 'data.num_frames': 64,
                      'data.test_split': 'val', 'model.ffn_dim': 1024, 'train.epochs': 60, 'name': 'gym99_authors'},
    'gym288_authors': {'data.dataset': 'finegym', 'data.num_classes': 288, 'data.num_frames': 64,
                      'data.test_split': 'val', 'model.ffn_dim': 2048, 'train.epochs': 60, 'name': 'gym288_authors'},
    'haa500_authors': {'data.dataset': 'haa500', 'data.num_classes': 500, 'data.num_frames': 32,
                      'data.test_split': 'test', 'model.ffn_dim': 512, 'train.epochs': 80, 'name': 'haa500_authors'},
}

#: The keys that could change on resume before the metadata held them (engine/trainer.py's list).
OLD_RESUMABLE = {"train.epochs", "train.max_steps", "train.device", "data.num_workers", "train.log_every",
                 "train.checkpoint_every_steps", "train.eval_batch_size", "name", "optim.lr", "optim.grad_clip",
                 "eval.num_clips", "eval.num_crops", "eval.average", "train.eval_amp", "data.decode_threads",
                 "data.persistent_workers", "data.pin_memory", "data.prefetch_factor", "train.compile",
                 "train.loggers", "data.decoder"}


def test_every_key_has_help_and_every_list_is_read_from_the_metadata():
    from taggnn.engine.features import FEATURE_KEYS as features_keys
    from taggnn.engine.trainer import RESUMABLE_CHANGES

    keys = config_fields()
    assert sorted(keys) == valid_keys()
    assert all(f.metadata["help"].strip() for f in keys.values())
    assert set(RANGES) == {key for key, f in keys.items() if f.metadata["range"] is not None}
    assert RESUMABLE_CHANGES == set(RESUMABLE_KEYS) == OLD_RESUMABLE | {"data.keep_normalization"}
    assert sorted(features_keys) == sorted(FEATURE_KEYS)
    assert "data.num_frames" in FEATURE_KEYS and "train.seed" not in FEATURE_KEYS
    assert EVAL_KEYS == {key for key in keys if key.split(".")[0] in ("data", "train", "eval", "name")}
    table = docs_table()
    assert all(f"| `{key}` |" in table for key in keys)


def test_validate_checks_the_choices_of_the_metadata():
    with pytest.raises(ConfigError, match=r"data.on_error='sometimes' is not one of raise, skip"):
        load_config("synthgym_tiny", ["data.on_error=sometimes"])
    with pytest.raises(ConfigError, match=r"eval.num_crops=2 is not one of 1, 3"):
        load_config("synthgym_tiny", ["eval.num_crops=2"])
    with pytest.raises(ConfigError, match=r"data.normalization='imagenet2' is not one of ig65m, kinetics"):
        load_config("synthgym_tiny", ["data.normalization=imagenet2"])


def test_model_config_defaults_are_the_heads():
    """ModelConfig's defaults are TAGHead's, the paper's (8 heads, FFN 1024); presets keep their own."""
    from taggnn.engine.config import ModelConfig
    from taggnn.nn import TAGHead

    parameters = inspect.signature(TAGHead.__init__).parameters
    defaults = ModelConfig()
    shared = [name for name in parameters if hasattr(defaults, name) and name != "graph_kwargs"]
    assert len(shared) > 20
    assert {name: getattr(defaults, name) for name in shared} == {name: parameters[name].default for name in shared}
    assert (defaults.num_heads, defaults.ffn_dim) == (8, 1024)
    tiny = load_config("synthgym_tiny")
    assert (tiny.model.num_heads, tiny.model.ffn_dim) == (4, 256)


@pytest.mark.parametrize("preset", sorted(AUTHORS_OWN))
def test_authors_presets_resolve_as_before(preset):
    """The values recorded from the presets before they were read from the one table."""
    resolved = flatten(load_config(preset).to_dict())
    assert resolved.pop("data.keep_normalization", True) is True  # new key: their 0.45/0.225 on IG-65M, on purpose
    assert resolved == {**AUTHORS_COMMON, **AUTHORS_OWN[preset]}


def test_reference_model_and_setups_come_from_the_same_table():
    from taggnn.models.reference import AUTHORS_DATASETS, REFERENCE_SETUPS, authors_setup, reference_model

    assert {d: (s.file_name, s.num_classes, s.num_frames, s.ffn_dim, s.mean, s.std, s.crop_size)
            for d, s in REFERENCE_SETUPS.items()} == {
        "haa500": ("haa500_best.pth", 500, 32, 512, (0.45,) * 3, (0.225,) * 3, 112),
        "gym99": ("gym99_best.pth", 99, 64, 1024, (0.45,) * 3, (0.225,) * 3, 112),
        "gym288": ("gym288_last.pth", 288, 64, 2048, (0.45,) * 3, (0.225,) * 3, 112)}
    assert set(AUTHORS_DATASETS) == set(REFERENCE_SETUPS)
    model = reference_model("gym99")
    head = model.head
    values = authors_setup("gym99")
    layer = head.transformer.layers[0]
    assert layer.linear1.out_features == values["model.ffn_dim"] == 1024
    assert layer.self_attn.num_heads == 8 and layer.norm_first is False and head.classifier.out_features == 99
    assert all((m.eps, m.momentum) == (1e-3, 0.9) for m in model.backbone.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_normalization_must_fit_the_weights():
    with pytest.raises(ConfigError, match=r"data.normalization='slowfast' .* is not the normalisation "
                                          r"model.weights='IG65M_CLIP32' .*set data.normalization=ig65m"):
        load_config("gym99_r2plus1d34", ["data.normalization=slowfast"])
    kept = load_config("gym99_r2plus1d34", ["data.normalization=slowfast", "data.keep_normalization=true"])
    assert kept.data.normalization == "slowfast"
    values = kept.to_dict()
    values["data"].pop("keep_normalization")  # a checkpoint written before the check stays loadable
    assert Config.from_dict(values).data.normalization == "slowfast"


def test_an_empty_value_means_none_for_optional_keys_everywhere(tmp_path):
    from taggnn.engine.trainer import resume_config

    config = load_config("synthgym_tiny", ["model.weights=", "train.max_steps=", "data.synth_long_tail="])
    assert (config.model.weights, config.train.max_steps, config.data.synth_long_tail) == (None, None, None)
    with pytest.raises(ConfigError, match="train.epochs expects an integer, got ''"):
        load_config("synthgym_tiny", ["train.epochs="])
    saved = load_config("synthgym_tiny", ["train.max_steps=3"])
    path = tmp_path / "last.pt"
    torch.save({"model": {}, "config": saved.to_dict()}, path)
    resumed = resume_config(path, overrides=["train.max_steps=", "data.pin_memory="])
    assert resumed.train.max_steps is None and resumed.data.pin_memory is None
    with pytest.raises(ConfigError, match="train.epochs expects an integer, got ''"):
        resume_config(path, overrides=["train.epochs="])


def test_a_renamed_key_is_read_as_its_new_name(monkeypatch, caplog):
    monkeypatch.setitem(config_module.RENAMED_KEYS, "train.max_iterations", "train.max_steps")
    values = load_config("synthgym_tiny").to_dict()
    values["train"]["max_iterations"] = values["train"].pop("max_steps")
    values["train"]["max_iterations"] = 7  # a checkpoint's config written under the old name
    with caplog.at_level(logging.WARNING, logger="taggnn"):
        config = Config.from_dict(values, source="old.pt")
    assert config.train.max_steps == 7
    assert re.search(r"old.pt: config key 'train.max_iterations' is deprecated, read as 'train.max_steps'",
                     caplog.text)
    apply_override(config, "train.max_iterations=9")
    assert config.train.max_steps == 9
    with pytest.raises(ConfigError, match="unknown config key 'train.max_iterationz'"):
        apply_override(config, "train.max_iterationz=9")


def test_config_show_lists_every_key_with_value_default_and_help(capsys):
    assert main(["config", "show", "gym99_authors", "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(valid_keys()) <= set(lines)
    assert re.search(r"^model.ffn_dim\s+1024\s+1024\s+>= 1\s+feed-forward width", lines["model.ffn_dim"])
    assert re.search(r"^train.epochs\s+3\s+10\s+>= 1\s+resume eval\s+training epochs", lines["train.epochs"])
    assert re.search(r"^data.sampling\s+'linspace'\s+'uniform'\s+one of uniform, random, linspace\s+eval features",
                     lines["data.sampling"])
    assert main(["config", "table"]) == 0
    assert "| `model.num_heads` | `8` | >= 1 |" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "features", "predict", "profile"])
def test_help_names_config_show_in_clean_text(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "taggnn config show PRESET" in out and "--set KEY=VALUE" in out
    assert "::" not in out and "``" not in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Examples::" not in capsys.readouterr().out



def test_the_docs_table_is_current():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "taggnn" / "configs" / "KEYS.md"
    assert docs.read_text() == docs_table(), "regenerate it: taggnn config table > taggnn/configs/KEYS.md"


def test_feature_flags_of_the_config_agree_with_the_dataset_registry():
    """The features folder checks the registry's keys (taggnn.data cannot read the config's
    metadata); both must name the same settings, or a cache would be reused across a change."""
    from taggnn.data.registry import feature_keys
    from taggnn.engine.config import FEATURE_KEYS

    assert sorted(FEATURE_KEYS) == sorted(feature_keys())
