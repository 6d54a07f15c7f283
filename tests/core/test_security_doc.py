"""docs/security.md lists every bad input the battery tries (its table is generated from them)."""

from __future__ import annotations

import re

from badinput import REPO


def _case_ids() -> set[str]:
    import test_bad_checkpoints as ck
    import test_bad_labels as lb
    import test_bad_saves as sv
    import test_bad_scans as sc

    ids = {
        c.id
        for mod in (ck, lb, sc, sv)
        for name in dir(mod)
        if name.endswith("CASES")
        for c in getattr(mod, name)
    }
    for path in (REPO / "tests" / "core").glob("test_bad_*.py"):  # cases that run as their own test
        ids |= set(re.findall(r'"((?:ck|rs|lb|dc|sc|sv|mem)-[a-z0-9-]+)"', path.read_text()))
    return ids


def test_every_case_is_in_the_doc_and_there_are_well_over_100() -> None:
    ids = _case_ids()
    doc = (REPO / "docs" / "security.md").read_text()
    table = doc.split("<!-- bad-inputs:start -->")[1].split("<!-- bad-inputs:end -->")[0]
    listed = set(re.findall(r"^\| \d+ \| `([a-z0-9-]+)` \|", table, re.MULTILINE))
    assert len(ids) > 150
    missing = sorted(ids - listed)
    assert not missing, f"not in docs/security.md (run python docs/make_security_table.py): {missing}"
    assert not sorted(listed - ids), "the table lists cases the tests no longer try"
    assert "Traceback" not in table
