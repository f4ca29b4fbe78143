"""A folder of links to exactly the installed distributions a wheel needs, and nothing else.

``make test-wheel`` installs the built wheel into a fresh venv whose only other packages are the
ones this folder links to (a path line in a ``.pth`` file). The wheel then runs on its declared
dependencies and theirs, taken from the project venv, instead of on a second copy of a multi-GB
CUDA torch: a dependency the code imports but ``pyproject.toml`` does not declare still fails, as
it would after ``pip install .`` on a fresh machine.

Run it with the project venv's python (the one the distributions are installed in)::

    .venv/bin/python .ci/dependency_view.py build/wheel/taggnn-0.1.0-py3-none-any.whl build/wheel-deps

The closure follows every ``Requires-Dist`` whose environment marker holds here, with no extras
except the ones a requirement names (``pkg[extra]``).
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors it; the project venv always has pip
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise SystemExit(f"{wheel}: expected one .dist-info/METADATA, found {names}")
        message = Parser().parsestr(archive.read(names[0]).decode())
    return message.get_all("Requires-Dist") or []


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))


def closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions the requirements need, by canonical name (transitively)."""
    found: dict[str, metadata.Distribution] = {}
    wanted_extras: dict[str, set[str]] = {}
    queue = [(Requirement(text), set()) for text in requirements]
    while queue:
        requirement, parent_extras = queue.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement} is required but not installed in {sys.prefix}") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{requirement} is required but {sys.prefix} has {dist.version}")
        new_extras = set(requirement.extras) - wanted_extras.get(name, set())
        if name in found and not new_extras:
            continue
        found[name] = dist
        wanted_extras.setdefault(name, set()).update(requirement.extras)
        extras = wanted_extras[name]
        queue.extend((Requirement(text), extras) for text in dist.requires or [])
    return found


def link_view(distributions: dict[str, metadata.Distribution], out: Path) -> int:
    """Link every top-level entry (package, module, .dist-info) of the distributions into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    linked = 0
    for dist in distributions.values():
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if Path(str(f)).parts[0] != ".."}
        for top in sorted(tops):
            source, target = site / top, out / top
            if target.exists() or not source.exists():
                continue  # a namespace folder two distributions share (nvidia/), or a file pip never wrote
            target.symlink_to(source, target_is_directory=source.is_dir())
            linked += 1
    return linked


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: dependency_view.py WHEEL OUT_DIR")
    wheel, out = Path(argv[0]), Path(argv[1])
    distributions = closure(_wheel_requirements(wheel))
    linked = link_view(distributions, out)
    print(f"{out}: {linked} links to {len(distributions)} distributions ({', '.join(sorted(distributions))})")


if __name__ == "__main__":
    main(sys.argv[1:])
