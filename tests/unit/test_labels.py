"""Image labels the pipeline writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.build.naming import folder_uri as _folder_uri


@pytest.mark.parametrize("folder", ["/srv/layers/python-3.13", "/srv/my layers/ü#1",
                                    "/srv/a%20b/c?d", "/", "/x~y_z.-/q", "/a/b'c\"d"])
def test_the_source_label_is_the_folder_as_a_file_uri(folder: str) -> None:
    """The unquoted fast path gives exactly what Path.as_uri gives."""
    assert _folder_uri(Path(folder)) == Path(folder).as_uri()
