"""Packaging: one version source, `taggnn --version`, declared floors in step with CI, and a
one-line error naming the extra to install when an optional package is missing."""
import importlib
import importlib.metadata
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch

import taggnn
from taggnn.cli import main
from taggnn.errors import MissingExtraError, TaggnnError
from taggnn.utils.optional import install_hint, require, require_torch_sparse

from .engine.test_trainer import SMALL

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _project_version() -> str:
    project = PYPROJECT.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE).group(1)


def _dependencies():
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", PYPROJECT, re.MULTILINE | re.DOTALL).group(1)
    return re.findall(r'^\s*"([^"]+)"', block, re.MULTILINE)


# ---------------------------------------------------------------- version


def test_version_is_written_once_and_read_from_the_metadata():
    number = _project_version()
    assert taggnn.__version__ == importlib.metadata.version("taggnn") == number
    for path in Path(taggnn.__file__).parent.rglob("*.py"):
        assert not re.search(r"__version__\s*=\s*['\"]\d+\.\d+", path.read_text()), f"{path} writes a version"


def test_version_of_a_source_tree_that_was_never_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    try:
        assert importlib.reload(taggnn).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(taggnn)
    assert taggnn.__version__ == _project_version()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"taggnn {_project_version()}\n"


# ---------------------------------------------------------------- declared dependencies


def test_floors_are_the_ones_ci_installs_and_there_are_no_caps():
    """make test-min installs MIN_SPEC and runs tests/graph and tests/nn: it must pin exactly
    the floors pyproject.toml declares, or a false floor would pass CI."""
    from packaging.version import Version

    requirements = _dependencies()
    assert not [r for r in requirements if "<" in r or "!=" in r], "no upper caps on dependencies"
    floors = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", r).groups() for r in requirements if ">=" in r)
    spec = re.search(r"^MIN_SPEC \?= (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    pins = dict(item.split("==") for item in spec.split())
    assert set(pins) == {"torch", "torchvision", "torch-geometric"}
    for name, pinned in pins.items():
        assert Version(pinned) == Version(floors[name]), f"MIN_SPEC: {name}=={pinned}, pyproject: >={floors[name]}"


def test_license_and_typing_marker_are_package_data():
    assert re.search(r'^license = "MIT"$', PYPROJECT, re.MULTILINE)
    assert re.search(r'^license-files = \["LICENSE"\]$', PYPROJECT, re.MULTILINE)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "taggnn" / "py.typed").is_file()
    assert re.search(r'^taggnn = \[.*"py.typed".*\]$', PYPROJECT, re.MULTILINE)


# ---------------------------------------------------------------- missing optional extras


def test_missing_extra_error_is_a_taggnn_error_and_an_import_error():
    error = MissingExtraError("x needs y: pip install 'taggnn[plot]'", extra="plot")
    assert isinstance(error, TaggnnError) and isinstance(error, ImportError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.extra) == (MissingExtraError, str(error), "plot")


@pytest.mark.parametrize("extra", ["export", "zoo", "plot"])
def test_require_names_the_extra(monkeypatch, extra):
    monkeypatch.setitem(sys.modules, "some_optional_package", None)
    with pytest.raises(MissingExtraError) as info:
        require("some_optional_package.sub", extra=extra, feature="the feature")
    message = str(info.value)
    assert info.value.extra == extra and "\n" not in message
    assert message.startswith(f"the feature needs some_optional_package: pip install 'taggnn[{extra}]' (")


@pytest.fixture
def optional_package(tmp_path, monkeypatch):
    """An importable package ``optional_pkg`` with a submodule ``child``, removed afterwards."""
    package = tmp_path / "optional_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "child.py").write_text("VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "optional_pkg"
    for name in ("optional_pkg.child", "optional_pkg"):
        sys.modules.pop(name, None)


def test_require_returns_the_module(optional_package):
    assert require(f"{optional_package}.child", extra="zoo", feature="f").VALUE == 3


def test_require_refuses_a_blocked_parent_even_when_the_child_was_imported(optional_package, monkeypatch):
    """As ``from pytorchvideo.models import hub`` does: a parent set to None in sys.modules means
    missing, even when the submodule is already imported."""
    require(f"{optional_package}.child", extra="zoo", feature="f")
    monkeypatch.setitem(sys.modules, optional_package, None)
    with pytest.raises(MissingExtraError, match=r"^f needs optional_pkg: pip install 'taggnn\[zoo\]'"):
        require(f"{optional_package}.child", extra="zoo", feature="f")


def test_ext_hint_says_no_build_isolation(monkeypatch):
    monkeypatch.setattr("taggnn.utils.optional.has_torch_sparse", lambda: False)
    with pytest.raises(MissingExtraError) as info:
        require_torch_sparse("backend='sparse_tensor'")
    assert info.value.extra == "ext"
    assert "pip install --no-build-isolation torch-scatter torch-sparse" in str(info.value)
    assert install_hint("ext") in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny model as taggnn writes it, without training (export needs no accuracy)."""
    from taggnn.engine import load_config
    from taggnn.engine.checkpoint import save_checkpoint
    from taggnn.models.tagnet import build_model_from_config

    config = load_config("synthgym_tiny", SMALL)
    torch.manual_seed(0)
    model = build_model_from_config(config, 16, load_weights=False)
    path = tmp_path_factory.mktemp("untrained") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(), "num_classes": 16,
                           "classes": None})
    return path


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_export_to_onnx_without_the_export_extra(untrained_checkpoint, tmp_path, monkeypatch, capsys, missing):
    import importlib.util

    # the first of the two the exporter needs that cannot be imported here is named
    named = next(m for m in ("onnx", "onnxscript") if m == missing or importlib.util.find_spec(m) is None)
    monkeypatch.setitem(sys.modules, missing, None)
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(untrained_checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith(f"taggnn export: error: exporting to ONNX needs {named}: pip install 'taggnn[export]'")
    assert not out.exists()


def test_zoo_backbone_without_pytorchvideo(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytorchvideo", None)
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", "model.backbone=x3d_s"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("taggnn train: error: ")
    assert "backbone 'x3d_s' needs pytorchvideo: pip install 'taggnn[zoo]'" in error


def test_sparse_tensor_backend_without_the_ext_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("taggnn.utils.optional.has_torch_sparse", lambda: False)
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", "model.backend=sparse_tensor"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("taggnn train: error: ")
    assert ("backend='sparse_tensor' needs torch-sparse, which is not importable here; pip install "
            "--no-build-isolation torch-scatter torch-sparse") in error


# ------------------------------------------------- make test-wheel's dependency view
def _dependency_view():
    spec = importlib.util.spec_from_file_location("dependency_view", ROOT / ".ci" / "dependency_view.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dependency_view_holds_the_declared_closure_and_nothing_else(tmp_path):
    """make test-wheel runs the wheel on links to its declared dependencies (and theirs) only: the
    closure follows requirements with their markers and named extras, never the optional extras."""
    view = _dependency_view()
    found = view.closure(_dependencies())
    for name in ("torch", "torch-geometric", "av", "scikit-learn", "numpy", "tqdm", "pyyaml", "scipy"):
        assert name in found, name  # declared, or needed by a declared one (scikit-learn -> scipy)
    for name in ("matplotlib", "pytest", "onnx", "ray", "safetensors"):  # extras only
        assert name not in found, name
    assert set(view.closure(["pyyaml"])) == {"pyyaml"}
    assert view.link_view(view.closure(["pyyaml", "tqdm"]), tmp_path / "view") >= 2
    assert (tmp_path / "view" / "yaml").is_symlink() and (tmp_path / "view" / "tqdm").is_symlink()
    infos = [p.name.lower() for p in (tmp_path / "view").iterdir() if p.name.endswith(".dist-info")]
    assert len(infos) == 2 and any(n.startswith("pyyaml-") for n in infos) and any(n.startswith("tqdm-") for n in infos)
    with pytest.raises(SystemExit, match="not installed"):
        view.closure(["surely-not-a-distribution-name"])
    with pytest.raises(SystemExit, match="is required but .* has"):
        view.closure(["pyyaml<1"])
