"""The machine's own apt sources, and the entries the lab adds beside them.

lab/driver-o/build.sh needs deb-src for bookworm (the installed QEMU's source
package) and lab/qemu10/fetch.sh needs bookworm-backports (QEMU 10.0). Both must
come from the mirrors this machine already uses (its own mirror, a proxy, a local
mirror on CI), never from a hard-coded mirror host.

This module reads /etc/apt/sources.list and sources.list.d/*.list (one-line format)
and sources.list.d/*.sources (deb822), skipping the lab's own qspan-* files, and
writes the new entries in deb822 with the same URIs, Signed-By and Trusted.

Standard library only: the scripts run it with the system python3, before or after
the venv exists::

    python3 -I lab/qspanlab/aptsources.py deb-src   [--release bookworm] [--etc /etc/apt]
    python3 -I lab/qspanlab/aptsources.py backports [--release bookworm] [--etc /etc/apt]

print the .sources text on stdout, or exit 1 with a message naming the files read
when the machine has no source for the release.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

ETC_APT = Path("/etc/apt")
RELEASE = "bookworm"
OWN_PREFIX = "qspan-"  # the files the lab writes: never read back as the machine's sources


class AptSourcesError(Exception):
    pass


@dataclass(frozen=True)
class Source:
    """One apt source entry, from either format."""

    types: tuple[str, ...]  # "deb", "deb-src"
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None  # keyring paths or fingerprints, or an inline key (deb822, several lines)
    trusted: str | None = None  # "yes" / "no"
    origin: str = ""  # file:line it was read from


# type, [options], URI, suite, components: "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main"
_ONE_LINE = re.compile(r"(?P<type>\S+)\s+(?:\[(?P<opts>[^\]]*)\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>.*)")


def parse_one_line(lines: Iterable[str], name: str) -> Iterator[Source]:
    """Entries of a sources.list-format file (apt strips comments from the first '#')."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _ONE_LINE.fullmatch(line)
        if not m:
            raise AptSourcesError(f"{name}:{lineno}: malformed source line: {raw.strip()!r}")
        opts = dict(kv.split("=", 1) for kv in (m["opts"] or "").split() if "=" in kv)
        yield Source((m["type"],), (m["uri"],), (m["suite"],), tuple(m["components"].split()),
                     opts.get("signed-by"), opts.get("trusted"), f"{name}:{lineno}")


def _stanzas(lines: Iterable[str], name: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line of its first field, {lower-cased field: value}) per deb822 paragraph.

    A value's continuation lines are kept as written (leading blank, " ." for an empty
    line), so an inline Signed-By key is written back unchanged."""
    fields: dict[str, str] = {}
    start = 0
    key = None
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n").rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if fields:
                yield start, fields
            fields, key = {}, None
            continue
        if line[0] in " \t":
            if key is None:
                raise AptSourcesError(f"{name}:{lineno}: continuation line outside a field")
            fields[key] += "\n" + line
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise AptSourcesError(f"{name}:{lineno}: expected 'Field: value', got {line!r}")
        if not fields:
            start = lineno
        key = k.strip().lower()
        fields[key] = v.strip()
    if fields:
        yield start, fields


def parse_deb822(lines: Iterable[str], name: str) -> Iterator[Source]:
    """Entries of a .sources (deb822) file; stanzas with 'Enabled: no' are left out."""
    for lineno, f in _stanzas(lines, name):
        if f.get("enabled", "yes").strip().lower() == "no":
            continue
        missing = [k for k in ("types", "uris", "suites") if not f.get(k)]
        if missing:
            raise AptSourcesError(f"{name}:{lineno}: stanza without {', '.join(missing)}")
        yield Source(tuple(f["types"].split()), tuple(f["uris"].split()), tuple(f["suites"].split()),
                     tuple(f.get("components", "").split()), f.get("signed-by"), f.get("trusted"),
                     f"{name}:{lineno}")


def source_files(etc: Path = ETC_APT) -> list[Path]:
    """The files apt reads, in its order, without the lab's own qspan-* files."""
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    d = etc / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file() and not p.name.startswith(OWN_PREFIX))
    return files


def read_sources(files: Iterable[Path]) -> list[Source]:
    out: list[Source] = []
    for path in files:
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        with open(path, encoding="utf-8", errors="replace") as f:
            out.extend(parse(f, str(path)))
    return out


def _merge(sources: Iterable[Source]) -> list[Source]:
    """One entry per (types, URIs, components, keys), its suites in first-seen order."""
    merged: dict[tuple, Source] = {}
    for s in sources:
        key = (s.types, s.uris, s.components, s.signed_by, s.trusted)
        if key in merged:
            old = merged[key]
            suites = old.suites + tuple(x for x in s.suites if x not in old.suites)
            merged[key] = replace(old, suites=suites, origin=f"{old.origin} {s.origin}")
        else:
            merged[key] = s
    return list(merged.values())


def _binary_main(sources: Iterable[Source], suites: tuple[str, ...]) -> Iterator[Source]:
    """The machine's 'deb' entries with component main, cut down to `suites`."""
    for s in sources:
        keep = tuple(x for x in s.suites if x in suites)
        uris = tuple(u for u in s.uris if not u.startswith("cdrom:"))
        if "deb" in s.types and "main" in s.components and keep and uris:
            yield replace(s, uris=uris, suites=keep)


def deb_src(sources: Iterable[Source], release: str = RELEASE) -> list[Source]:
    """deb-src twins of the machine's deb entries for release, -updates and -security."""
    suites = (release, f"{release}-updates", f"{release}-security")
    return _merge(replace(s, types=("deb-src",), components=("main",)) for s in _binary_main(sources, suites))


def backports(sources: Iterable[Source], release: str = RELEASE) -> list[Source]:
    """release-backports from the mirrors that serve the release itself (not its -security)."""
    return _merge(replace(s, types=("deb",), suites=(f"{release}-backports",), components=("main",))
                  for s in _binary_main(sources, (release,)))


def render(sources: Iterable[Source], header: str = "") -> str:
    """deb822 text; the header becomes comment lines directly above the first stanza."""
    stanzas = []
    for s in sources:
        fields = [f"Types: {' '.join(s.types)}", f"URIs: {' '.join(s.uris)}",
                  f"Suites: {' '.join(s.suites)}", f"Components: {' '.join(s.components)}"]
        if s.signed_by:  # an inline key starts on the next line
            fields.append("Signed-By:" + ("" if s.signed_by.startswith("\n") else " ") + s.signed_by)
        if s.trusted:
            fields.append(f"Trusted: {s.trusted}")
        stanzas.append("\n".join(fields))
    head = "".join(f"# {line}\n" for line in header.splitlines())
    return head + "\n\n".join(stanzas) + "\n"


KINDS = {"deb-src": deb_src, "backports": backports}


def entries_for(kind: str, etc: Path = ETC_APT, release: str = RELEASE, by: str = "qspan's lab") -> str:
    """The .sources text for `kind` (deb-src or backports), derived from the sources under `etc`."""
    files = source_files(etc)
    new = KINDS[kind](read_sources(files), release)
    if not new:
        read = ", ".join(map(str, files)) or "none (no such files)"
        raise AptSourcesError(
            f"no 'deb' source for {release} (component main) to derive {kind} entries from; files read: {read} "
            f"(looked for {etc}/sources.list, {etc}/sources.list.d/*.list and *.sources; "
            f"{OWN_PREFIX}* files are the lab's own and skipped)")
    origins = " ".join(dict.fromkeys(o for s in new for o in s.origin.split()))
    header = (f"Written by {by} (lab/qspanlab/aptsources.py): {kind} for {release},\n"
              f"the same mirrors as this machine's own sources: {origins}\n"
              "Safe to delete: the lab writes it again when it needs it.")
    return render(new, header)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aptsources.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(KINDS), help="deb-src: source packages; backports: release-backports")
    p.add_argument("--release", default=RELEASE, help="Debian codename (default %(default)s)")
    p.add_argument("--etc", type=Path, default=ETC_APT, help="apt's configuration directory (default %(default)s)")
    p.add_argument("--by", default="qspan's lab", help="who writes the file, for its header comment")
    args = p.parse_args(argv)
    try:
        sys.stdout.write(entries_for(args.kind, args.etc, args.release, args.by))
    except (AptSourcesError, OSError) as err:
        print(f"aptsources: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
