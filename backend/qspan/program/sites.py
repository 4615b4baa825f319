"""Which entry probes move to a site inside their function (tracers/sites.txt), and how.

Pure: given the catalogue's site patterns and a binary's code at each function's
entry, `resolve` says where each site is; `at_site` rewrites a probe line's
argument expressions (arg0, arg1, ...) into the registers that hold them there.
The transport (transport/sites.py) does the attaching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qspan.errors import CatalogueError

if TYPE_CHECKING:  # catalogue.sites imports program.hitkind: a cycle if imported here
    from qspan.catalogue.sites import SiteSpec

# The anchor: a small ELF file nobody runs, one function symbol per site. bpftrace
# attaches each site's program there; qspan then attaches that program at the site.
ANCHOR_SYMBOL = "qspan_site_{}"
ANCHOR_SYMBOLS = 32  # how many the anchor file has (sites.txt may name at most this many functions)
ANCHOR_PATH = "/run/qspan/site-anchor-v1.elf"  # v1: ANCHOR_SYMBOLS symbols; a new layout gets a new name
# argN as bpftrace's builtin only (not $arg1, @arg1, ->arg1 or a word ending in arg1)
_ARG = re.compile(r"(?<![\w$@>.\"])arg(\d)\b")


@dataclass(frozen=True)
class Site:
    function: str
    file_offset: int  # where in the binary the probe goes (its function's offset + the site's)
    offset: int  # from the function's entry
    regs: tuple[str | None, ...]
    where: str  # the sites.txt line
    index: int = 0  # its anchor symbol: ANCHOR_SYMBOL.format(index)

    @property
    def anchor_symbol(self) -> str:
        return ANCHOR_SYMBOL.format(self.index)


def resolve(patterns: dict[str, tuple[SiteSpec, ...]], code: dict[str, tuple[int, bytes]]) -> dict[str, Site]:
    """FUNCTION -> its Site, for the functions whose code matches a pattern; numbered in name order."""
    found = {}
    for function in sorted(patterns):
        if function not in code:
            continue
        file_offset, entry = code[function]
        spec = next((s for s in patterns[function] if s.matches(entry)), None)
        if spec is not None:
            found[function] = Site(function, file_offset + spec.offset, spec.offset, spec.regs, spec.where, len(found))
    return found


def at_site(expr: str, site: Site, where: str) -> str:
    """A probe line's argument expression, with each argN read from its register at the site."""

    if re.search(r"(?<![\w$@>.\"])sarg\d", expr):
        # stack arguments are relative to %rsp, which the code before the site may have moved
        raise CatalogueError(f"{where}: sargN is not known at the site of {site.function} ({site.where})")

    def reg(m: re.Match) -> str:
        n = int(m.group(1))
        r = site.regs[n] if n < len(site.regs) else None
        if r is None:
            raise CatalogueError(f"{where}: arg{n} is not known at the site of {site.function} ({site.where})")
        return f'reg("{r}")'

    return _ARG.sub(reg, expr)
