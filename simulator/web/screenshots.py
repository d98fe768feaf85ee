"""``python -m simulator.web.screenshots OUT``: pictures of the workbench page in each mode, for the docs.

Each picture is taken after acting through the page itself, as a person
would: ``workbench-access.png`` after a refused and an approved badge (and
``workbench-access-broker-down.png`` with the broker down and a tap queued),
``workbench-pos.png`` after a sale sent from the cash-register panel and paid
with a union card, ``workbench-canteen.png`` after lunch served, refused a
second time, and served to another member. Needs Debian's chromium and the
``test`` extra (Playwright), and a pcscd of its own (run it under
``/work/helpers/isolated.sh`` or on a machine without pcscd).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..services import Mosquitto
from .benchrig import MODES, WorkbenchRig
from .browser import chromium_page
from .server import workbench

Scene = Callable[[Any, WorkbenchRig, Path], Awaitable[list[Path]]]


async def snap(page: Any, path: Path) -> Path:
    await page.screenshot(path=path, full_page=True)
    return path


async def tap(page: Any, card: str, expect: str) -> None:
    """Tap ``card`` from the rack and wait until the page shows the decision naming ``expect``."""
    await page.click(f"button[data-act=tap][data-card={card}]")
    await page.wait_for_selector(f"#last-body:has-text('{expect}')")


async def access_scene(page: Any, rig: WorkbenchRig, out: Path) -> list[Path]:
    for person in (rig.people[6], rig.people[3]):  # one refused (suspended), then one approved
        await tap(page, f"{person.member_no}-uid", person.member_no)
    await page.wait_for_selector("#feed tbody tr[data-acked=true]")
    saved = [await snap(page, out / "workbench-access.png")]
    await page.click("#broker-down")
    await page.wait_for_selector("#uplink-state[data-on=false]")
    await tap(page, f"{rig.people[0].member_no}-uid", rig.people[0].member_no)
    await page.wait_for_function("document.querySelector('#unsent').textContent === '1'")
    saved.append(await snap(page, out / "workbench-access-broker-down.png"))
    await page.click("#broker-up")
    await page.wait_for_function("document.querySelector('#unsent').textContent === '0'")
    return saved


async def pos_scene(page: Any, rig: WorkbenchRig, out: Path) -> list[Path]:
    await page.wait_for_selector("#ecr-send:not([disabled])")
    await page.fill("#ecr-amount", "19.99")
    await page.click("#ecr-send")
    await page.wait_for_selector("#ecr-state[data-waiting=true]")
    await tap(page, f"{rig.people[0].member_no}-union", rig.people[0].member_no)
    await page.wait_for_selector("#ecr-reply[data-decision=A]")
    await page.wait_for_selector("#feed tbody tr[data-acked=true]")
    return [await snap(page, out / "workbench-pos.png")]


async def canteen_scene(page: Any, rig: WorkbenchRig, out: Path) -> list[Path]:
    first, other = rig.people[0], rig.people[2]
    await tap(page, f"{first.member_no}-uid", "ok")
    await tap(page, f"{first.member_no}-uid", "already_served")
    await tap(page, f"{other.member_no}-uid", other.member_no)
    await page.wait_for_selector("#feed tbody tr[data-seq='3'][data-acked=true]")
    return [await snap(page, out / "workbench-canteen.png")]


SCENES: dict[str, Scene] = {"access": access_scene, "pos": pos_scene, "canteen": canteen_scene}


async def shoot(out: Path, mode: str) -> list[Path]:
    """Run a workbench in ``mode``, act on it through the page, and save the pictures."""
    work = Path(tempfile.mkdtemp(prefix="unionterm-shots-"))
    os.chmod(work, 0o755)  # mosquitto, running as its own user, saves its sessions in here
    broker = Mosquitto(workdir=work / "mosquitto", persistent=True)
    await asyncio.to_thread(broker.start)
    try:
        async with WorkbenchRig(work / "rig", mode=mode, broker=broker, capture=False) as rig, \
                workbench(rig) as (_bench, url), chromium_page() as page:
            await page.goto(url)
            await page.wait_for_selector("#page-link[data-on=true]")
            await page.wait_for_selector(f"button[data-act=tap][data-card={rig.people[0].member_no}-uid]")
            return await SCENES[mode](page, rig, out)
    finally:
        await asyncio.to_thread(broker.stop)
        shutil.rmtree(work, ignore_errors=True)


async def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for mode in MODES:
        for path in await shoot(out, mode):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))))
