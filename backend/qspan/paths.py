"""Where qspan finds its data files (tracers/, lab/) and puts its build outputs."""

from __future__ import annotations

import os
from pathlib import Path

# The package lives in <repo>/backend/qspan; data files sit beside it in the repo.
REPO = Path(os.environ.get("QSPAN_HOME", Path(__file__).resolve().parents[2]))
TRACERS = REPO / "tracers"
LAB = REPO / "lab"
BUILD = Path(os.environ.get("QSPAN_BUILD", REPO / "build"))
