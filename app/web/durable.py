"""A request that wrote durably is answered once its writes are on disk, and the loop goes on meanwhile.

A worker runs its handlers on its event loop's one thread. A durable write to SQLite commits
and then needs the database's log synced (`app.store.writer.LogSync`). Synced inline, the
loop stood still while the disk worked: no other request of the worker was read, handled or
answered, and one worker minted no faster with group commit than without. Inside this layer,
a durable write only numbers the sync it needs (`syncs_deferred`); the layer holds the
request's answer, has the log synced by a thread of its own, and sends the answer once a sync
that began after the write's commit is done. One sync runs at a time per log and covers every
write committed before it began, from however many requests; the loop handles others
meanwhile. A durable write that committed nothing (a name already taken, a key already
revoked) waits the same way for a sync of what it found (`writer.relied_on`). Reads pass
straight through: the rare one that writes durably (a new account's first list) syncs inline.

A sync that fails, raises, or has not ended within SYNC_TIMEOUT_S answers each request it was
to confirm `StoreUnavailable` ("unconfirmed", 503, by `ErrorHandlers` outside this layer) in
place of what the handler returned, its error included. A durable write made outside this
layer (`/dev/login` in development, the command-line tools) still syncs before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.errors import StoreUnavailable
from app.store.writer import Deferred, LogSync, syncs_deferred, unconfirmed
from app.web.errors import request_id_in

# As long as a write waits for the write lock (the store's busy timeout), then 503: a disk
# that does not answer is not waited on for good, while the loop goes on answering others.
SYNC_TIMEOUT_S = 5.0
READS = frozenset({"GET", "HEAD", "OPTIONS"})

log = logging.getLogger("app.errors")


class DurableAnswerMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._syncer: ThreadPoolExecutor | None = None
        self._pid = 0
        self._under_way: dict[LogSync, asyncio.Future[None]] = {}
        self._timeout_logged: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            # A read that writes durably (a first sign-in's account) syncs before it goes on:
            # rare, and reads (whoami, the gateway check) pay nothing for this layer.
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
            except Exception as error:
                # The error is answered outside, after the writes' sync all the same; if that
                # failed, the answer says what a client must know: the change may be saved.
                await self._confirm(pending, scope, cause=error)
                raise
        await self._confirm(pending, scope)
        for message in held:
            await send(message)

    async def _confirm(self, pending: Deferred, scope: Scope, cause: Exception | None = None) -> None:
        """Return once every (log, ticket) of `pending` is covered by a sync; StoreUnavailable if one is not."""
        if not pending:
            return
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):  # no task of its own, unlike `wait_for`
                for log_sync, ticket in pending:
                    await self._covered(log_sync, ticket)
        except (TimeoutError, StoreUnavailable) as error:
            if isinstance(error, TimeoutError):
                self._timed_out()
            if cause is not None:  # answered 503 in its stead: logged here, as a 500 would have been
                log.error("request %s failed", request_id_in(scope), exc_info=cause)
            raise unconfirmed() from cause

    async def _covered(self, log_sync: LogSync, ticket: int) -> None:
        """Return once a sync of `log_sync` covered `ticket`; StoreUnavailable if the one that did failed."""
        while not log_sync.settled(ticket):
            loop = asyncio.get_running_loop()
            under_way = self._under_way.get(log_sync)
            if under_way is None or under_way.done() or under_way.get_loop() is not loop:
                # One sync for every ticket numbered so far (`LogSync.wait` covers them all).
                under_way = loop.run_in_executor(self._thread(), log_sync.wait, ticket)
                self._under_way[log_sync] = under_way
            # `settled` then tells whether this request's writes were in a sync that failed.
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(under_way)

    def _timed_out(self) -> None:
        """Say in the log that a sync did not end in time (a failed one says so itself), once per SYNC_TIMEOUT_S."""
        now = time.monotonic()
        if self._timeout_logged is None or now - self._timeout_logged >= SYNC_TIMEOUT_S:
            self._timeout_logged = now
            log.warning("syncing the SQLite log did not end within %g s: the writes waiting on it were "
                        "answered 503 (unconfirmed)", SYNC_TIMEOUT_S)

    def _thread(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():  # the app was built before a fork: that thread is not this process's
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-log-sync")
            self._pid = os.getpid()
        assert self._syncer is not None
        return self._syncer
