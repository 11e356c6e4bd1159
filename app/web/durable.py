"""A request that wrote durably is answered once its writes are on disk, and the loop goes on meanwhile.

A worker runs its handlers on its event loop's one thread. A durable write to SQLite commits
and then needs the database's log synced (`app.store.writer.LogSync`). Synced inline, the
loop stood still while the disk worked: no other request of the worker was read, handled or
answered, and one worker minted no faster with group commit than without. Inside this layer,
a durable write only numbers the sync it needs (`syncs_deferred`); the layer holds the
request's answer, has the log synced by a thread of its own, and sends the answer once a sync
that began after the write's commit is done. One sync runs at a time per log and covers every
write committed before it began, from however many requests; the loop handles others
meanwhile. A sync that fails answers the request `StoreUnavailable` ("unconfirmed", 503, by
`ErrorHandlers` outside this layer) in place of what the handler returned.

Outside this layer (the key page, tools, tests that call the store), a durable write still
syncs before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.errors import StoreUnavailable
from app.store.writer import LogSync, syncs_deferred


class DurableAnswerMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._syncer: ThreadPoolExecutor | None = None
        self._pid = 0
        self._under_way: dict[LogSync, asyncio.Future[None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        with syncs_deferred() as pending:

            async def hold(message: Message) -> None:
                if pending:  # written durably: nothing of the answer leaves before the sync
                    held.append(message)
                else:
                    await send(message)

            try:
                await self.app(scope, receive, hold)
            except BaseException:
                # Whatever answers the error (a 500, most likely) comes after the writes'
                # sync all the same; its own outcome is the error's.
                for log, ticket in pending:
                    await self._covered(log, ticket, quiet=True)
                raise
        for log, ticket in pending:
            await self._covered(log, ticket)
        for message in held:
            await send(message)

    async def _covered(self, log: LogSync, ticket: int, quiet: bool = False) -> None:
        """Return once a sync of `log` covered `ticket`; StoreUnavailable if one that did failed."""
        try:
            while not log.settled(ticket):
                loop = asyncio.get_running_loop()
                under_way = self._under_way.get(log)
                if under_way is None or under_way.done() or under_way.get_loop() is not loop:
                    # One sync for every ticket numbered so far (`LogSync.wait` covers them all).
                    under_way = loop.run_in_executor(self._thread(), log.wait, ticket)
                    self._under_way[log] = under_way
                # `settled` then tells whether this request's writes were in a sync that failed.
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.shield(under_way)
        except StoreUnavailable:
            if not quiet:
                raise

    def _thread(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # the app was built before a fork: that thread is not this process's
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-log-sync")
            self._pid = os.getpid()
        assert self._syncer is not None
        return self._syncer
