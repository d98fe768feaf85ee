"""Card challenges come from a pool of OS random bytes: fetched ahead, never handed out twice."""

from __future__ import annotations

import threading

import pytest

from terminal.cards import desfire, entropy
from terminal.cards.entropy import RandomPool


def test_takes_are_fresh_across_refills(monkeypatch) -> None:
    drawn: list[int] = []
    real = entropy.os.urandom

    def counting(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(entropy.os, "urandom", counting)
    pool = RandomPool(64)
    taken = [pool.take(16) for _ in range(40)]
    assert len(set(taken)) == 40 and all(len(t) == 16 for t in taken)
    assert drawn == [64] * 10  # four challenges per OS call, no byte handed out twice


def test_a_take_that_does_not_fit_what_is_left_starts_a_fresh_batch(monkeypatch) -> None:
    batches = iter([bytes(range(32)), bytes(range(100, 132))])
    monkeypatch.setattr(entropy.os, "urandom", lambda n: next(batches))
    pool = RandomPool(32)
    assert pool.take(20) == bytes(range(20))
    assert pool.take(16) == bytes(range(100, 116))  # 12 left were too few: not reused, not mixed
    assert pool.take(16) == bytes(range(116, 132))


def test_more_than_the_pool_holds_comes_straight_from_the_os() -> None:
    assert len(RandomPool(16).take(40)) == 40
    with pytest.raises(ValueError):
        RandomPool(0)


def test_threads_never_get_the_same_bytes() -> None:
    pool = RandomPool(48)
    out: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [pool.take(16) for _ in range(500)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2000 and len(set(out)) == 2000


def test_each_handshake_draws_its_own_rnd_a() -> None:
    key = bytes(16)
    commands = set()
    for _ in range(50):
        handshake = desfire.AuthenticateEv2First(key, 1)
        commands.add(handshake._rnd_a)
    assert len(commands) == 50
