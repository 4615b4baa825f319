"""When the live path falls behind: trace fewer sampling windows, each whole (pure)."""

from __future__ import annotations

class LoadShedder:
    """The live path's sampling factor, from how far behind it runs (pure: times are passed in).

    When the server falls behind the tracer (the dump it is handling is old, or
    events were lost), trace one sampling window in twice as many; when it has
    kept up for a while with room to spare (busy under `room` of the time, so
    twice the events would still fit), trace twice as many again. Shedding whole
    windows in BPF keeps every traced request whole, where falling behind loses
    events at random and leaves every span in flight incomplete.
    """

    def __init__(self, max_every: int = 32, behind_ns: int = 400_000_000, caught_up_ns: int = 150_000_000,
                 room: float = 0.4, settle_ns: int = 3_000_000_000, calm_ns: int = 10_000_000_000):
        self.max_every, self.behind_ns, self.caught_up_ns, self.room = max_every, behind_ns, caught_up_ns, room
        self.settle_ns, self.calm_ns = settle_ns, calm_ns
        self.every = 1
        self._changed_at: int | None = None
        self._calm_since: int | None = None

    def update(self, now_ns: int, lag_ns: int, busy: float, lost: int = 0) -> int:
        """The factor to use from now on; `busy` is the fraction of recent time spent correlating."""
        if self._changed_at is not None and now_ns - self._changed_at < self.settle_ns:
            return self.every  # let the last change take effect (a window or two, and the backlog)
        if lag_ns > self.behind_ns or lost:
            self._calm_since = None
            if self.every < self.max_every:
                self.every *= 2
                self._changed_at = now_ns
        elif lag_ns < self.caught_up_ns and busy < self.room:
            if self._calm_since is None:
                self._calm_since = now_ns
            elif now_ns - self._calm_since >= self.calm_ns and self.every > 1:
                self.every //= 2
                self._changed_at = self._calm_since = now_ns
        else:
            self._calm_since = None
        return self.every
