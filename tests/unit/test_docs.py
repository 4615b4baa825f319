"""Docs match the code: every span field is documented, every command the README shows exists."""

import argparse
import dataclasses
import re
import shlex

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


def _section(markdown: str, title: str) -> str:
    m = re.search(rf"^##+ {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def _code_blocks(markdown: str) -> list[str]:
    """Code blocks but those marked as a program's output (```text)."""
    return [body for lang, body in re.findall(r"^```([a-z]*)\n(.*?)^```", markdown, re.M | re.S) if lang != "text"]


def _commands(block: str) -> list[list[str]]:
    """The shell commands of a code block, as words; comments, `&`, pipes and so on end a command."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        words = []
        for w in lex:
            if w and set(w) <= set("&|;<>()"):
                break
            words.append(w)
        if words:
            out.append(words)
    return out


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def test_readme_quick_start_commands_are_make_targets_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    blocks = _code_blocks(_section(readme, "Quick start"))
    assert blocks, "README's quick start has no code block"
    quick = _commands(blocks[0])
    assert quick, "README's quick start block is empty"
    targets = _makefile_targets()
    for words in quick:
        assert len(words) == 2 and words[0] == "make", f"quick start command {' '.join(words)!r} is not `make TARGET`"
        assert words[1] in targets, f"README's quick start runs `make {words[1]}`: no such Makefile target"
    # every `make X` the README shows, in a code block or inline, is a target
    named = [w[1] for b in _code_blocks(readme) for w in _commands(b) if w[0] == "make" and len(w) > 1]
    for target in named + re.findall(r"`make ([a-z][\w-]*)`", readme):
        assert target in targets, f"README names `make {target}`: no such Makefile target"
    # CI runs the README's test command, as a command (not in a comment or an echo)
    tests = [w for w in quick if w[1] == "test"]
    assert tests, "README's quick start has no `make test`"
    ci = [w for ln in (REPO / ".ci" / "run").read_text().splitlines() if not ln.lstrip().startswith("#")
          for w in _commands(ln)]
    assert tests[0] in ci, f".ci/run does not run {' '.join(tests[0])!r}: {ci}"
    # and that target runs the whole suite
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert re.search(r"-m pytest\b.* tests\s*$", recipe, re.M), recipe


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from qspan.cli import build_parser as qspan_parser
    from qspanlab.cli import build_parser as lab_parser

    return {"qspan": qspan_parser(), "qspan-lab": lab_parser()}


# Subcommands whose words after them are another program's options, passed through verbatim.
PASSTHROUGH = {("qspan-lab", "load")}  # qspan-load's own --op, --qd ... (qspanlab/cli.py main)


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def _check_command(words: list[str], parsers: dict) -> str | None:
    """None when `words` (`qspan SUB --opt v ...`) is a command the parsers accept, else what is wrong."""
    prog = words[0].rsplit("/", 1)[-1]
    parser, path, rest = parsers[prog], [prog], iter(words[1:])
    for w in rest:
        if tuple(path) in PASSTHROUGH:
            break
        if w.startswith("-"):
            flag = w.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is None:
                return f"`{' '.join(path)}` has no option {flag}"
            if action.nargs != 0 and "=" not in w:
                next(rest, None)
        elif subs := _subparsers(parser):
            if w not in subs:
                return f"`{' '.join(path)}` has no subcommand {w!r} (it has {', '.join(subs)})"
            parser = subs[w]
            path.append(w)
    if _subparsers(parser):
        return f"`{' '.join(path)}` needs a subcommand"
    return None


def _readme_qspan_commands(readme: str) -> list[list[str]]:
    cmd = re.compile(r"^(?:\S*/)?qspan(?:-lab)?$")
    found = [w for block in _code_blocks(readme) for w in _commands(block) if cmd.match(w[0])]
    for inline in re.findall(r"`((?:\.venv/bin/)?qspan(?:-lab)? [^`]+)`", readme):
        found += [w for w in _commands(inline) if cmd.match(w[0])]
    return found


def test_every_qspan_command_in_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    commands = _readme_qspan_commands(readme)
    # the README's command lines were found at all, for both programs
    assert len(commands) >= 10 and {w[0].rsplit("/", 1)[-1] for w in commands} == {"qspan", "qspan-lab"}, commands
    parsers = _parsers()
    wrong = [f"{' '.join(w)}: {why}" for w in commands if (why := _check_command(w, parsers))]
    assert not wrong, "README.md names commands the CLI does not have:\n" + "\n".join(wrong)


def test_the_command_check_catches_what_it_should():
    parsers = _parsers()
    assert _check_command(["qspan", "attach", "--pid", "1", "--duration", "10", "--out", "s.json"], parsers) is None
    assert _check_command(["qspan-lab", "--dir", "/tmp/x", "load", "--op", "write", "--qd", "4"], parsers) is None
    assert "no subcommand 'lab'" in _check_command([".venv/bin/qspan", "lab", "up"], parsers)
    assert "no option --pdi" in _check_command(["qspan", "tracer", "--pdi", "1"], parsers)
    assert "needs a subcommand" in _check_command(["qspan-lab", "--dir", "x"], parsers)
    assert _commands("make demo    # boots the lab\n.venv/bin/qspan-lab load --op write &\n") == [
        ["make", "demo"], [".venv/bin/qspan-lab", "load", "--op", "write"]]


def test_the_dashboard_s_hover_texts_are_the_schema_s_own_words():
    """live/glossary.py (what the dashboard shows over a phase or category) says what docs/spans-schema.md says."""
    from qspan.live import glossary

    doc = " ".join((REPO / "docs" / "spans-schema.md").read_text().split())
    for name, text in glossary.PHASES.items():
        said = f"{name} role (e.g. `" if name in ("driver", "hop") else f"`{name}`: {text}"
        assert said in doc and text in doc, f"phase {name}: {text!r} is not the schema's"
    for name, text in glossary.INSTEAD.items():
        assert f"`{name}` ({text})" in doc, f"category {name}: {text!r} is not the schema's"
    assert set(glossary.INSTEAD) == set(spans.INSTEAD_CATEGORIES)
    assert glossary.phase_meanings({"driver": "O", "hop": "replication"})["O"].endswith(glossary.PHASES["driver"])


def test_every_field_the_dashboard_is_sent_is_documented(tmp_path):
    """docs/dashboard.md's tables name every key of a frame, its charts and a view."""
    import json

    from helpers import DATA, local_client
    from qspan.server.app import create_app
    from qspan.server.settings import Settings

    doc = (REPO / "docs" / "dashboard.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)`(?:, `([a-z0-9_]+)`)? \|", doc, re.M))
    names = {n for pair in documented for n in pair if n}
    app = create_app(Settings(record_dir=tmp_path))
    with local_client(app) as client:
        sid = app.state.manager.open_recording(DATA / "stock-qd4-w100.qspan.gz").id
        with client.websocket_connect(f"ws://127.0.0.1:8321/api/sessions/{sid}/live") as ws:
            frame = ws.receive_json()
        charts = frame["charts"]
        found = client.get(f"/api/sessions/{sid}/find").json()
    assert set(frame) - names == set(), "frame fields not in docs/dashboard.md"
    assert set(frame["view"]) - names == set(), "view fields not in docs/dashboard.md"
    assert set(charts) - names == set(), "charts fields not in docs/dashboard.md"
    assert {w for w in found if f"`{w}`" not in doc} == set(), "find's fields not in docs/dashboard.md"
    for key in ("latency", "breakdown", "heatmap"):
        inner = next(iter(charts[key].values())) if key != "heatmap" else charts[key]
        words = set(inner) if isinstance(inner, dict) else set()
        missing = {w for w in words if f"`{w}`" not in doc}
        assert not missing, f"charts.{key} fields not in docs/dashboard.md: {missing}"
    slow = charts["slowest"][0]
    assert {w for w in slow if f"`{w}`" not in doc} == set()
    json.dumps(frame)
