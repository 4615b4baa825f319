"""Docs match the code: every span field is documented."""

import dataclasses
import re

from helpers import REPO
from qspan.model import spans


def _documented(section_text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", section_text, re.M))


def test_every_span_field_is_documented():
    doc = (REPO / "docs" / "spans-schema.md").read_text()
    sections = dict(re.findall(r"^##+ (\w[^\n]*)\n(.*?)(?=^##|\Z)", doc, re.M | re.S))
    want = {
        "Span": spans.Span, "Phase": spans.Phase, "Handoff": spans.Handoff,
        "instead_top item": spans.InsteadItem, "NodeVisit (`nodes[]`)": spans.NodeVisit, "PoolHop (`pool[]`)": spans.PoolHop,
        "Child (`children[]`)": spans.Child,
    }
    for title, cls in want.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == _documented(sections[title]), f"docs/spans-schema.md section {title!r} vs {cls.__name__}"
    assert spans.SCHEMA in doc


def test_readme_quick_start_commands_exist():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
