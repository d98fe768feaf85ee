"""The terminal, its benches and its tests run on the loop :mod:`terminal.eventloop` names."""

from __future__ import annotations

import asyncio

import uvloop

from terminal import eventloop


async def _loop_kind() -> type:
    return type(asyncio.get_running_loop())


def test_run_runs_on_uvloop_and_returns_the_result() -> None:
    assert eventloop.run(_loop_kind()) is uvloop.Loop


async def test_async_tests_run_on_the_terminals_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
