"""ID-Booth's people folder: one folder per consenting person, refused in one line without a usable consent
record or photos."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from facefoundry.generators.id_booth.people import CONSENT_FILE, PeopleError, read_people

RECORD = "subject: participant 7\nconsented_to: synthetic images of me for FR training\ndate: 2026-11-30\n"


def _person(root, name, record=RECORD, photos=("a.jpg",)):
    folder = root / name
    folder.mkdir(parents=True)
    if record is not None:
        (folder / CONSENT_FILE).write_text(record)
    for photo in photos:
        (folder / photo).write_bytes(b"not decoded here")
    return folder


def test_people_in_natural_order_with_photos_and_consent(tmp_path):
    _person(tmp_path, "p10", photos=("x10.png", "x2.png", "notes.txt"))
    _person(tmp_path, "p2", record=RECORD + "gender: female\nexpires: 2030-01-01\nreference: form 12\n")
    (tmp_path / ".cache").mkdir()
    people = read_people(tmp_path, today=dt.date(2026, 12, 7))
    assert [p.name for p in people] == ["p2", "p10"]
    assert [f.name for f in people[1].photos] == ["x2.png", "x10.png"]
    assert people[0].consent.gender == "female" and people[0].consent.date == dt.date(2026, 11, 30)
    assert people[1].consent.subject == "participant 7" and people[1].consent.gender is None


@pytest.mark.parametrize(("record", "match"), [
    (None, f"has no {CONSENT_FILE}: ID-Booth learns only people who consented"),
    ("subject: x\ndate: 2026-11-30\n", "consented_to: Field required"),
    ("subject: x\nconsented_to: y\ndate: yesterday\n", "date: Input should be a valid date"),
    ("subject: [unclosed\n", "is not valid YAML"),
    ("", "subject: Field required"),
    (RECORD + "expires: 2026-12-01\n", "the consent expired on 2026-12-01"),
    (RECORD + "likes: cats\n", "likes: Extra inputs are not permitted"),
])
def test_a_person_without_usable_consent_is_refused_in_one_line(tmp_path, record, match):
    _person(tmp_path, "alice")
    _person(tmp_path, "bob", record=record)
    with pytest.raises(PeopleError, match=match) as info:
        read_people(tmp_path, today=dt.date(2026, 12, 7))
    assert "bob" in str(info.value) and "\n" not in str(info.value).strip()


def test_missing_folders_and_photos_are_named(tmp_path):
    with pytest.raises(PeopleError, match="does not exist"):
        read_people(tmp_path / "nowhere")
    with pytest.raises(PeopleError, match="has no person folder"):
        read_people(tmp_path)
    _person(tmp_path, "carol", photos=())
    with pytest.raises(PeopleError, match="carol holds no photo"):
        read_people(tmp_path)


def test_the_card_summarises_consent_without_names(tmp_path):
    from facefoundry.generators.id_booth.config import IDBoothConfig
    from facefoundry.generators.id_booth.people import consent_summary
    from facefoundry.generators.id_booth.spec import CONSENT_SUMMARY, WORK_DIR, IDBoothSpec

    _person(tmp_path / "people", "alice", record=RECORD.replace("participant 7", "Alice Example")
            + "reference: form 3\nexpires: 2031-01-01\n")
    _person(tmp_path / "people", "bob", record=RECORD.replace("2026-11-30", "2026-10-02"))
    summary = consent_summary(read_people(tmp_path / "people", today=dt.date(2026, 12, 7)))
    assert summary == {"people": 2, "consented_to": {"synthetic images of me for FR training": 2},
                       "dates": ["2026-10-02", "2026-11-30"], "earliest_expiry": "2031-01-01", "with_reference": 1}
    (tmp_path / "run" / WORK_DIR).mkdir(parents=True)
    (tmp_path / "run" / WORK_DIR / CONSENT_SUMMARY).write_text(json.dumps(summary))
    text = "\n".join(IDBoothSpec().card_sections(IDBoothConfig(people="p", arcface="a.pth"), tmp_path / "run"))
    assert "All 2 identities are real people" in text and "2026-10-02 and 2026-11-30" in text
    assert "expires on 2031-01-01" in text and "1 name a signed form" in text
    assert "Alice" not in text and "alice" not in text and "bob" not in text
    missing = "\n".join(IDBoothSpec().card_sections(IDBoothConfig(people="p"), tmp_path / "elsewhere"))
    assert "is not in this run folder" in missing


def test_the_gated_access_prompt_says_the_people_are_real():
    from facefoundry.generators.id_booth.spec import IDBoothSpec
    from facefoundry.publishing.card.build import gated_fields

    real = gated_fields("cc-by-nc-4.0", IDBoothSpec.real_people)[0]
    assert "real people who consented" in real and "No image shows a real person" not in real
    assert "No image shows a real person" in gated_fields("cc-by-nc-4.0")[0]
