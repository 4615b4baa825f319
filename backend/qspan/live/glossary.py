"""What each phase and what-ran-instead category means, in the words of docs/spans-schema.md.

The dashboard's hover text. tests/unit/test_docs.py holds every text here to the schema's
own ("`name`: text" in its Phase and Handoff tables), so the two cannot drift apart.
A profile's driver and hop phases are named by its roles (e.g. `O`, `replication`):
`phase_meanings` puts the profile's names on them.
"""

from __future__ import annotations

PHASES = {
    "kick": "from the guest's kick until the device model picked the request up (only the first request after a "
            "kick gets one: requests that came without a kick of their own are not charged)",
    "submit": "from `req.submit` until the coroutine first yields (or until the driver starts, with a profile)",
    "driver": "from `drv.enter` until the coroutine yields",
    "hop": "from the yield until the hop's thread finished (`drv.hop_done`)",
    "callback": "from there until the callback signalled the coroutine",
    "ack": "from the driver's `drv.ack` until the device model's ack",
    "queue": "handed to the thread pool until a worker starts the syscall",
    "device": "the worker's syscall",
    "remote": "waiting for another thread (e.g. a replication callback) until it signalled the coroutine",
    "wait": "waiting with no known signal",
    "pool": "a pool hop whose worker syscall was not seen",
    "handoff": "ready until the coroutine is entered again",
    "run": "running between two waits",
    "complete": "the last running stretch until the ack (or termination)",
}

INSTEAD = {
    "other_requests": "the coroutines of other guest requests",
    "spawned": "coroutines requests started and did not await, this one's or others': with the lab-o profile, "
               "B's writes",
    "block_job": "a block job's coroutines: its loop and its requests",
    "background": "coroutines of no traced request or job",
    "event_loop": "on CPU outside coroutines: polling, bottom halves",
    "asleep": "off CPU, sleeping",
    "runnable": "woken but waiting for a CPU",
    "unwatched": "the whole delay, when qspan does not trace that thread's scheduling: the main loop of a QEMU "
                 "with iothreads, whose scheduler qspan leaves out for cost, or an iothread created after attach; "
                 "what the thread did is then not known",
}


def phase_meanings(roles: dict[str, str] | None) -> dict[str, str]:
    """Phase name -> meaning, the profile's driver and hop roles under their own names."""
    out = {k: v for k, v in PHASES.items() if k not in ("driver", "hop")}
    for role in ("driver", "hop"):
        name = (roles or {}).get(role)
        if name:
            out[name] = f"the profile's {role} role ({name}): {PHASES[role]}"
    return out
