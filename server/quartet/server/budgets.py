"""What one worker lets each kind of call hold, so that no kind of caller can starve the others.

gRPC's own limit (`maximum_concurrent_rpcs`) is one pool shared by every call, so anonymous health
watches or one key's idle streams could fill it and leave signed-in callers nothing. Like Envoy's
circuit breakers per priority and its overload manager, calls are sorted into pools of their own,
each with a budget a call takes when it starts and gives back when it ends, however it ends:

- signed-in unary calls per worker (QUARTET_MAX_CONCURRENT_RPCS);
- anonymous unary calls (calls that present no credential: login, sign-up) per worker;
- health checks per worker (HEALTH_CHECKS), so that no other kind can fail a load balancer's probe;
- anonymous streams (health watches, reflection) per worker;
- signed-in streams (StreamEvents, ImportExperimentData) per worker, and per caller (an account,
  or an application whichever of its keys it uses);
- the bytes of replies built but not yet delivered (a client reading slowly holds them) per
  worker.

A call past a budget is refused with RESOURCE_EXHAUSTED, reason LIMIT_EXCEEDED, the metadata
naming the budget and its limit. gRPC's limit is the sum of the call budgets, so
that no kind can fill it: each has its own share, whatever the others do.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import ResourceExhausted

logger = logging.getLogger(__name__)

# After replies of this many bytes in all, memory is handed back to the system (see _trim_heap)
# once TRIM_DELAY seconds pass without another reply given back or refused.
TRIM_AFTER_BYTES = 16 * 1024 * 1024
TRIM_DELAY = 1.0


@dataclass(frozen=True)
class Limits:
    """The budgets of one worker (see the module's docstring)."""

    signed_in_calls: int
    anonymous_calls: int
    anonymous_streams: int
    streams: int
    streams_per_caller: int
    reply_bytes: int
    health_checks: int = 100  # plenty: a probe waits for its answer, answered from memory

    @property
    def calls(self) -> int:
        """Every call budget together: gRPC's own limit, which they fill before it."""
        return (
            self.signed_in_calls
            + self.anonymous_calls
            + self.health_checks
            + self.anonymous_streams
            + self.streams
        )


class Lease:
    """What one call holds of a budget; given back once, by whichever of the call's endings
    (its handler's exit, gRPC's done callback) comes first."""

    def __init__(self, pool: Pool, key: str, amount: int) -> None:
        self._pool = pool
        self._key = key
        self._amount = amount

    def release(self) -> None:
        if self._amount:
            self._pool.give_back(self._key, self._amount)
            self._amount = 0


class Pool:
    """A budget counted per key ("" for the one worker-wide count)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.held: Counter[str] = Counter()

    def take(self, amount: int = 1, key: str = "", *, force: bool = False) -> Lease:
        """A lease of amount, or ResourceExhausted if the key would hold more than the limit
        (unless forced: counted all the same, so that later calls are refused instead). A single
        amount larger than the whole budget is refused too: it could never fit."""
        if self.held[key] + amount > self.limit and not force:
            raise ResourceExhausted(
                f"the server is at its limit of {self.name.replace('_', ' ')} "
                f"({self.limit}); retry later",
                reason=error_reason_pb2.LIMIT_EXCEEDED,
                metadata={"budget": self.name, "limit": str(self.limit)},
            )
        self.held[key] += amount
        return Lease(self, key, amount)

    def give_back(self, key: str, amount: int) -> None:
        self.held[key] -= amount
        if self.held[key] <= 0:
            del self.held[key]


class ReplyBytes(Pool):
    """The reply-bytes budget, which also hands memory back to the system after large replies
    came and went (held, or refused once built): glibc keeps freed memory in its arenas, so
    without a trim a worker would stay at its high-water mark long after the replies are gone."""

    def __init__(self, limit: int) -> None:
        super().__init__("reply_bytes", limit)
        self._churn = 0  # bytes of replies taken or refused since the last trim
        self._trim: asyncio.TimerHandle | None = None

    def take(self, amount: int = 1, key: str = "", *, force: bool = False) -> Lease:
        self._churn += amount
        try:
            return super().take(amount, key, force=force)
        except ResourceExhausted:
            self._trim_soon()
            raise

    def give_back(self, key: str, amount: int) -> None:
        super().give_back(key, amount)
        self._trim_soon()

    def _trim_soon(self) -> None:
        """Trim once the burst is over (trimming takes milliseconds: not after every call)."""
        if self._churn < TRIM_AFTER_BYTES:
            return
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        self._churn = 0
        _trim_heap()


class Budgets:
    """One worker's pools."""

    def __init__(self, limits: Limits) -> None:
        self.signed_in_calls = Pool("signed_in_calls", limits.signed_in_calls)
        self.anonymous_calls = Pool("anonymous_calls", limits.anonymous_calls)
        self.health_checks = Pool("health_checks", limits.health_checks)
        self.anonymous_streams = Pool("anonymous_streams", limits.anonymous_streams)
        self.streams = Pool("streams", limits.streams)
        self.streams_per_caller = Pool("streams_per_caller", limits.streams_per_caller)
        self.reply_bytes = ReplyBytes(limits.reply_bytes)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc
    return trim


_malloc_trim = _load_malloc_trim()


def _trim_heap() -> None:
    """Free what only reference cycles still hold (a refused call's traceback holds its reply),
    then hand glibc's free memory back to the system (a no-op on other C libraries), in a thread:
    trimming a large heap takes milliseconds, and ctypes lets the event loop run meanwhile."""
    gc.collect()
    if _malloc_trim is not None:
        asyncio.get_running_loop().run_in_executor(None, _malloc_trim, 0)
