"""What the correlator needs to know of the traced process, read once from the recording header.

The header names the process's threads and the driver profile; the correlator
only ever asks a few fixed questions of it (is this thread's scheduling traced,
may this thread's syscalls be thread-pool work, is it a vCPU, what does the
profile call its phases), so they are answered here, once, into a frozen record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from qspan.catalogue import DEFAULT_ROLES


@dataclass(frozen=True, slots=True)
class CorrelatorConfig:
    watched: frozenset[int]  # threads whose scheduler events were traced: they get a timeline
    not_workers: frozenset[int]  # threads whose pread/pwrite are never thread-pool work
    vcpus: frozenset[int]  # threads whose notifier writes may be guest kicks
    roles: Mapping[str, str]  # phase and child names of the driver profile: driver, hop, spawn
    # what each event's probe hit costs its thread (ns) and whether it is a tracepoint: the spans'
    # own accounting (empty for recordings made before it, or without a calibration)
    event_cost_ns: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    tracepoints: frozenset[str] = frozenset()

    @classmethod
    def from_header(cls, header: dict) -> CorrelatorConfig:
        target = header.get("target", {})
        threads = target.get("threads", [])
        # Older recordings do not say which threads were watched: they watched every event loop.
        watched_tids = target.get("watched_tids")
        watched = frozenset(watched_tids) if watched_tids else frozenset(
            t["tid"] for t in threads if t.get("role") in ("main", "iothread"))
        # Named threads that are not pool workers (a driver's own threads, e.g. O's replica
        # thread) may do pread/pwrite too: their syscalls are not thread-pool work.
        not_workers = frozenset(
            t["tid"] for t in threads
            if t.get("role") == "main"
            or (t.get("role") != "worker" and t["tid"] not in watched
                and not t.get("comm", "").startswith("qemu-system"))
        )
        vcpus = frozenset(t["tid"] for t in threads if t.get("role") == "vcpu")
        roles = MappingProxyType(dict(DEFAULT_ROLES, **header.get("profile", {}).get("roles", {})))
        cost = header.get("self_cost") or {}
        event_cost_ns = MappingProxyType({ev: int(ns) for ev, ns in (cost.get("ns") or {}).items() if ns})
        tracepoints = frozenset(ev for ev, kind in (cost.get("kind") or {}).items() if kind == "tracepoint")
        return cls(watched, not_workers, vcpus, roles, event_cost_ns, tracepoints)
