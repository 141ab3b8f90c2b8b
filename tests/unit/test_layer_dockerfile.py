"""Which Dockerfile a layer builds: ``dockerfile``, else its folder's, else (with
``context`` and none in the folder) the context's, as ``docker build`` and bake do;
and the ignore file the engines read beside that Dockerfile."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.catalog.context import read_context
from orchestrator.catalog.layers import load_catalog
from orchestrator.core.dockerignore import ENGINES
from orchestrator.core.errors import InputError
from orchestrator.core.model import UpstreamSpec

UPSTREAMS = {"alpine": UpstreamSpec(name="alpine", kind="registry",
                                    image="docker.io/library/alpine", tag="3.20")}


def tree(tmp_path: Path, layer_toml: str, files: dict[str, str]) -> Path:
    """``layers/curl/layer.toml`` and ``files`` (relative to tmp_path); returns layers/."""
    (tmp_path / "layers" / "curl").mkdir(parents=True)
    (tmp_path / "layers" / "curl" / "layer.toml").write_text(layer_toml)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path / "layers"


ADOPTED = 'from = "upstream:alpine"\ncontext = "../../src/curl"\n'


def test_a_context_without_a_dockerfile_setting_builds_the_contexts_dockerfile(
        tmp_path: Path) -> None:
    layers = tree(tmp_path, ADOPTED, {"src/curl/Dockerfile": "FROM alpine:3.20\nUSER 1\n"})
    layer = load_catalog(layers, UPSTREAMS).layers["curl"]
    assert layer.dockerfile == tmp_path / "src" / "curl" / "Dockerfile"
    assert layer.context == tmp_path / "src" / "curl"


def test_the_layer_folders_own_dockerfile_still_wins(tmp_path: Path) -> None:
    layers = tree(tmp_path, ADOPTED, {"src/curl/Dockerfile": "FROM alpine:3.20\n",
                                      "layers/curl/Dockerfile": "FROM alpine:3.20\nUSER 1\n"})
    layer = load_catalog(layers, UPSTREAMS).layers["curl"]
    assert layer.dockerfile == layers / "curl" / "Dockerfile"


def test_no_dockerfile_in_either_place_names_both_paths(tmp_path: Path) -> None:
    layers = tree(tmp_path, ADOPTED, {"src/curl/curl.sh": "echo\n"})
    with pytest.raises(InputError) as caught:
        load_catalog(layers, UPSTREAMS)
    message = str(caught.value)
    assert "layers/curl/layer.toml" in message
    assert "layers/curl/Dockerfile" in message and "src/curl/Dockerfile" in message
    assert 'dockerfile = "PATH"' in message
    # A dockerfile that is named and missing is that file's error, as before.
    (layers / "curl" / "layer.toml").write_text(ADOPTED + 'dockerfile = "../../x/Dockerfile"\n')
    with pytest.raises(InputError, match="x/Dockerfile: Dockerfile not found"):
        load_catalog(layers, UPSTREAMS)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_ignore_files_beside_the_contexts_dockerfile_apply(tmp_path: Path,
                                                               engine: str) -> None:
    # The engines read <Dockerfile>.dockerignore beside the Dockerfile first, then the
    # context's .dockerignore: with the Dockerfile in the context both are its files.
    layers = tree(tmp_path, ADOPTED, {
        "src/curl/Dockerfile": "FROM alpine:3.20\nCOPY . /src\nUSER 1\n",
        "src/curl/Dockerfile.dockerignore": "secret.txt\n",
        "src/curl/.dockerignore": "other.txt\n",
        "src/curl/secret.txt": "s\n",
        "src/curl/other.txt": "o\n",
    })
    layer = load_catalog(layers, UPSTREAMS).layers["curl"]
    ctx = read_context(layer, (engine,))
    names = {entry.path for entry in ctx.files}
    assert ctx.ignore_file == "Dockerfile.dockerignore"
    assert "secret.txt" not in names and "other.txt" in names
    (tmp_path / "src" / "curl" / "Dockerfile.dockerignore").unlink()
    ctx = read_context(layer, (engine,))
    names = {entry.path for entry in ctx.files}
    assert ctx.ignore_file == ".dockerignore"
    assert "secret.txt" in names and "other.txt" not in names
