"""The tiny-build cache: a run's ``<out>/models`` copied from it holds the bytes the run would have built."""

import hashlib
from pathlib import Path

import pytest

from facefoundry.config import load_config
from facefoundry.generators.registry import spec_of
from facefoundry.pipelines import tinycache

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["smoke.yaml", "smoke-vec2face.yaml"])
def test_a_copied_build_is_the_build(preset, tmp_path, monkeypatch):
    gen = load_config(CONFIGS / preset).generator
    monkeypatch.delenv(tinycache.CACHE_ENV, raising=False)
    built = tmp_path / "built" / "models"
    expected = spec_of(gen).model_paths(gen, built, 0, 4)

    monkeypatch.setenv(tinycache.CACHE_ENV, str(tmp_path / "cache"))
    first = tinycache.model_paths(gen, tmp_path / "a" / "models", 0, 4)  # builds into the cache, then copies
    calls = []
    monkeypatch.setattr(type(spec_of(gen)), "model_paths", lambda self, *a: calls.append(a) or expected)
    tinycache.model_paths(gen, tmp_path / "b" / "models", 0, 4)
    assert len(calls) == 1 and calls[0][1] == tmp_path / "b" / "models"  # only the finding call: nothing built
    assert digests(tmp_path / "a" / "models") == digests(built) == digests(tmp_path / "b" / "models")
    assert Path(first.model).relative_to(tmp_path / "a" / "models") == Path(expected.model).relative_to(built)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_an_interrupted_cache_entry_is_rebuilt_and_another_seed_is_another_entry(tmp_path, monkeypatch):
    gen = load_config(CONFIGS / "smoke-vec2face.yaml").generator
    monkeypatch.setenv(tinycache.CACHE_ENV, str(tmp_path / "cache"))
    entry = tmp_path / "cache" / tinycache.cache_key(gen, 0, 4)
    (entry / "models").mkdir(parents=True)
    (entry / "models" / "half-written").write_bytes(b"")  # a build killed before it completed
    tinycache.model_paths(gen, tmp_path / "a" / "models", 0, 4)
    assert (entry / tinycache.DONE).is_file() and not (tmp_path / "a" / "models" / "half-written").exists()
    tinycache.model_paths(gen, tmp_path / "b" / "models", 1, 4)
    assert tinycache.cache_key(gen, 1, 4) != entry.name
    assert digests(tmp_path / "a" / "models") != digests(tmp_path / "b" / "models")


def test_unset_or_not_tiny_builds_in_place(tmp_path, monkeypatch):
    gen = load_config(CONFIGS / "smoke-vec2face.yaml").generator
    monkeypatch.delenv(tinycache.CACHE_ENV, raising=False)
    tinycache.model_paths(gen, tmp_path / "models", 0, 4)
    assert (tmp_path / "models").is_dir() and not (tmp_path / "cache").exists()
    real = gen.model_copy(update={"tiny": False, "checkpoint": "/weights/vec2face.pth"})
    monkeypatch.setenv(tinycache.CACHE_ENV, str(tmp_path / "cache"))
    assert tinycache.model_paths(real, tmp_path / "other", 0, 4).model == "/weights/vec2face.pth"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "other").exists()
