"""``unionterm-sim demo``: a complete simulated terminal and a scripted set of taps.

Everything real except the cards, pins and display memory: a private pcscd
with a vpcd reader, a mosquitto broker, the production terminal code. Prints
one line per tap and the MQTT messages the back office would receive, and
leaves the screens as PNG files.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from terminal.cardref import card_ref

from .cards.uid import UidCard
from .observer import Observer
from .rig import Rig


@dataclass(frozen=True)
class Step:
    """One scripted tap: who, what card, and a label for the screen file."""

    label: str
    card: UidCard
    block_first: bool = False


def script(rig: Rig) -> list[Step]:
    people = rig.people
    suspended = next(p for p in people if p.status == "suspended")
    return [
        Step(f"member {people[0].member_no}", UidCard(people[0].uid)),
        Step("stranger", UidCard(bytes.fromhex("04C0FFEE123456"))),
        Step(f"suspended {suspended.member_no}", UidCard(suspended.uid)),
        Step(f"blocked card of {people[1].member_no}", UidCard(people[1].uid), block_first=True),
        Step(f"member {people[2].member_no}", UidCard(people[2].uid)),
    ]


def save_screen(src: Path, dest: Path) -> None:
    """Keep the screen at its true 128x64 size, and a 4x copy that is easy to look at."""
    shutil.copy(src, dest)
    with Image.open(src) as image:
        image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(
            dest.with_name(dest.stem + "@4x.png"))


def _print(line: str) -> None:
    print(line, flush=True)


async def run_demo(out: Path, mode: str = "access") -> int:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    shutil.rmtree(out / "work", ignore_errors=True)
    async with Rig(out / "work", mode=mode) as rig:
        _print(f"unionterm demo: mode {mode}, terminal {rig.config.terminal.id}, "
               f"pcscd reader {rig.reader_name!r}, mosquitto 127.0.0.1:{rig.broker.port}")
        display = rig.hardware.display
        if display is not None and display.last_capture is not None:
            save_screen(display.last_capture, out / "00-idle.png")
        async with Observer(rig.broker.port).running() as seen:
            for n, step in enumerate(script(rig), start=1):
                if step.block_first:
                    rig.terminal.members.block(card_ref(rig.card_key, "uid", step.card.uid), "lost", 0)
                outcome = await rig.tap(step.card)
                member = outcome.lookup.member if outcome.lookup else None
                who = f"{member.member_no} {member.name}" if member else "-"
                _print(f"tap {n}: {step.label:<28} card {step.card.uid.hex().upper():<14} member {who:<16} "
                       f"-> {outcome.decision.verdict.value.upper():<7} {outcome.decision.reason:<16} "
                       f"{outcome.timings_ms['decide']:6.2f} ms")
                if display is not None and display.last_capture is not None:
                    name = f"{n:02d}-{outcome.decision.verdict.value}-{outcome.decision.reason}.png"
                    save_screen(display.last_capture, out / name)
            await seen.wait_for("/tx", len(rig.outcomes), timeout=15)
        _print("MQTT messages seen by the back office:")
        for msg in seen.messages:
            text = msg.payload.decode("utf-8", "replace")
            _print(f"  {msg.topic}{' (retained)' if msg.retain else ''}: {text[:160]}")
    _print(f"screens (PNG, 128x64): {out.resolve()}")
    return 0


def main(out: str, mode: str) -> int:
    return asyncio.run(run_demo(Path(out), mode))
