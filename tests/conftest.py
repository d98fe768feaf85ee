"""Fixtures that start the real stacks the integration tests run on.

pcscd (with a private vpcd reader.conf) is started once per session, since
only one can run per machine; each test gets its own mosquitto on a private
loopback port. Both are stopped by pid at the end. Nothing here skips: a
missing pcscd or mosquitto is an error that says what to install.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest

from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd
from terminal import eventloop, logs


def pytest_configure(config: pytest.Config) -> None:
    logs.setup("debug" if config.getoption("verbose") > 1 else "info")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the loop the terminal ships with (its StateGuard included)."""
    return {"guarded": eventloop.new_event_loop}


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    with Pcscd(workdir=tmp_path_factory.mktemp("pcscd")) as service:
        yield service


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(workdir=tmp_path / "mosquitto", persistent=True) as service:
        yield service


@pytest.fixture
async def rig(tmp_path: Path, pcscd: Pcscd, broker: Mosquitto) -> AsyncIterator[Rig]:
    if not pcscd.running:  # a test that stopped it must not break the next one
        pcscd.start()
    async with Rig(tmp_path / "rig", pcscd=pcscd, broker=broker, pulse_ms=400) as running:
        yield running


@pytest.fixture(autouse=True)
def _quiet_libraries() -> None:
    logging.getLogger("asyncio").setLevel(logging.WARNING)
