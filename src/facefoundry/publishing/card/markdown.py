"""Markdown helpers of the card: numbers, tables and column types."""

from __future__ import annotations


def num(x: float | int | None, digits: int = 4) -> str:
    """A number for a table: thousands separators for integers, ``digits`` decimals for floats."""
    if x is None:
        return "n/a"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; ``|`` inside cells is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def feature_type(feature) -> str:
    """A short type name of a ``datasets`` feature (``float32``, ``list<float32>[4]``, ``struct``)."""
    import datasets

    yaml_entry = {k: v for k, v in datasets.Features({"x": feature})._to_yaml_list()[0].items() if k != "name"}
    if "dtype" in yaml_entry:
        return str(yaml_entry["dtype"])
    if "list" in yaml_entry:
        inner = yaml_entry["list"]
        inner = inner if isinstance(inner, str) else "struct"
        return f"list<{inner}>[{yaml_entry['length']}]" if "length" in yaml_entry else f"list<{inner}>"
    return "struct"
