"""qspan's data files, read as package resources.

The probe catalogue (`tracers/`: events, probes, profiles, aggregate probes,
probe costs) and the dashboard (`frontend/`) live at the top of the repository
and ship inside the wheel as the packages `qspan.tracers` and `qspan.frontend`
(see pyproject.toml): an installed qspan needs no checkout and no QSPAN_HOME.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


def tracers() -> Traversable:
    """The probe catalogue: events.txt, probes.txt, aggregate.txt, costs.txt, profiles/."""
    return resources.files("qspan.tracers")


def frontend() -> Traversable:
    """The dashboard's static files: index.html, app.js, style.css, vendor/."""
    return resources.files("qspan.frontend")
