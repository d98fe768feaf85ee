"""The workbench page, driven in headless Chromium against a whole simulated terminal.

Real pcscd + vpcd, real mosquitto, the production terminal, the aiohttp
server and the page's own JavaScript: a click on the page must end as a
decision on the terminal, and what the terminal did must come back to the
page (its screen bit for bit, the relay, the back office's feed, the queue,
the cash register's answer frame). Blocks and member changes travel as the
back office's signed hot list and delta, through the terminal's member sync.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from PIL import Image

from simulator.demo import CANTEEN, local_unix
from simulator.rig import sim_config_text
from simulator.services import Mosquitto, Pcscd
from simulator.web.benchrig import WorkbenchRig, next_local, scene_time
from simulator.web.browser import chromium_page
from simulator.web.feed import Feed
from simulator.web.server import workbench
from simulator.web.wire import (FeedAck, FeedTx, changes, frame_bits, frame_payload, frame_view, parse_feed,
                                parse_yuan, wire_text)
from simulator.web.workbench import Workbench
from terminal.config import parse
from terminal.ecr import FrameError, Reply, Sale, encode
from terminal.exceptions import PayloadError
from terminal.modes.pos import PendingSale
from terminal.rules.canteen import current_window
from terminal.screens import money
from terminal.ui import Screen, render

pytestmark = pytest.mark.stack

CANVAS_PIXELS = """() => {
  const c = document.querySelector('#oled');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const lit = [];
  for (let i = 0; i < d.length; i += 4) lit.push(d[i] + d[i + 1] + d[i + 2] > 0 ? 1 : 0);
  return {w: c.width, h: c.height, frame: Number(c.dataset.frame), lit};
}"""

#: Remember whether the page ever showed the relay energised (the pulse is shorter than a round trip or two).
WATCH_RELAY = """() => {
  const lamp = document.querySelector('#out-relay');
  window.relaySeen = false;
  new MutationObserver(() => { window.relaySeen ||= lamp.dataset.on === 'true'; })
    .observe(lamp, {attributes: true});
}"""


@pytest.fixture
def saving_broker() -> Iterator[Mosquitto]:
    """A broker that keeps sessions and queued messages over a restart, as a real one does.

    mosquitto drops root for its own user, which cannot write under pytest's
    0700 temporary folders, so this one lives in a folder it can reach.
    """
    folder = Path(tempfile.mkdtemp(prefix="unionterm-webtest-"))
    os.chmod(folder, 0o755)
    service = Mosquitto(workdir=folder / "mosquitto", persistent=True)
    service.start()
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def bench(tmp_path: Path, pcscd: Pcscd, saving_broker: Mosquitto) -> AsyncIterator[tuple[Workbench, str]]:
    if not pcscd.running:
        pcscd.start()
    async with WorkbenchRig(tmp_path / "rig", pcscd=pcscd, broker=saving_broker, capture=False) as rig, \
            workbench(rig) as served:
        yield served


def lit_pixels(image: Image.Image) -> list[int]:
    mono = image.convert("1")
    return [1 if mono.getpixel((x, y)) else 0 for y in range(mono.height) for x in range(mono.width)]


def alert_band(lit: list[int], width: int = 128) -> bool:
    """A refusal's headline is drawn inverted: the top row of the screen is lit from edge to edge."""
    return all(lit[:width])


async def text_of(page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def open_page(page, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("#page-link[data-on=true]")


@contextlib.asynccontextmanager
async def page_in_mode(url: str, mode: str) -> AsyncIterator:
    """The page, after restarting the terminal in ``mode`` from its mode panel (back once it says it runs)."""
    async with chromium_page() as page:
        await open_page(page, url)
        await page.click(f"#mode-choices button[data-mode={mode}]")
        await page.wait_for_selector(f"#term-mode:text-is('{mode}')")
        await page.wait_for_selector("#term-state[data-on=true]")
        yield page


async def page_shows_terminal_screen(page, wb: Workbench) -> list[int]:
    """What the OLED shows now, once the page's canvas shows the same frame; the canvas must equal it."""
    display = wb.rig.hardware.display
    frame, shown = display.frames, lit_pixels(display.device.image)
    await page.wait_for_function(f"document.querySelector('#oled').dataset.frame === '{frame}'")
    assert (await page.evaluate(CANVAS_PIXELS))["lit"] == shown
    return shown


async def tap_on_page(page, card: str, seq: int) -> None:
    await page.click(f"button[data-act=tap][data-card={card}]")
    await page.wait_for_selector(f"#last[data-seq='{seq}']")


async def test_page_taps_member_shows_screen_and_feed_then_queues_while_broker_down(
        bench: tuple[Workbench, str]) -> None:
    wb, url = bench
    rig = wb.rig
    member, other = rig.people[0], rig.people[2]
    display = rig.hardware.display
    async with chromium_page() as page:
        await page.goto(url)
        await page.wait_for_selector("#page-link[data-on=true]")
        await page.wait_for_selector(f"button[data-act=tap][data-card={member.member_no}-uid]:not([disabled])")

        # Tap the member's badge from the page: approved, and the page's OLED is the terminal's, bit for bit.
        idle = display.device.image.copy()
        await page.evaluate(WATCH_RELAY)
        await page.click(f"button[data-act=tap][data-card={member.member_no}-uid]")
        await page.wait_for_selector("#last[data-verdict=approve]")
        assert f"{member.member_no} {member.name}" in await text_of(page, "#last-body")
        await page.wait_for_function("window.relaySeen")  # the 400 ms relay pulse reached the page
        shown_frame, shown = display.frames, display.device.image.copy()
        outcome = rig.outcomes[-1]
        assert outcome.decision.approved and outcome.lookup.member.member_no == member.member_no
        assert lit_pixels(shown) != lit_pixels(idle), "the terminal still shows its idle screen"
        assert not alert_band(lit_pixels(shown)), "an approval is drawn like a refusal"
        await page.wait_for_function(f"document.querySelector('#oled').dataset.frame === '{shown_frame}'")
        canvas = await page.evaluate(CANVAS_PIXELS)
        assert (canvas["w"], canvas["h"]) == (128, 64)
        assert canvas["lit"] == lit_pixels(shown)
        box = await page.locator("#oled").bounding_box()
        assert box is not None and (box["width"], box["height"]) == (512, 256)  # scaled up 4x, whole pixels

        # The back office received it, and acknowledged it.
        row = page.locator("#feed tbody tr[data-seq='1']")
        await row.wait_for()
        cells = await row.locator("td").all_text_contents()
        assert member.member_no in cells and "approve" in cells
        await page.wait_for_selector("#feed tbody tr[data-seq='1'][data-acked=true]")

        # Broker down from the page: a tap is decided and journaled, and waits in the queue.
        await page.click("#broker-down")
        await page.wait_for_selector("#broker-state[data-on=false]")
        await page.wait_for_selector("#uplink-state[data-on=false]")
        assert not rig.broker.running
        await page.click(f"button[data-act=tap][data-card={other.member_no}-uid]")
        await page.wait_for_selector("#last[data-seq='2'][data-verdict=approve]")
        await page.wait_for_function("document.querySelector('#unsent').textContent === '1'")
        assert await rig.terminal.journal.backlog() == 1
        assert await page.locator("#feed tbody tr[data-seq='2']").count() == 0

        # Broker up: the queue drains to 0 and the record reaches the back office.
        await page.click("#broker-up")
        await page.wait_for_selector("#broker-state[data-on=true]")
        await page.wait_for_function("document.querySelector('#unsent').textContent === '0'")
        assert await rig.terminal.journal.backlog() == 0
        row = page.locator("#feed tbody tr[data-seq='2']")
        await row.wait_for()
        assert other.member_no in await row.locator("td").all_text_contents()


async def test_actions_reach_the_terminal_and_refusals_say_why(bench: tuple[Workbench, str]) -> None:
    wb, url = bench
    rig = wb.rig
    person = rig.people[1]
    async with aiohttp.ClientSession() as http:
        async def post(action: str, **body: object) -> tuple[int, dict]:
            async with http.post(url + f"api/{action}", json=body) as response:
                return response.status, await response.json()

        # Another Host (a rebinding page) is refused before anything happens.
        async with http.post(url + "api/broker", json={"up": False},
                             headers={"Host": "evil.example:80"}) as response:
            assert response.status == 403
        assert rig.broker.running

        # Blocking a card in the back-office panel: a signed hot list reaches the terminal's member sync,
        # and the next tap of that card is refused as blocked.
        sync = rig.terminal.sync
        assert sync is not None and rig.terminal.members.held["all"].version == 1  # the back office's snapshot
        await until(lambda: wb.state.get("office", {}).get("reported") == {rig.config.terminal.id: {
            "lists": {"all": 1}, "hotlist": 0}})  # ... and the terminal's report that it holds it
        status, answer = await post("block", card=f"{person.member_no}-uid", blocked=True)
        assert (status, answer["blocked"], answer["hotlist"], answer["applied"]) == (200, True, 1, True)
        assert rig.terminal.members.hotlist_state().version == 1 and not sync.refused
        status, answer = await post("tap", card=f"{person.member_no}-uid")
        assert status == 200 and answer["decision"]["reason"] == "card_blocked"
        state = await wb.poll()
        assert state["oled"]["frame"] == rig.hardware.display.frames
        assert alert_band(frame_bits(state["oled"])) and frame_bits(state["oled"]) == lit_pixels(
            rig.hardware.display.device.image)
        status, answer = await post("block", card=f"{person.member_no}-uid", blocked=False)
        assert (answer["blocked"], answer["hotlist"]) == (False, 2)
        status, answer = await post("tap", card=f"{person.member_no}-uid")
        assert answer["decision"]["verdict"] == "approve"

        # A member suspended in the back office: a signed delta, and the terminal refuses them by status.
        suspended = rig.people[3]
        status, answer = await post("delta", member=suspended.member_no, status="suspended")
        assert (status, answer["version"], answer["applied"], answer["status"]) == (200, 2, True, "suspended")
        assert rig.terminal.members.held["all"].version == 2 and not sync.refused
        status, answer = await post("tap", card=f"{suspended.member_no}-union")  # every card of theirs
        assert answer["decision"]["reason"] == "member_suspended"
        status, answer = await post("delta", member=suspended.member_no, status="suspended")
        assert status == 409 and "already" in answer["error"]
        state = await wb.poll()
        assert state["office"]["published"]["version"] == state["office"]["terminal"]["version"] == 2
        assert state["office"]["reported"][rig.config.terminal.id]["lists"] == {"all": 2}

        # The door contact and the exit button drive the terminal's real input pins.
        status, _ = await post("door", open=True)
        assert status == 200 and rig.pin("door").state  # released contact: door open
        await post("door", open=False)
        assert not rig.pin("door").state

        # A held card stays on the reader until lifted.
        await post("place", card="stranger-uid")
        assert wb.held is not None and wb.held[0] == "stranger-uid"
        await post("lift")
        assert wb.held is None

        # What cannot be done says why, and changes nothing.
        status, answer = await post("mode", mode="bakery")
        assert status == 409 and "bakery" in answer["error"]
        status, answer = await post("tap", card="no-such-card")
        assert status == 409 and "no card" in answer["error"]
        status, answer = await post("ecr-sale", amount="19.99")
        assert status == 409 and "switch to pos" in answer["error"] and not rig.ecr.received
        status, answer = await post("key", key="E")
        assert status == 409 and "no key" in answer["error"]

        # Restarting the terminal (same mode) from the page: a new terminal that still serves taps.
        before = rig.terminal
        status, answer = await post("mode", mode="access")
        assert (status, answer["mode"]) == (200, "access") and rig.terminal is not before
        status, answer = await post("tap", card=f"{person.member_no}-uid")
        assert answer["decision"]["verdict"] == "approve"
        state = await wb.poll()
        assert state["last"]["member_no"] == person.member_no and state["terminal"]["state"] == "running"
        assert rig.terminal.members.held["all"].version == 2  # the list survives the restart


async def test_pos_sale_from_the_cash_register_panel_then_an_amount_keyed_on_the_page(
        bench: tuple[Workbench, str]) -> None:
    wb, url = bench
    rig, member = wb.rig, wb.rig.people[0]
    async with page_in_mode(url, "pos") as page:
        assert rig.ecr_linked and rig.config.pos is not None
        await page.wait_for_selector("#ecr-send:not([disabled])")

        # The cash register asks for the discount on ¥19.99; the terminal shows the sale and waits for a card.
        await page.fill("#ecr-amount", "19.99")
        await page.click("#ecr-send")
        await page.wait_for_selector("#ecr-state[data-waiting=true]")
        await until(lambda: isinstance(rig.terminal.mode.pending, PendingSale))
        pending = rig.terminal.mode.pending
        assert pending.amount_fen == 1999 and pending.seq is not None

        # The member taps: the REPLY frame comes back over the pty and the page shows it.
        await tap_on_page(page, f"{member.member_no}-uid", 1)
        await page.wait_for_selector("#last[data-verdict=approve]")
        await page.wait_for_selector("#ecr-reply[data-decision=A]")
        reply = rig.ecr.received[-1]
        assert isinstance(reply, Reply) and reply.seq == pending.seq
        # [pos] pharmacy, tier 1: 500 bp of ¥19.99, rounded down to the fen; the member pays the rest.
        assert (reply.approved, reply.amount_fen, reply.discount_fen, reply.to_pay_fen) == (True, 1999, 99, 1900)
        shown = await text_of(page, "#ecr-reply")
        assert all(part in shown for part in ("APPROVED", "¥19.99", "discount ¥0.99", "to pay ¥19.00", reply.tx_id))

        # The subsidy screen, from the numbers the cash register received, is what the terminal and the page show.
        subsidy = Screen("交易成功", (f"原价 {money(reply.amount_fen)}", f"优惠 {money(reply.discount_fen)}",
                                    f"实付 {money(reply.to_pay_fen)}"))
        assert await page_shows_terminal_screen(page, wb) == lit_pixels(render(subsidy))

        # A keypad press reaches the terminal: the cashier keys ¥12.50 on the page's keypad instead.
        for key in "1250#":
            await page.click(f"#keys button[data-key='{key}']")
            await page.wait_for_selector(f"#keys button[data-key='{key}']:not([disabled])")
        await until(lambda: rig.terminal.mode.pending == PendingSale(1250))
        await tap_on_page(page, f"{member.member_no}-uid", 2)
        decision = rig.outcomes[-1].decision
        assert (decision.approved, decision.amount_fen, decision.subsidy_fen + decision.to_pay_fen) == (True, 1250, 1250)
        assert "¥12.50" in await text_of(page, "#last-body")
        assert len([f for f in rig.ecr.received if isinstance(f, Reply)]) == 1  # keyed: nothing to answer
        row = page.locator("#feed tbody tr[data-seq='2']")
        await row.wait_for()
        assert "¥12.50" in await row.locator("td").all_text_contents()


async def test_canteen_serves_lunch_on_the_simulated_clock(bench: tuple[Workbench, str]) -> None:
    wb, url = bench
    rig, member = wb.rig, wb.rig.people[2]
    async with page_in_mode(url, "canteen") as page:
        # The terminal trusts the injected clock, moved to the scene's lunch time (11:58) unless the real hour is
        # in lunch for the scene's 15 minutes more (then it is left alone): either way the page shows that clock,
        # and it is lunch.
        serving = current_window(rig.config.canteen, int(rig.clock.now()))
        assert serving is not None and serving[0].name == "lunch"
        shown = local_unix(await text_of(page, "#term-clock"))
        assert abs(shown - rig.clock.now()) < 5
        await tap_on_page(page, f"{member.member_no}-uid", 1)
        last = rig.outcomes[-1]
        # [canteen] lunch for the staff group: ¥15.00, of which the union pays ¥10.00.
        assert (last.decision.approved, last.decision.amount_fen, last.decision.subsidy_fen,
                last.decision.to_pay_fen) == (True, 1500, 1000, 500)
        assert last.decision.detail["window"] == "lunch"
        meal = Screen("午餐 请用餐", (f"{member.name} 已售 1份", "补贴 ¥10.00", "实付 ¥5.00"))
        assert await page_shows_terminal_screen(page, wb) == lit_pixels(render(meal))
        await page.wait_for_selector("#feed tbody tr[data-seq='1'][data-acked=true]")
        await tap_on_page(page, f"{member.member_no}-uid", 2)  # once per window
        assert rig.outcomes[-1].decision.reason == "already_served"


async def test_feed_survives_the_broker_going_away(saving_broker: Mosquitto) -> None:
    """The feed reconnects with its persistent session: what was published meanwhile still arrives."""
    broker = saving_broker
    feed = Feed(broker.port, client_id="feed-under-test")
    task = asyncio.create_task(feed.run())
    try:
        for _ in range(200):
            if feed.connected:
                break
            await asyncio.sleep(0.02)
        assert feed.connected
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="publisher") as client:
            await client.publish("unionterm/v1/t/T1/tx", json.dumps({"seq": 1, "decision": "deny"}), qos=1)
            await client.publish("unionterm/v1/t/T1/tx", json.dumps({"seq": 1, "decision": "deny"}), qos=1)
        for _ in range(250):
            if feed.rows:
                break
            await asyncio.sleep(0.02)
        view = feed.view()
        assert [r["seq"] for r in view["rows"]] == [1] and view["rows"][0]["acked"] is False
        assert view["repeats"] == 1 and feed.connected
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- pure parts ------------------------------------------------------------------------------------


def test_frame_payload_packs_rows_msb_first() -> None:
    image = Image.new("1", (16, 2), 0)
    image.putpixel((0, 0), 1)
    image.putpixel((9, 0), 1)
    image.putpixel((15, 1), 1)
    payload = frame_payload(image, 7)
    assert (payload["w"], payload["h"], payload["frame"]) == (16, 2, 7)
    assert base64.b64decode(payload["bits"]) == bytes([0b1000_0000, 0b0100_0000, 0, 0b0000_0001])
    bits = frame_bits(payload)
    assert [i for i, b in enumerate(bits) if b] == [0, 9, 31]


def test_changes_sends_only_what_differs() -> None:
    sent = {"a": 1, "b": {"x": [1, 2]}, "c": None}
    assert changes(sent, {"a": 1, "b": {"x": [1, 2]}, "c": None}) == {}
    assert changes(sent, {"a": 2, "b": {"x": [1, 2]}, "c": None, "d": 0}) == {"a": 2, "d": 0}
    assert changes({}, {"c": None}) == {"c": None}


def test_parse_feed_reads_tx_and_ack_and_refuses_the_rest() -> None:
    tx = parse_feed("unionterm/v1/t/SIM-1/tx", b'{"seq": 3, "decision": "approve", "txid": "x"}')
    assert tx == FeedTx("SIM-1", 3, {"seq": 3, "decision": "approve"})
    ack = parse_feed("unionterm/v1/t/SIM-1/ack", json.dumps({"seq": 3, "hash": "ab" * 32}).encode())
    assert ack == FeedAck("SIM-1", 3)
    for topic, payload in [("unionterm/v1/t/SIM-1/status", b"{}"),
                           ("unionterm/v1/t/SIM-1/tx", b"not json"),
                           ("unionterm/v1/t/SIM-1/tx", b'{"seq": true}'),
                           ("unionterm/v1/t/SIM-1/ack", b'{"seq": 3}')]:
        with pytest.raises(PayloadError):
            parse_feed(topic, payload)


def test_parse_yuan_reads_what_a_cashier_types_exactly() -> None:
    assert [parse_yuan(t) for t in ("19.99", "0.29", "20", "0.5", " 7.05 ", "9999999.99")] == [
        1999, 29, 2000, 50, 705, 999_999_999]
    for bad in ("", "0", "0.00", "-1", "1.999", "1e3", "12,50", "10000000", "¥5", "nan"):
        with pytest.raises(PayloadError):
            parse_yuan(bad)


def test_frames_are_shown_with_their_fields_and_bytes() -> None:
    assert wire_text(b"\x02\x00\x03Q01\x12\x34\x03") == "<STX> 0003 Q01 1234 <ETX>"
    assert wire_text(b"\x1cAB\x07") == "<FS> A B 07"  # not a frame: byte by byte
    sale = frame_view(Sale(7, 1999, "WB-000001"), "out")
    assert sale["type"] == "S" and sale["seq"] == 7 and sale["fields"] == {"amount_fen": "1999", "ecr_ref": "WB-000001"}
    assert sale["wire"].startswith("<STX> 0012 S07<FS>1999<FS>WB-000001 ") and sale["wire"].endswith(" <ETX>")
    assert sale["wire"].split()[-2] == encode(Sale(7, 1999, "WB-000001"))[-3:-1].hex().upper()
    reply = frame_view(Reply(7, False, "unknown_card", 1999, 0, 1999, "T-1"), "in")
    assert reply["fields"] == {"approved": "D", "reason": "unknown_card", "amount_fen": "1999", "discount_fen": "0",
                               "to_pay_fen": "1999", "tx_id": "T-1"}
    broken = frame_view(FrameError("checksum", 12, "crc 1234 != 4321", 7), "in")
    assert (broken["type"], broken["fields"]) == ("!", {"error": "checksum"})


def test_the_canteen_clock_moves_forward_to_the_scenes_meal_only_when_needed(tmp_path: Path) -> None:
    at = local_unix
    assert next_local(at("2026-12-01 10:00:00"), "11:58:00") == at("2026-12-01 11:58:00")
    assert next_local(at("2026-12-01 11:58:00"), "11:58:00") == at("2026-12-01 11:58:00")
    assert next_local(at("2026-12-01 13:00:00"), "11:58:00") == at("2026-12-02 11:58:00")
    canteen = parse(sim_config_text(tmp_path, "canteen", 1883, sections=CANTEEN), "t.toml").canteen
    assert scene_time(canteen, at("2026-12-01 01:10:00"), "11:58:00") == at("2026-12-01 11:58:00")  # night meal
    assert scene_time(canteen, at("2026-12-01 12:40:00"), "11:58:00") is None  # lunch already
    # lunch, but closing within the scene's time: the next day's 11:58, not a scene cut off halfway
    assert scene_time(canteen, at("2026-12-01 13:25:00"), "11:58:00") == at("2026-12-02 11:58:00")
    assert scene_time(canteen, at("2026-12-01 14:00:00"), "11:58:00") == at("2026-12-02 11:58:00")
    assert scene_time(None, at("2026-12-01 01:10:00"), "11:58:00") is None  # doors and counters: any hour


def test_feed_shows_each_record_once_and_marks_acks() -> None:
    feed = Feed(1, keep=2)
    for seq in (1, 2, 2, 3):
        feed.take("unionterm/v1/t/A/tx", json.dumps({"seq": seq}).encode())
    feed.take("unionterm/v1/t/A/ack", json.dumps({"seq": 2, "hash": "00" * 32}).encode())
    feed.take("unionterm/v1/t/A/tx", b"garbage")
    view = feed.view()
    assert [(r["seq"], r["acked"]) for r in view["rows"]] == [(3, False), (2, True)]
    assert view["repeats"] == 1
