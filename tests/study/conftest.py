import pytest

from taggnn.study import LocalExecutor, parse_spec, run_study

from .helpers import spec_text


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny study (:func:`tests.study.helpers.spec_text`), run once by two workers with one
    torch thread each: ``(folder, records)``. Tests that change a study work on a copy
    (:func:`tests.study.helpers.copy_study`)."""
    out = tmp_path_factory.mktemp("study") / "study"
    with LocalExecutor(2, threads=1) as executor:
        records = run_study(parse_spec(spec_text()), out, executor=executor, progress=False)
    return out, records
