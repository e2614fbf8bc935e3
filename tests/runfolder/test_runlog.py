"""The run log: a timestamped copy of what a run prints, one file per invocation."""

import io
import logging
import re

import pytest

from facefoundry.runfolder.runlog import new_log_path, run_log

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_terminal_gets_text_unchanged_and_file_gets_stamped_lines(tmp_path):
    terminal = io.StringIO()
    path = new_log_path(tmp_path)
    with run_log(path, terminal) as stream:
        stream.write("run x: 4 units\n")
        stream.write("\runits 1/4 | images 8")  # a progress redraw, as on a terminal
        stream.write("\runits 2/4 | images 16\n")
        stream.write("half a line")
        stream.record("done: 4 units written")
    assert terminal.getvalue() == "run x: 4 units\n\runits 1/4 | images 8\runits 2/4 | images 16\nhalf a line"
    lines = path.read_text().splitlines()
    assert [re.sub(f"^{STAMP} ", "", line) for line in lines] == [
        "run x: 4 units", "units 1/4 | images 8", "units 2/4 | images 16", "half a line", "done: 4 units written"]
    assert all(re.match(STAMP, line) for line in lines)


def test_each_invocation_gets_its_own_file(tmp_path):
    first, second = new_log_path(tmp_path), None
    first.write_text("x\n")
    second = new_log_path(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path / "logs"


def test_a_failure_and_library_warnings_are_logged(tmp_path):
    path = new_log_path(tmp_path)
    with pytest.raises(RuntimeError), run_log(path, io.StringIO()):
        logging.getLogger("facefoundry.pipelines.executor").warning("unit 0000000-0000002 failed (attempt 1 of 3)")
        raise RuntimeError("disk full")
    text = path.read_text()
    assert "WARNING facefoundry.pipelines.executor: unit 0000000-0000002 failed (attempt 1 of 3)" in text
    assert "run stopped: RuntimeError: disk full" in text
    # the handler is removed afterwards: later warnings do not reach this file
    logging.getLogger("facefoundry").warning("after")
    assert "after" not in path.read_text()
