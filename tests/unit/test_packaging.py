"""The Dockerfile, read as text (docker-compose.yml is checked by Debian's docker-compose in tests/e2e/test_packaging.py)."""

import re
import tomllib

from helpers import REPO


def test_dockerfile_copies_what_exists_and_what_the_wheel_is_built_from():
    text = (REPO / "Dockerfile").read_text()
    copied = set()
    for srcs in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in srcs.split():
            assert (REPO / src).exists(), src
            copied.add(src)
    # `pip install .` in the image builds the wheel: every folder pyproject.toml maps a package to must be there
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"pyproject.toml", "README.md", *setuptools["package-dir"].values()}
    assert needed <= copied, f"the image's build lacks {sorted(needed - copied)}"
    assert re.search(r"pip install .*\s\.(\[[a-z,]+\])?$", text, re.M), "the image installs qspan from the copied sources"
