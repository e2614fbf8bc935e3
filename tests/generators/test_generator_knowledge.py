"""A generator's facts live in its folder: no code outside ``generators/`` branches on ``generator.kind`` or keeps a
table keyed by it (the scan), and what the rest of the code reads from the specs holds for every generator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from facefoundry.generators.registry import SPECS

REPO = Path(__file__).resolve().parents[2]
KINDS = set(SPECS)
SCANNED = ["src", "pipelines", "filters", "faces", "bench"]  # everything but generators/ and the tests


def _mentions_kind(node: ast.AST) -> bool:
    """Whether ``node`` reads a generator's kind: ``<x>.generator.kind``, ``gen.kind``, ``generator_kind``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "kind":
            base = sub.value
            name = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
            if name in ("generator", "gen"):
                return True
        if isinstance(sub, ast.Name) and sub.id == "generator_kind":
            return True
    return False


def _is_kind_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in KINDS


def kind_branches(root: Path, folders: list[str]) -> list[str]:
    """Every place under ``folders`` that compares a generator's kind, indexes a table by it, or writes a table
    keyed by two or more generator kinds; as ``path:line: what``."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(root)
            for node in ast.walk(tree):
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                    if any(_mentions_kind(s) for s in sides) or (
                            any(_is_kind_literal(s) for s in sides) and any(
                                isinstance(s, (ast.Attribute, ast.Name)) and "kind" in ast.unparse(s) for s in sides)):
                        found.append(f"{where}:{node.lineno}: compares a generator kind: {ast.unparse(node)}")
                elif isinstance(node, ast.Subscript) and _mentions_kind(node.slice):
                    found.append(f"{where}:{node.lineno}: a table indexed by generator kind: {ast.unparse(node)}")
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                      and node.args and _mentions_kind(node.args[0])):
                    found.append(f"{where}:{node.lineno}: a table read by generator kind: {ast.unparse(node)}")
                elif isinstance(node, ast.Dict) and sum(_is_kind_literal(k) for k in node.keys if k) >= 2:
                    found.append(f"{where}:{node.lineno}: a table keyed by generator kinds")
    return found


def test_nothing_outside_generators_branches_on_the_kind():
    assert kind_branches(REPO, SCANNED) == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """Each form the scan forbids, planted in a file, is found (so an empty result means something)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "planted.py").write_text(
        'SIZE = {"arc2face": 512, "vec2face": 112}\n'
        'def f(cfg, gen, generator_kind, table):\n'
        '    a = cfg.generator.kind == "dcface"\n'
        '    b = gen.kind in ("noop",)\n'
        '    c = table[cfg.generator.kind]\n'
        '    d = table.get(generator_kind)\n'
        '    return a, b, c, d\n')
    found = kind_branches(tmp_path, ["src"])
    assert [line.split(":")[1] for line in found] == ["1", "3", "4", "5", "6"], found


def tiny_section(kind: str):
    """A generator section of ``kind`` for a tiny build (a merged run: of two tiny source runs)."""
    spec = SPECS[kind]
    if not spec.renders:
        sources = [{"run_id": f"{k}-0", "config_hash": "0", "config": {"generator": {"kind": k, "tiny": True}},
                    "identities": 2, "first_label": 2 * i} for i, k in enumerate(("arc2face", "vec2face"))]
        return spec.config(sources=sources)
    return spec.config(tiny=True) if "tiny" in spec.config.model_fields else spec.config()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_spec_is_complete(kind):
    """What the pipeline, config, card and licence chain read: declared for every registered generator."""
    spec = SPECS[kind]
    gen = tiny_section(kind)
    assert spec.kind == kind and spec.config.model_fields["kind"].default == kind
    assert spec.display_name and ":" in spec.generator_class
    assert spec.components(gen), "a tiny build still names its licence record"
    assert spec.card_lines(gen) and all(line.startswith("- ") for line in spec.card_lines(gen))
    assert isinstance(spec.shard_metadata(gen), dict)
    if spec.renders:
        assert spec.output_size(gen), "a stored image size is known"
        assert not spec.source_configs(gen)
    else:  # a merged run: its sources' facts
        assert spec.source_configs(gen) and spec.conditioning_names(gen) == {
            name for k in ("arc2face", "vec2face") for name in SPECS[k].conditioning_files}
    if not spec.rehearsal and spec.renders:
        assert spec.conditioning_files, "a real generator declares the encoders a judge must not be"
        assert spec.citations and spec.native_size


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_shards_record_the_sampling_settings(kind):
    """Every setting that decides how a generator samples (steps, eta, guidance, sampler) is in the shard metadata
    of every generator that has it (Arc2Face's steps were not)."""
    spec = SPECS[kind]
    gen = tiny_section(kind)
    recorded = spec.shard_metadata(gen)
    for setting in ("sampler", "steps", "eta", "guidance_scale"):
        if setting in spec.config.model_fields:
            assert setting in recorded, f"{kind}: shard metadata lacks {setting}"


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if not SPECS[k].rehearsal and SPECS[k].renders))
def test_the_judge_refuses_every_declared_conditioning_encoder(kind, tmp_path):
    """Grading a run with the generator's own conditioning encoder is refused for every generator (the check knew
    only Arc2Face's and Vec2Face's), whether the run names its kind or its whole generator section."""
    from facefoundry.evaluate.judge import JudgeError, check_independent

    spec = SPECS[kind]
    section = spec.config(tiny=True).model_dump(mode="json")
    for name in spec.conditioning_files:
        judge = tmp_path / name
        judge.write_bytes(b"weights")
        for generator in (kind, section):
            with pytest.raises(JudgeError, match=f"{spec.display_name} generator's conditioning encoder"):
                check_independent(judge, generator)
    other = tmp_path / "another-family.onnx"
    other.write_bytes(b"other weights")
    check_independent(other, section)  # a file of no declared name and other bytes is accepted
