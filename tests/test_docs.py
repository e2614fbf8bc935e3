import re
from pathlib import Path

from pydantic import BaseModel

from facefoundry.config import RunConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def config_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        subs = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ())) if isinstance(a, type)]
        models = [a for a in subs if issubclass(a, BaseModel)]
        if models:
            if type(None) in getattr(field.annotation, "__args__", ()):  # optional section: itself a key too
                keys.add(prefix + name)
            for model in models:  # a tagged union (generator): every member's keys
                keys |= config_keys(model, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_every_config_key_is_documented_and_no_stale_keys():
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)*)` \|", DOC.read_text(), flags=re.M))
    assert documented == config_keys(RunConfig)


EVAL_DOC = DOC.parent / "evaluation.md"


def test_evaluation_doc_anchors_are_the_code_anchors():
    from facefoundry.evaluate.anchors import anchors_table_markdown

    text = EVAL_DOC.read_text()
    block = text.split("<!-- anchors:", 1)[1].split("-->", 1)[1].split("<!-- /anchors -->", 1)[0]
    assert block.strip() == anchors_table_markdown()


def test_evaluation_doc_names_every_recipe_key():
    from facefoundry.evaluate.config import EvaluateConfig

    text = EVAL_DOC.read_text()
    missing = [key for key in sorted(config_keys(EvaluateConfig)) if f"`{key}`" not in text]
    assert not missing, f"docs/evaluation.md does not name {missing}"
