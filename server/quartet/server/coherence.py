"""Keep this process's caches (event types, API keys, accounts) in step with changes made through
any other process, worker or replica, as quartet.storage.changes announces them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import peewee

from quartet import storage
from quartet.server.auth import Authenticator
from quartet.server.events import Registry
from quartet.storage import changes
from quartet.storage.events import latest_event_types

logger = logging.getLogger(__name__)


class Coherence:
    """Applies announced changes to the caches; runs on the event loop, which owns them."""

    def __init__(
        self, authenticator: Authenticator, registry: Registry, runner: storage.DatabaseRunner
    ) -> None:
        self._authenticator = authenticator
        self._registry = registry
        self._runner = runner
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    def changed(self, topic: str, key: str | None) -> None:
        if topic == changes.API_KEYS:
            if key is None:
                self._authenticator.forget_keys()
            else:
                self._authenticator.forget_key(key)
        elif topic == changes.ACCOUNTS:
            if key is None or not key.isdigit():
                self._authenticator.forget_accounts()
            else:
                self._authenticator.forget_account(int(key))
        elif topic == changes.EVENT_TYPES:
            # At once: an event of the new type arriving before the reload ends is looked up.
            self._registry.forget_missing()
            self._reload_event_types()

    def _reload_event_types(self) -> None:
        """Reload every event type, once at a time: announcements arriving during a reload
        (a file of types registered at once) cost one more reload, not one each."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            since = self._registry.generation
            try:
                rows = await self._runner.run(latest_event_types)
            except Exception as exc:
                if not storage.unavailable(exc):
                    raise
                # The health watch reloads them as soon as the database is back.
                logger.warning("cannot reload the event types after a change: %s", exc)
                return
            self._registry.update(rows, since)
            if not self._reload_again:
                return

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)


@contextlib.asynccontextmanager
async def kept_coherent(
    database: peewee.Database,
    authenticator: Authenticator,
    registry: Registry,
    runner: storage.DatabaseRunner,
) -> AsyncIterator[Coherence]:
    """Follow the announced changes (a ChangeListener thread) for as long as the block runs."""
    loop = asyncio.get_running_loop()
    coherence = Coherence(authenticator, registry, runner)

    def on_change(topic: str, key: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the listener stopped
            loop.call_soon_threadsafe(coherence.changed, topic, key)

    listener = changes.ChangeListener(database, on_change)
    listener.start()
    try:
        yield coherence
    finally:
        await asyncio.to_thread(listener.close)
        await coherence.close()
