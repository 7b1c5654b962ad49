"""Bounded waits, shared by every integration test: poll for the condition a
test depends on, never sleep a fixed time and hope. A wait that runs out
raises TimeoutError naming what it waited for.

To prove that something does NOT happen, do not wait and see: send a later
marker through the same path and wait for it; whatever should not have
happened would have happened before it (see `handled` in conftest)."""

import asyncio
import inspect
import time


def wait_until(predicate, timeout=20.0, interval=0.05, what="the condition"):
    """Poll `predicate()` until it is true; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(predicate, timeout=20.0, interval=0.05, what="the condition"):
    """`wait_until` for the event loop: the clients keep running while it
    waits. `predicate` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
