"""The people an ID-Booth run learns: one folder per consenting person, with their photos and a consent record.

Layout of ``generator.people``::

    <people>/<person>/consent.yaml      who consented, to what use, when (required; see ConsentRecord)
    <people>/<person>/*.jpg|*.png|...   a handful of photos of that person (the instance images)

ID-Booth exists for people who agreed to be learned: a folder without a readable consent record is refused, and
the dataset card summarises the records (never the photos or their embeddings). Folders and photos are read in
natural name order, so person ``k`` (the run's identity ``k``) and the order of a person's photos do not depend
on the file system.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from facefoundry.sections import StrictModel

CONSENT_FILE = "consent.yaml"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CONSENT_EXAMPLE = ("subject: participant 07\nconsented_to: training and evaluating face recognition models with "
                   "synthetic images of me\ndate: 2026-11-30")


class PeopleError(ValueError):
    """A people folder, person folder or consent record that cannot be used; the message names it and the fix."""


class ConsentRecord(StrictModel):
    """One person's consent, written by the user who collected it (``<person>/consent.yaml``)."""

    subject: str = Field(min_length=1, description="Who consented: a name or the pseudonym the user's records use.")
    consented_to: str = Field(min_length=1, description="The use they agreed to, in their consent form's words.")
    date: dt.date = Field(description="When they consented (YYYY-MM-DD).")
    expires: dt.date | None = Field(None, description="When the consent ends, if it does.")
    reference: str | None = Field(None, description="Where the signed form is kept (an id in the user's records).")
    gender: Literal["female", "male"] | None = Field(
        None, description="Optional: the word the official prompts put before 'sks person' (none: left out).")


@dataclass(frozen=True)
class Person:
    """One consenting person: the folder name (their label in the run), their photos and consent record."""

    name: str
    folder: Path
    photos: tuple[Path, ...]
    consent: ConsentRecord


def natural_key(name: str) -> list:
    """``p2`` before ``p10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_consent(folder: Path, today: dt.date | None = None) -> ConsentRecord:
    """The consent record of person folder ``folder``; :class:`PeopleError` in one line when it is missing,
    unreadable, incomplete or expired."""
    path = folder / CONSENT_FILE
    if not path.is_file():
        raise PeopleError(f"{folder} has no {CONSENT_FILE}: ID-Booth learns only people who consented; write their "
                          f"consent record there, e.g. {CONSENT_EXAMPLE!r}, or remove the folder")
    try:
        data = yaml.safe_load(path.read_text())
        record = ConsentRecord.model_validate(data if data is not None else {})
    except yaml.YAMLError as exc:
        raise PeopleError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); expected e.g. "
                          f"{CONSENT_EXAMPLE!r}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())
        raise PeopleError(f"{path}: {problems}; expected e.g. {CONSENT_EXAMPLE!r}") from None
    if record.expires is not None and record.expires < (today or dt.date.today()):
        raise PeopleError(f"{path}: the consent expired on {record.expires}; renew it or remove the folder")
    return record


def list_photos(folder: Path) -> tuple[Path, ...]:
    """The photos of a person folder (:data:`PHOTO_SUFFIXES`, natural name order)."""
    photos = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES),
                    key=lambda p: (natural_key(p.name), p.name))
    if not photos:
        raise PeopleError(f"{folder} holds no photo ({'/'.join(PHOTO_SUFFIXES)}): put a handful of photos of the "
                          "person there")
    return tuple(photos)


def read_people(root: str | Path, today: dt.date | None = None) -> list[Person]:
    """Every person folder under ``root`` in natural name order, each with its photos and consent record."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise PeopleError(f"generator.people folder {path} does not exist: make one folder per consenting person "
                          f"holding their photos and a {CONSENT_FILE}")
    folders = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (natural_key(p.name), p.name))
    if not folders:
        raise PeopleError(f"generator.people folder {path} has no person folder: make one per consenting person "
                          f"holding their photos and a {CONSENT_FILE}")
    return [Person(f.name, f, list_photos(f), read_consent(f, today)) for f in folders]


def consent_summary(people: list[Person]) -> dict:
    """What the card says of the consent records: how many people, the uses they agreed to (with counts), the
    consent dates' range, the earliest expiry and how many records name a signed form. No names, no photos."""
    uses: dict[str, int] = {}
    for person in people:
        uses[person.consent.consented_to] = uses.get(person.consent.consented_to, 0) + 1
    dates = sorted(p.consent.date for p in people)
    expiries = sorted(p.consent.expires for p in people if p.consent.expires is not None)
    return {"people": len(people), "consented_to": dict(sorted(uses.items())),
            "dates": [dates[0].isoformat(), dates[-1].isoformat()] if dates else None,
            "earliest_expiry": expiries[0].isoformat() if expiries else None,
            "with_reference": sum(p.consent.reference is not None for p in people)}
