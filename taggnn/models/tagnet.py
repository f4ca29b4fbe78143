r"""TAGNet: a 3D backbone with TAG-Head on top."""
from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.features import read_info
from ..errors import CheckpointError, ConfigError
from ..nn import TAGHead
from . import hub
from .backbones import VideoBackbone, build_backbone
from .weights import PathLike, WeightsEntry, WeightsError, load_into


class Shareable(hub.PretrainedMixin, **hub.MIXIN_OPTIONS):
    r"""``save_pretrained(dir)`` / ``from_pretrained(dir_or_hub_id)`` / ``push_to_hub(repo_id)``
    of :class:`huggingface_hub.PyTorchModelHubMixin` (``hub`` extra) for taggnn's models.

    A saved model is ``model.safetensors`` + ``config.json`` + a model card ``README.md``
    (:mod:`taggnn.models.hub`). ``config.json`` is written from the model itself: its
    ``architecture`` (recorded by :func:`build_model`, :func:`build_head_only`,
    :func:`record_config` and ``from_pretrained``) and its ``pretrained_metadata`` (class names,
    preprocessing, dataset, metrics, training config; all optional). Without huggingface_hub,
    local folders still work with the ``safetensors`` package alone.
    """

    architecture: Optional[Dict[str, Any]]
    pretrained_metadata: Dict[str, Any]

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained_folder(self, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *, revision: Optional[str] = None,
                        cache_dir: Optional[Union[str, os.PathLike]] = None, force_download: bool = False,
                        local_files_only: bool = False, token: Optional[Union[str, bool]] = None, **model_kwargs):
        """The model saved in a folder, in its ``model.safetensors``, or in a Hub repository
        ``owner/name`` (downloaded with :func:`huggingface_hub.snapshot_download`), in eval mode.

        Args:
            pretrained_model_name_or_path: Folder, ``model.safetensors`` path or Hub id.
            revision, cache_dir, force_download, local_files_only, token: Hub download options.
            map_location (str, optional): Device of the returned model. (default: ``"cpu"``)
        """
        folder = hub.resolve_pretrained(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, local_files_only=local_files_only,
                                        token=token)
        return super().from_pretrained(str(folder), local_files_only=True, **model_kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download: bool = False,
                         local_files_only: bool = False, token=None, map_location: str = "cpu", **unused):
        for name in ("proxies", "resume_download"):  # download options of older huggingface_hub releases
            unused.pop(name, None)
        if unused:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected options {sorted(unused)}")
        model = load_pretrained(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                local_files_only=local_files_only, token=token, expected=cls)
        return model.to(map_location)

    def generate_model_card(self, *args, **kwargs):
        """The model card ``save_pretrained`` writes (a :class:`huggingface_hub.ModelCard`)."""
        from huggingface_hub import ModelCard

        return ModelCard(hub.model_card(pretrained_config(self)))


def _warn_forward_features(owner: str) -> None:
    warnings.warn(f"{owner}.forward_features is deprecated: it returns the pooled embedding (timm's forward_features "
                  f"returns the tokens); call forward_pooled, or model.head.forward_nodes for the tokens",
                  FutureWarning, stacklevel=3)


class TAGNet(nn.Module, Shareable):
    r"""Backbone + :class:`~taggnn.nn.TAGHead`: clips in, logits out.

    Args:
        backbone (VideoBackbone): Feature extractor, ``(B, 3, T, H, W)`` to
            ``(B, C, T', H', W')``.
        head (TAGHead): Head whose ``in_channels`` and ``grid`` match the
            backbone's output for the clip size used.
        freeze_backbone (bool, optional): Transfer-learning mode: the backbone
            gets no gradients and stays in eval mode (BatchNorm statistics
            frozen) even when the model is in training mode. (default: :obj:`False`)

    **Shapes:**
        - **input:** :math:`(B, 3, T, H, W)`
        - **output:** :math:`(B, \text{num\_classes})`

    Shared like the field's models (:class:`Shareable`): ``save_pretrained(dir)``,
    ``TAGNet.from_pretrained(dir_or_hub_id)``, ``push_to_hub(repo_id)``.
    """

    def __init__(self, backbone: VideoBackbone, head: TAGHead, *, freeze_backbone: bool = False):
        super().__init__()
        self.architecture: Optional[Dict[str, Any]] = None  # how to rebuild it: set by build_model
        self.pretrained_metadata: Dict[str, Any] = {}
        if head.in_channels != backbone.out_channels:
            raise ValueError(
                f"head.in_channels ({head.in_channels}) must equal backbone.out_channels "
                f"({backbone.out_channels})"
            )
        self.backbone = backbone
        self.head = head
        self.backbone_frozen = False
        self.freeze_backbone(freeze_backbone)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Switches between transfer learning (frozen) and fine-tuning."""
        self.backbone_frozen = bool(frozen)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> "TAGNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def _features(self, video: Tensor) -> Tensor:
        if self.backbone_frozen and not video.requires_grad:
            with torch.no_grad():  # nothing to differentiate: keep no activations
                return self.backbone(video)
        return self.backbone(video)

    def forward_backbone(self, video: Tensor) -> Tensor:
        """Backbone features ``(B, C, T', H', W')``."""
        return self._features(video)

    def forward_pooled(self, video: Tensor) -> Tensor:
        """The pooled clip embedding ``(B, C)`` after TAG-Head's refinement (what
        :meth:`classify` classifies)."""
        return self.head.forward_pooled(self._features(video))

    def forward_features(self, video: Tensor) -> Tensor:
        """Deprecated name of :meth:`forward_pooled` (timm's ``forward_features`` means the
        tokens before pooling: ``model.head.forward_nodes(model.forward_backbone(video))``)."""
        _warn_forward_features(type(self).__name__)
        return self.forward_pooled(video)

    def classify(self, pooled: Tensor) -> Tensor:
        """The classifier on the pooled embedding ``(B, C)`` -> logits (:meth:`TAGHead.classify`)."""
        return self.head.classify(pooled)

    def forward_head(self, pooled: Tensor) -> Tensor:
        """Deprecated name of :meth:`classify` (timm's ``forward_head`` pools tokens first)."""
        warnings.warn("forward_head is deprecated: call classify (it classifies the pooled embedding)", FutureWarning,
                      stacklevel=2)
        return self.head.classify(pooled)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self._features(video))

    def reset_classifier(self, num_classes: int) -> None:
        self.head.reset_classifier(num_classes)


def build_model(
    backbone: str = "r2plus1d_34",
    num_classes: int = 99,
    *,
    num_frames: int = 32,
    crop_size: Union[int, Tuple[int, int]] = 112,
    weights: Optional[Union[str, PathLike, WeightsEntry]] = None,
    freeze_backbone: bool = False,
    backbone_options: Optional[dict] = None,
    **head_options,
) -> TAGNet:
    """Builds backbone and head, sizing the head's token grid from the clip size.

    Args:
        backbone (str): A name from :func:`~taggnn.models.list_backbones`.
        num_classes (int): Output classes.
        num_frames (int): Frames per clip (32 for HAA500, 64 for FineGym).
        crop_size (int or (int, int)): Input crop (112 in the paper).
        weights (optional): Backbone weights (entry name, path or URL).
        freeze_backbone (bool): Transfer-learning mode.
        backbone_options (dict, optional): Builder options of the backbone.
        **head_options: :class:`~taggnn.nn.TAGHead` options (``ffn_dim``,
            ``intra``, ``temporal``, ``K``, ...).
    """
    height, width = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    feature_extractor = build_backbone(backbone, weights=weights, **(backbone_options or {}))
    grid = feature_extractor.feature_grid(num_frames, height, width)
    head = TAGHead(feature_extractor.out_channels, num_classes, grid, **head_options)
    model = TAGNet(feature_extractor, head, freeze_backbone=freeze_backbone)
    model.architecture = {
        "backbone": backbone, "backbone_options": dict(backbone_options or {}), "num_frames": num_frames,
        "crop_size": crop_size if isinstance(crop_size, int) else [height, width],
        "freeze_backbone": bool(freeze_backbone), "batchnorm": None, "in_channels": head.in_channels,
        "grid": list(grid), "head_options": dict(head_options),
    }
    return model


class HeadOnly(nn.Module, Shareable):
    r"""A :class:`~taggnn.nn.TAGHead` trained on cached backbone features: :class:`TAGNet`'s
    interface without the backbone (``forward_backbone`` is the identity).

    **Shapes:**
        - **input:** :math:`(B, C, T', H', W')` backbone features
        - **output:** :math:`(B, \text{num\_classes})`
    """

    def __init__(self, head: TAGHead):
        super().__init__()
        self.head = head
        self.architecture: Optional[Dict[str, Any]] = None  # how to rebuild it: set by build_head_only
        self.pretrained_metadata: Dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_backbone(self, features: Tensor) -> Tensor:
        return features

    def forward_pooled(self, features: Tensor) -> Tensor:
        """The pooled clip embedding ``(B, C)`` (what :meth:`classify` classifies)."""
        return self.head.forward_pooled(features)

    def forward_features(self, features: Tensor) -> Tensor:
        """Deprecated name of :meth:`forward_pooled`."""
        _warn_forward_features(type(self).__name__)
        return self.forward_pooled(features)

    def classify(self, pooled: Tensor) -> Tensor:
        """The classifier on the pooled embedding ``(B, C)`` -> logits (:meth:`TAGHead.classify`)."""
        return self.head.classify(pooled)

    def forward_head(self, pooled: Tensor) -> Tensor:
        """Deprecated name of :meth:`classify` (timm's ``forward_head`` pools tokens first)."""
        warnings.warn("forward_head is deprecated: call classify (it classifies the pooled embedding)", FutureWarning,
                      stacklevel=2)
        return self.head.classify(pooled)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)


def build_head_only(in_channels: int, num_classes: int, grid: Tuple[int, int, int], **head_options) -> HeadOnly:
    """A :class:`HeadOnly` model that records how it was built (so that ``save_pretrained`` can
    write it): the :class:`~taggnn.nn.TAGHead` of ``in_channels`` feature channels on ``grid``."""
    model = HeadOnly(TAGHead(in_channels, num_classes, tuple(grid), **head_options))
    model.architecture = {"in_channels": in_channels, "grid": list(grid), "head_options": dict(head_options)}
    return model


def head_options(model_config: Any) -> dict:
    """The :class:`~taggnn.nn.TAGHead` keyword options held by a ``ModelConfig``-like object:
    every field whose name is a keyword parameter of ``TAGHead`` (the head's signature is the
    one list of its options)."""
    parameters = inspect.signature(TAGHead.__init__).parameters
    names = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return {name: getattr(model_config, name) for name in names if hasattr(model_config, name)}


def build_model_from_config(config: Any, num_classes: int, *, load_weights: bool = True) -> TAGNet:
    """The model of a :class:`~taggnn.engine.config.Config`.

    ``load_weights=False`` builds the architecture without reading ``model.weights`` (for a
    checkpoint, which holds every weight itself).
    """
    m, d = config.model, config.data
    if d.features is not None:  # the head alone, on cached features
        info = read_info(d.features)
        return HeadOnly(TAGHead(info["channels"], num_classes, tuple(info["grid"]), **head_options(m)))
    model = build_model(
        m.backbone, num_classes, num_frames=d.num_frames, crop_size=d.crop_size,
        weights=m.weights if load_weights else None, freeze_backbone=m.freeze_backbone,
        **head_options(m),
    )
    for module in model.backbone.modules():  # e.g. the authors' IG-65M port: momentum 0.9, eps 1e-3
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if m.bn_momentum is not None:
                module.momentum = m.bn_momentum
            if m.bn_eps is not None:
                module.eps = m.bn_eps
    return model


# ------------------------------------------------------------------ sharing (model.safetensors + config.json)


def record_config(model: nn.Module, config: Any, *, class_names=None, metrics: Optional[Mapping[str, Any]] = None,
                  features: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Records on a model built by :func:`build_model_from_config` what ``save_pretrained`` writes
    into ``config.json``: its architecture (with the config's BatchNorm overrides), the
    preprocessing of ``config.data``, the dataset, the training config and, when given, the
    class names, the metrics (``{split: {name: value}}``) and the feature cache's settings of a
    head-only model. Returns the model."""
    m, d = config.model, config.data
    if isinstance(model, HeadOnly):
        model.architecture = {"in_channels": model.head.in_channels, "grid": list(model.head.grid),
                              "head_options": head_options(m)}
    elif isinstance(model, TAGNet):
        if model.architecture is not None:  # else save_pretrained says what is missing
            model.architecture = dict(model.architecture, batchnorm={"momentum": m.bn_momentum, "eps": m.bn_eps})
    else:
        raise ConfigError(f"record_config takes a TAGNet or HeadOnly model, got {type(model).__name__}")
    preprocessing = hub.preprocessing_info(num_frames=d.num_frames, crop_size=d.crop_size, short_side=d.short_side,
                                           transform_style=d.transform_style, normalization=d.normalization,
                                           sampling=d.sampling)
    if isinstance(model, HeadOnly):
        preprocessing["input"] = (f"backbone features (B, {model.head.in_channels}, "
                                  f"{', '.join(map(str, model.head.grid))}) of clips preprocessed as below")
    model.pretrained_metadata = {
        "class_names": list(class_names) if class_names is not None else None, "preprocessing": preprocessing,
        "dataset": d.dataset, "metrics": dict(metrics) if metrics else None,
        "features": dict(features) if features else None, "training_config": config.to_dict(),
    }
    return model


def pretrained_config(model: nn.Module) -> Dict[str, Any]:
    """The ``config.json`` of a :class:`TAGNet` or :class:`HeadOnly` (see :mod:`taggnn.models.hub`)."""
    if not isinstance(model, (TAGNet, HeadOnly)):
        raise ConfigError(f"only TAGNet and HeadOnly models can be shared, got {type(model).__name__}")
    if model.architecture is None:
        raise ConfigError(
            f"this {type(model).__name__} does not record how it was built, which config.json needs; make it with "
            f"build_model, build_model_from_config, build_head_only or from_pretrained")
    architecture = dict(model.architecture, in_channels=model.head.in_channels, grid=list(model.head.grid))
    meta = dict(model.pretrained_metadata or {})
    if meta.get("preprocessing") is None and isinstance(model, TAGNet):
        meta["preprocessing"] = hub.preprocessing_info(num_frames=architecture["num_frames"],
                                                       crop_size=architecture["crop_size"])
    return hub.make_config(model_type=type(model).__name__, num_classes=model.num_classes,
                           architecture=architecture, **{key: meta.get(key) for key in (
                               "class_names", "preprocessing", "dataset", "metrics", "features", "training_config")})


def save_pretrained_folder(model: nn.Module, folder: Union[str, os.PathLike]) -> Path:
    """Writes ``folder/model.safetensors``, ``config.json`` and the model card ``README.md``
    (needs only the ``safetensors`` package); returns the folder."""
    config = pretrained_config(model)
    return hub.write_folder(folder, model.state_dict(), config, card=hub.model_card(config))


def build_from_pretrained_config(config: Mapping[str, Any]) -> nn.Module:
    """The (randomly initialised) model a ``config.json`` describes."""
    arch, num_classes = config["architecture"], config["num_classes"]
    try:
        if config["model_type"] == "HeadOnly":
            model = build_head_only(arch["in_channels"], num_classes, tuple(arch["grid"]), **arch["head_options"])
        else:
            crop = arch["crop_size"] if isinstance(arch["crop_size"], int) else tuple(arch["crop_size"])
            model = build_model(arch["backbone"], num_classes, num_frames=arch["num_frames"], crop_size=crop,
                                freeze_backbone=arch["freeze_backbone"],
                                backbone_options=arch.get("backbone_options") or None, **arch["head_options"])
            batchnorm = arch.get("batchnorm") or {}
            for module in model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    if batchnorm.get("momentum") is not None:
                        module.momentum = batchnorm["momentum"]
                    if batchnorm.get("eps") is not None:
                        module.eps = batchnorm["eps"]
            model.architecture = dict(model.architecture, batchnorm=arch.get("batchnorm"))
            if tuple(arch["grid"]) != model.head.grid:  # saved after head.set_grid
                model.head.set_grid(tuple(arch["grid"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"config.json (taggnn {config.get('taggnn_version')}) describes a model this taggnn "
                              f"cannot build: {type(error).__name__}: {error}") from error
    return model


def load_pretrained(source: Union[str, os.PathLike], *, revision: Optional[str] = None,
                    cache_dir: Optional[Union[str, os.PathLike]] = None, force_download: bool = False,
                    local_files_only: bool = False, token: Optional[Union[str, bool]] = None,
                    expected: Optional[type] = None) -> nn.Module:
    """The :class:`TAGNet` or :class:`HeadOnly` (as its ``config.json`` says) of a shared model:
    a folder, its ``model.safetensors`` or a Hub id; in eval mode, on the CPU, with
    ``pretrained_metadata`` from ``config.json``. ``expected`` refuses the other kind."""
    folder = hub.resolve_pretrained(source, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                    local_files_only=local_files_only, token=token)
    config = hub.read_config(folder)
    kind = config["model_type"]
    if expected is not None and kind != expected.__name__:
        raise CheckpointError(
            f"{source} holds a {kind} model" + (" (a head trained on cached features, no backbone)"
                                                if kind == "HeadOnly" else "")
            + f", not a {expected.__name__}; load it with {kind}.from_pretrained or taggnn.models.load_pretrained")
    state = hub.read_weights(folder)
    model = build_from_pretrained_config(config)
    try:
        load_into(model, state, strict=True, what=f"{folder / hub.WEIGHTS_NAME}")
    except WeightsError as error:
        raise CheckpointError(f"{error}; the weights do not fit the model config.json describes") from error
    model.pretrained_metadata = {key: config.get(key) for key in (
        "class_names", "preprocessing", "dataset", "metrics", "features", "training_config")}
    return model.eval()
