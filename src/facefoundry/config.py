"""The run configuration: every section, the generators' from their folders; validation and the config hash.

A run is fully described by a :class:`RunConfig`. Its canonical JSON form (sorted keys, defaults
filled in) is hashed; the hash names the run and seeds every derived id, so two runs with the same
resolved config produce the same dataset. The sections are typed in :mod:`facefoundry.sections` and, one per
generator, in ``generators/<name>/config.py``; the ``generator`` union is built from the registered specs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from facefoundry.attributes import ESTIMATOR_ATTRIBUTES, labels_of
from facefoundry.generators.registry import DEFAULT_KIND, SPECS, spec_of
from facefoundry.identities.quotas import QuotaError, cell_targets
from facefoundry.sections import (
    AttributesConfig,
    BalanceConfig,
    ConfigError,
    DlibFilterConfig,
    FilterConfig,
    IdentitiesConfig,
    IdentityFilterConfig,
    ImagesConfig,
    OutputConfig,
    RayConfig,
    RunSection,
    StrictModel,
    read_yaml,
)

GeneratorConfig = Annotated[Union[tuple(spec.config for spec in SPECS.values())],  # noqa: UP007 (built at run time)
                            Field(discriminator="kind")]

# Keys added after runs existed, with the value that means "as before": at that value they are left out of the
# config hash, so a run made before the key existed resumes under the same id (dotted paths into the dump). The
# generators' own later keys are declared by their specs.
LATER_KEYS: dict[str, Any] = {
    "attributes": None,
    "attributes.tiny": False,
    "balance": None,
    **{f"generator.{key}": value for spec in SPECS.values() for key, value in spec.later_keys.items()},
}


class RunConfig(StrictModel):
    run: RunSection = RunSection()
    identities: IdentitiesConfig
    images: ImagesConfig
    generator: GeneratorConfig = Field(default_factory=SPECS[DEFAULT_KIND].config)  # type: ignore[valid-type]
    filter: FilterConfig = Field(default_factory=DlibFilterConfig)
    id_filter: IdentityFilterConfig | None = Field(
        None, description="Conditioning-encoder identity and quality filter (SCRFD + ArcFace ONNX); null = off."
    )
    attributes: AttributesConfig | None = Field(
        None, description="Attribute estimates per image (gender, age group, race); null = none."
    )
    balance: BalanceConfig | None = Field(None, description="Accept identities by attribute quota; null = off.")
    output: OutputConfig = OutputConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_generator_kind(cls, data: Any) -> Any:
        generator = data.get("generator") if isinstance(data, dict) else None
        if isinstance(generator, dict) and "kind" not in generator:
            data = {**data, "generator": {"kind": DEFAULT_KIND, **generator}}
        return data

    @model_validator(mode="after")
    def _check_space(self) -> RunConfig:
        problem = spec_of(self.generator).identity_space_error(self.generator, self.identities)
        if problem:
            raise ValueError(problem)
        self._check_balance()
        return self

    def _check_balance(self) -> None:
        balance, attrs = self.balance, self.attributes
        if balance is None:
            return
        if attrs is None:
            raise ValueError("balance needs the attributes section (the estimator that measures the probes)")
        given = ESTIMATOR_ATTRIBUTES[attrs.estimator]
        for name in balance.attributes:
            if name not in given:
                raise ValueError(f"balance.attributes: {name!r} is not estimated by attributes.estimator "
                                 f"{attrs.estimator} (it gives {', '.join(given)})")
        if self.identities.sampler == "from_file":
            raise ValueError("balance chooses among sampled candidates; identities.sampler from_file gives none")
        try:
            targets = cell_targets(balance.attributes, balance.targets, balance.cells)
        except QuotaError as exc:
            raise ValueError(f"balance: {exc}") from None
        for cell in targets:
            for name, value in zip(balance.attributes, cell, strict=True):
                labels = labels_of(attrs.estimator, name, attrs.age_edges)
                if value not in labels:
                    raise ValueError(f"balance: {name} value {value!r} is not one the estimator gives "
                                     f"({', '.join(labels)})")

    def config_hash(self) -> str:
        """Hash of everything that decides the dataset's content. The ``ray`` section only decides where
        and how fast it runs, so a run can resume on another cluster (or laptop) under the same id."""
        content = self.model_dump(mode="json", exclude={"ray"})
        for path, default in LATER_KEYS.items():  # at its default, a later key hashes as before it existed
            *parents, key = path.split(".")
            node = content
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and key in node and node[key] == default:
                del node[key]
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _section_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _strip_tag(loc: tuple) -> tuple[tuple, str]:
    """Pydantic puts a tagged union's tag in the path (generator.vec2face.steps): take it out."""
    if len(loc) >= 2 and loc[0] == "generator" and loc[1] in SPECS:
        return ("generator", *loc[2:]), f" (generator.kind={loc[1]})"
    return loc, ""


def _format_error(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line for all errors; an error at (or naming) a key given with ``--set`` is blamed on that --set."""
    parts, blamed = [], []
    for e in err.errors():
        loc, tag = _strip_tag(tuple(e["loc"]))
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = list(SPECS[tag.split("=")[1][:-1]].config.model_fields) if tag and len(loc) == 2 else []
            allowed = allowed or _section_keys(loc[:-1])
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        text = f"{path}{tag}: {msg} (got {e.get('input')!r})" if e["type"] != "missing" else f"{path}: {msg}"
        if e["type"] == "value_error":  # a model validator's own sentence names the keys and values
            text = msg.removeprefix("Value error, ")
        unknown = e["type"] == "extra_forbidden"
        culprit = next((t for k, t in (overrides or {}).items() if path == k or path.startswith(k + ".")
                        or (unknown and k.startswith(path + ".")) or f"{k}=" in msg or f"{k} " in msg), None)
        if culprit:
            blamed.append(f"--set {culprit!r}: {text}")
        else:
            parts.append(text)
    return "; ".join(([f"{source}: " + "; ".join(parts)] if parts else []) + blamed)


def validate_config(data: Any, source: str = "config", overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw config mapping; errors name ``source``, or the ``--set`` override that caused them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        keys = {text.split("=", 1)[0].strip(): text for text in overrides or []}
        raise ConfigError(_format_error(err, source, keys)) from None



def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML preset, apply ``--set`` overrides and validate."""
    return validate_config(read_yaml(path, overrides), str(path), overrides)
