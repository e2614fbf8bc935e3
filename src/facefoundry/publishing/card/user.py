"""What the user owns in a card, and carrying it over when the card is regenerated.

A generated card holds an empty block between :data:`USER_START` and :data:`USER_END`; text written there
is the user's. Regenerating keeps that block, every section under a heading the generator never writes
(in its place after the section it followed, else at the end), and the licence and pretty name of the
card's metadata unless new ones are given.
"""

from __future__ import annotations

import re

USER_START = "<!-- user -->"
USER_END = "<!-- /user -->"
EMPTY_USER_BLOCK = f"{USER_START}\n{USER_END}\n"
_HEADING = re.compile(r"^(#{1,6}) +(.+?)\s*$")


def card_metadata(text: str | None) -> dict:
    """The YAML metadata of a card's text ({} when absent or not parseable)."""
    import yaml

    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text or "", re.S)
    if not match:
        return {}
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def user_choices(text: str | None) -> tuple[str | None, str | None]:
    """The licence and pretty name an existing card states (None for what it does not state)."""
    meta = card_metadata(text)
    lic, name = meta.get("license"), meta.get("pretty_name")
    return (lic if isinstance(lic, str) else None), (name if isinstance(name, str) else None)


def user_block(text: str | None) -> str | None:
    """The text between the user markers (None when the card has no such block)."""
    match = re.search(re.escape(USER_START) + r"\n?(.*?)" + re.escape(USER_END), text or "", re.S)
    return match.group(1) if match else None


def _sections(text: str) -> list[tuple[str | None, str]]:
    """(heading title or None for the preamble, text with its heading line) in order; code fences respected."""
    out: list[tuple[str | None, str]] = [(None, "")]
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            out.append((match.group(2), line))
        else:
            title, body = out[-1]
            out[-1] = (title, body + line)
    return out


def keep_user_content(new: str, old: str | None) -> str:
    """``new`` (a freshly generated card) with the user's block and hand-written sections of ``old``."""
    if not old:
        return new
    block = user_block(old)
    if block is not None and USER_START in new:
        new = new.replace(EMPTY_USER_BLOCK, f"{USER_START}\n{block}{USER_END}\n", 1)
    generated = {title for title, _ in _sections(new)}
    sections = _sections(new)
    previous: str | None = None
    for title, body in _sections(old):
        if title is not None and title not in generated:
            at = next((i + 1 for i, (t, _) in enumerate(sections) if previous is not None and t == previous),
                      len(sections))
            sections.insert(at, (title, body if body.endswith("\n") else body + "\n"))
            generated.add(title)
        previous = title
    return "".join(body for _, body in sections)
