"""The installed taggnn's version number (``taggnn.__version__``)."""
import importlib.metadata


def installed_version() -> str:
    """The version recorded when taggnn was installed (the one place the number is written is
    pyproject.toml), or ``"0+unknown"`` for a source tree that was never installed."""
    try:
        return importlib.metadata.version("taggnn")
    except importlib.metadata.PackageNotFoundError:  # e.g. on PYTHONPATH only
        return "0+unknown"


__version__ = installed_version()
