"""The compiled correlator: qspan.model and qspan.correlate built by mypyc, where a build matches the sources.

The correlator is pure Python and stays so; `python -m qspan.compiled build`
(run by scripts/setup.sh) compiles the same modules with mypyc, unchanged, into
the environment's share/qspan/compiled/. The packages' __init__ (not compiled) call prefer() first:
when its STAMP holds the digest of today's sources, the package's
__path__ looks there before the sources, so `import qspan.correlate.correlator`
loads the extension. Any edit to a source file changes the digest and the
sources are used again until the next build: a stale build is never run.

Why (a 20 s full-rate recording, 3.2 M events, one run): bench/ingest.py's
correlate stage handled 334k events/s pure and 553k compiled, its live path 282k
and 433k; the correlator alone, best of three, 409k and 798k.

QSPAN_PURE=1 in the environment uses the sources whatever is built (the unit tests
run both ways).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import sys
from pathlib import Path

PACKAGES = ("model", "correlate")  # compiled together: one mypyc group
SOURCE_ROOT = Path(str(importlib.resources.files("qspan")))  # the package's own directory
# Built for one interpreter, so kept with it: the venv's (make clean removes both).
BUILD_DIR = Path(sys.prefix) / "share" / "qspan" / "compiled"
STAMP = "STAMP"

_digest: str | None = None
# What prefer() found: the live status, bench/ and `python -m qspan.compiled` show it.
state = "pure Python: not built (python -m qspan.compiled build)"


def sources() -> list[Path]:
    """The modules mypyc compiles: every module of the packages but their __init__ (which load them)."""
    return sorted(p for pkg in PACKAGES for p in (SOURCE_ROOT / pkg).glob("*.py") if p.name != "__init__.py")


def sources_digest() -> str:
    global _digest
    if _digest is None:
        h = hashlib.sha256(sys.version.encode())  # an extension is built for one interpreter
        for p in sources():
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
        _digest = h.hexdigest()
    return _digest


def prefer(package: str, path: list[str]) -> None:
    """Called by qspan.<package>'s __init__ with its __path__: look in the build first if it is current."""
    global state
    if os.environ.get("QSPAN_PURE") == "1":
        state = "pure Python (QSPAN_PURE=1)"
        return
    stamp = BUILD_DIR / STAMP
    try:
        built = stamp.read_text().strip()
    except OSError:
        return
    if built != sources_digest():
        state = "pure Python: the build is older than the sources (python -m qspan.compiled build)"
        return
    if str(BUILD_DIR) not in sys.path:
        sys.path.append(str(BUILD_DIR))  # mypyc's shared library of the group is a top-level module
    path.insert(0, str(BUILD_DIR / "qspan" / package))
    state = "compiled (mypyc)"


def build() -> int:
    """Compile the packages into BUILD_DIR with mypyc (needs mypy and a C compiler); returns an exit code."""
    import shutil
    import tempfile
    import time

    try:
        from mypyc.build import mypycify
        from setuptools import setup  # type: ignore[import-untyped]
    except ImportError as err:
        print(f"qspan.compiled: cannot build: {err} (pip install mypy setuptools)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    digest = sources_digest()
    print(f"qspan.compiled: compiling {len(sources())} modules of qspan.{{{','.join(PACKAGES)}}} with mypyc "
          "(~20 s) ...", file=sys.stderr, flush=True)
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="qspan-mypyc-") as tmp:
        cwd = os.getcwd()
        os.chdir(SOURCE_ROOT.parent)  # module names from paths: qspan/correlate/x.py is qspan.correlate.x
        try:
            setup(name="qspan-compiled",
                  # only the compiled modules must type-check: what they import is taken as declared
                  # (and mypy's cache in the temporary directory, not in the source tree)
                  ext_modules=mypycify(["--follow-imports=silent", "--cache-dir", os.path.join(tmp, "mypy"),
                                        *(str(p.relative_to(SOURCE_ROOT.parent)) for p in sources())],
                                       opt_level="3", target_dir=os.path.join(tmp, "c")),
                  script_args=["-q", "build_ext", "--build-lib", str(BUILD_DIR), "--build-temp", tmp])
        except SystemExit as err:  # setuptools reports a failed compile by exiting
            print(f"qspan.compiled: mypyc failed ({err}); qspan runs pure Python", file=sys.stderr)
            shutil.rmtree(BUILD_DIR, ignore_errors=True)
            return 1
        finally:
            os.chdir(cwd)
    (BUILD_DIR / STAMP).write_text(digest + "\n")
    print(f"qspan.compiled: built in {time.monotonic() - t0:.0f} s -> {BUILD_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        sys.exit(build())
    import qspan.correlate  # noqa: F401  (runs prefer())
    from qspan import compiled  # this file as imported by the packages, not as __main__

    print(compiled.state)
