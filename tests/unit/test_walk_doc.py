"""docs/WALK.md follows one request through the code; this keeps it true as the code moves: every
file its tables name exists, every function or class it names is defined in the files of the walk,
and the count it states is the count of its tables."""

from __future__ import annotations

import re

import pytest
from support.infra import ROOT

pytestmark = pytest.mark.unit

WALK = ROOT / "docs/WALK.md"
SHORT = {
    "api/": ROOT / "services/api/src/reelhouse/api",
    "recorder/": ROOT / "services/recorder/src/reelhouse/recorder",
    "common/": ROOT / "libs/common/src/reelhouse/common",
}
ROW = re.compile(r"^\| (\d+) \| (.+?) \| (.+) \|$")
PYTHON = {"Annotated"}  # the language's own names the walk mentions
FIELDS = {"generation", "storage_id"}  # the job document's fields the walk mentions
NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)?([A-Za-z_][A-Za-z0-9_]*)(\(\))?$")


def resolve(short: str):
    for prefix, folder in SHORT.items():
        if short.startswith(prefix):
            return folder / short.removeprefix(prefix)
    raise AssertionError(f"WALK.md names {short!r}, which is under none of {list(SHORT)}")


def rows() -> list[tuple[int, list[str], str]]:
    found = []
    for line in WALK.read_text().splitlines():
        match = ROW.match(line)
        if match:
            files = re.findall(r"`([^`]+)`", match.group(2))
            found.append((int(match.group(1)), files, match.group(3)))
    return found


def defined(name: str, text: str) -> bool:
    return (
        re.search(rf"^\s*(async def|def|class) {name}\b|^{name}(: .*)? = ", text, re.M) is not None
    )


def test_every_file_of_the_walk_exists_and_the_rows_run_in_order() -> None:
    found = rows()
    assert [number for number, _, _ in found] == list(range(1, len(found) + 1))
    for _, files, _ in found:
        assert files, "a row names no file"
        for short in files:
            assert resolve(short).is_file(), f"WALK.md names {short}, which does not exist"


def test_every_function_and_class_the_walk_names_is_defined_on_it() -> None:
    found = rows()
    # the files of the rows, and those a row's text names with their full short path
    named = {short for _, files, _ in found for short in files}
    for _, _, text in found:
        named |= {
            t for t in re.findall(r"`([a-z_/]+\.py)`", text) if t.split("/")[0] + "/" in SHORT
        }
    sources = "\n".join(resolve(short).read_text() for short in sorted(named))
    missing = []
    for number, _, text in found:
        for token in re.findall(r"`([^`]+)`", text):
            match = NAME.match(token)
            if not match or token.endswith(".py") or token in PYTHON:
                continue  # a value, a flag or a file, not a name of ours
            if token in FIELDS:
                continue  # a stored field, not a function or a class
            if not defined(match.group(2), sources):
                missing.append(f"row {number}: {token}")
    assert not missing, f"WALK.md names what the walk's files do not define: {missing}"


def test_the_stated_count_is_the_tables_count() -> None:
    files = {short for _, shorts, _ in rows() for short in shorts}
    stated = re.search(r"The tables' rows hold \*\*(\d+) files\*\*", WALK.read_text())
    assert stated, "WALK.md no longer states how many files its tables hold"
    assert int(stated.group(1)) == len(files)
