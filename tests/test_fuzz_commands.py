"""Whatever arrives on ``t/{id}/cmd`` or ``t/{id}/ack``, it is refused by name or it is genuine.

Anyone with broker credentials can publish there, so the decoders are fed
random bytes, JSON of the right shape with wrong types, missing and extra
keys, huge numbers and deep nesting, and genuine signed commands and acks
with one byte or one field changed, or replayed. Only
:class:`~terminal.exceptions.PayloadError` (and its signature and replay
subclasses) may escape, its ``where`` must point into the message and its
problem must say something; a changed command never acts, a changed ack
never moves the watermark, and the terminal still obeys the next genuine
command. No broker is needed: the processor runs on a real journal with a
fake :class:`~terminal.commands.CommandTarget` and an uplink that records
instead of publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from terminal import signing
from terminal.commands import (ACTIONS, LOCKDOWN, OPEN_DOOR, SHOW_MESSAGE, SYNC_NOW, CommandProcessor,
                               CommandResult, build_command, decode_command_body, decode_result,
                               encode_command_body, refusal_reason)
from terminal.config import Config, parse
from terminal.exceptions import PayloadError, ReplayError, SignatureError, UnsignedError
from terminal.journal import Journal, TxEntry
from terminal.rules.door import DoorMode
from terminal.sync.strict import canonical_json
from terminal.uplink import MAX_ACK_BYTES, Ack, Uplink, decode_ack, encode_ack, payload_bytes

from tests.logkit import Lines, production_stack

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Each example opens a journal on disk: fewer, slower examples.
STACK = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TERMINAL = "T-1"
NOW = 1_800_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STRANGER = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
TRUSTED = signing.trusted_keys([KEY.public_key()])
KID = signing.key_id(KEY.public_key())
#: The classes the contract lets a decoder raise (docs/protocol-tx.md).
DOCUMENTED = (PayloadError, SignatureError, UnsignedError, ReplayError)
#: Every refusal word of docs/protocol-tx.md ("Results").
REASONS = {"unsigned", "bad_signature", "expired", "validity_too_long", "not_yet_valid", "malformed",
           "replayed", "storage_unavailable"}

GENUINE = [
    build_command(KEY, TERMINAL, 7, OPEN_DOOR, issued=NOW - 10, nonce="3f9a0c1d2e4b5a69"),
    build_command(KEY, TERMINAL, 8, SHOW_MESSAGE, {"text": "明日停电", "seconds": 60}, issued=NOW - 5,
                  nonce="0123456789abcdef0123456789abcdef"),
    build_command(KEY, TERMINAL, 9, LOCKDOWN, issued=NOW, ttl_s=600, nonce="ffeeddccbbaa99887766554433221100"),
]


def refused_by_name(exc: BaseException, prefix: str) -> None:
    """The refusal is a documented class, points into the message and says what is wrong."""
    assert type(exc) in DOCUMENTED, repr(exc)
    assert isinstance(exc, PayloadError)
    assert exc.where == prefix or exc.where.startswith((prefix + ".", prefix + "[")), exc.where
    assert exc.problem.strip(), exc
    assert str(exc) == f"{exc.where}: {exc.problem}"


# -- JSON of every shape -----------------------------------------------------------------------

#: 10**5000 (past the 4300 digits int <-> str allows) is built, not listed: it has no repr to report.
HUGE = st.sampled_from([2**53, 2**53 - 1, -(2**53), 2**63, -(2**63) - 1, 10**30, -1, 0]) | st.builds(pow, st.just(10),
                                                                                                   st.just(5000))
SCALARS = (st.none() | st.booleans() | st.integers() | HUGE | st.floats() | st.text(max_size=30)
           | st.sampled_from(["", "ab" * 8, "open_door", "show_message", "x" * 70, "\x00", "a\nb", "\ud800"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def nested(depth: int, kind: str) -> str:
    """``depth`` arrays or objects inside each other: what a recursive parser chokes on."""
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "0" + "}" * depth


DEEP = st.builds(nested, st.integers(min_value=1, max_value=20_000), st.sampled_from(["array", "object"]))


def json_bytes(value: Any) -> bytes:
    """Serialise anything the strategies make (NaN and huge integers included) the way a sender might.

    Canonical when it can be, so a field set to its own value gives back the signed bytes.
    """
    try:
        return canonical_json(value)
    except (ValueError, UnicodeEncodeError):
        pass
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except ValueError:  # an integer past Python's digit limit: no sender can write it either
        return b"{}"


def shaped(required: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Objects with the protocol's keys: each kept, dropped or given a wrong value; extra keys added."""
    def build(choices: dict[str, tuple[str, Any]], extra: dict[str, Any], deep: str) -> bytes:
        obj: dict[str, Any] = {}
        for key, (what, wrong) in choices.items():
            if what == "keep":
                obj[key] = required[key]
            elif what == "wrong":
                obj[key] = wrong
            elif what == "deep":
                obj[key] = "__DEEP__"
        obj.update(extra)
        return json_bytes(obj).replace(b'"__DEEP__"', deep.encode())

    per_key = {k: st.tuples(st.sampled_from(["keep", "keep", "wrong", "drop", "deep"]), JSON) for k in required}
    return st.builds(build, st.fixed_dictionaries(per_key),
                     st.dictionaries(st.text(max_size=8), JSON, max_size=2), DEEP)


COMMAND_BODY = {"nonce": "ab" * 8, "action": SHOW_MESSAGE, "args": {"text": "停电", "seconds": 60}}
RESULT = json.loads(CommandResult(TERMINAL, "done", "", "ab" * 8, OPEN_DOOR, 7, NOW * 1000).encode())
ACK = {"seq": 3, "hash": "ab" * 32}
HEADER = {"expires": NOW + 300, "issued": NOW, "kid": KID, "kind": "command", "len": 2, "scope": TERMINAL,
          "version": 1}

def ascii_json(value: Any) -> bytes:
    """JSON as a sender with ``ensure_ascii`` writes it: a lone surrogate arrives as a valid ``\\ud800`` escape."""
    try:
        return json.dumps(value).encode()
    except ValueError:
        return b"{}"


ANY_BYTES = st.binary(max_size=600) | DEEP.map(str.encode) | JSON.map(json_bytes) | JSON.map(ascii_json)


# -- the decoders on their own -------------------------------------------------------------------


@FUZZ
@given(ANY_BYTES | shaped(COMMAND_BODY))
@example(b'{"nonce":"' + b"ab" * 8 + b'","action":"open_door","args":' + b"[" * 50_000 + b"}")
def test_command_body_decoder_refuses_by_name(body: bytes) -> None:
    try:
        with production_stack():
            nonce, action, args = decode_command_body(body)
    except Exception as exc:  # noqa: BLE001 - checked to be a documented refusal
        refused_by_name(exc, "command")
        return
    assert action in ACTIONS and 16 <= len(nonce) <= 64 and type(args) is dict


@FUZZ
@given(ANY_BYTES | shaped(RESULT))
@example(b"[" * 100_000)
def test_result_decoder_refuses_by_name(payload: bytes) -> None:
    try:
        with production_stack():
            result = decode_result(payload)
    except Exception as exc:  # noqa: BLE001
        refused_by_name(exc, "cmd.result")
        return
    assert result.status in {"done", "refused", "failed"} and type(result.detail) is dict


@FUZZ
@given(ANY_BYTES | shaped(ACK) | st.binary(min_size=MAX_ACK_BYTES - 2, max_size=MAX_ACK_BYTES + 2))
def test_ack_decoder_refuses_by_name(payload: bytes) -> None:
    try:
        with production_stack():
            ack = decode_ack(payload)
    except Exception as exc:  # noqa: BLE001
        refused_by_name(exc, "ack")
        return
    assert 1 <= ack.seq <= signing.MAX_INT and len(ack.hash) == 64


def envelope(header: bytes, body: bytes, key: Ed25519PrivateKey = KEY) -> bytes:
    signed = signing.MAGIC + header + b"\n" + body
    return signed + key.sign(signed)


@FUZZ
@given(st.one_of(ANY_BYTES.map(lambda b: signing.MAGIC + b),
                 (shaped(HEADER) | DEEP.map(str.encode)).map(lambda h: envelope(h[:1100], b"{}", STRANGER)),
                 ANY_BYTES))
@example(envelope(b"[" * 1020, b"", STRANGER))
def test_envelope_verifier_refuses_by_name(blob: bytes) -> None:
    """A header line (up to 1 KiB, before any signature check) is parsed from whatever arrived.

    Headers that do parse carry a stranger's signature under the trusted key id, so nothing may verify.
    """
    try:
        with production_stack():
            signing.verify(blob, TRUSTED, signing.KIND_COMMAND, TERMINAL, NOW, 8192)
    except Exception as exc:  # noqa: BLE001
        refused_by_name(exc, "envelope")
        assert refusal_reason(exc) in REASONS
        return
    raise AssertionError("an envelope nobody signed was accepted")


#: What aiomqtt's payload type allows, and a little more.
PAYLOADS = st.one_of(st.binary(max_size=64), st.text(max_size=64), st.integers(), HUGE, st.floats(), st.none(),
                     st.booleans(), st.builds(bytearray, st.binary(max_size=16)),
                     st.builds(memoryview, st.binary(max_size=16)), st.sampled_from(["\ud800", "a\udfffb"]),
                     st.builds(object))


@FUZZ
@given(PAYLOADS)
@example("\ud800")
@example(10**5000)
def test_payload_bytes_makes_bytes_or_refuses_by_name(payload: Any) -> None:
    """aiomqtt's payload type allows more than bytes; whatever comes in is bytes or a refusal."""
    try:
        data = payload_bytes(payload)
    except Exception as exc:  # noqa: BLE001
        refused_by_name(exc, "payload")
        return
    assert type(data) is bytes
    if isinstance(payload, (bytes, bytearray, memoryview)):
        assert data == bytes(payload)
    elif isinstance(payload, str):
        assert data == payload.encode()
    elif payload is None:
        assert data == b""


UNSIGNED_NAMES = st.builds("{}unsigned{}".format, st.sampled_from(["", "x", "x."]), st.sampled_from(["", "_2", ".x"]))


@FUZZ
@given(UNSIGNED_NAMES, st.sampled_from(["scope", "kind"]))
@example("unsigned", "scope")
def test_refusal_word_comes_from_the_refusal_not_from_the_message_text(name: str, field_: str) -> None:
    """A trusted key's envelope for another scope or kind is ``bad_signature`` whatever it is called."""
    kind, scope = (name, TERMINAL) if field_ == "kind" else (signing.KIND_COMMAND, name)
    blob = signing.sign(KEY, kind, scope, 1, NOW, NOW + 60, encode_command_body("ab" * 8, OPEN_DOOR))
    with pytest.raises(SignatureError) as err:
        signing.verify(blob, TRUSTED, signing.KIND_COMMAND, TERMINAL, NOW)
    assert refusal_reason(err.value) == "bad_signature", err.value


# -- the processor on a real journal -------------------------------------------------------------


class FakeTarget:
    """Records what the terminal was told to do; a door terminal that never refuses."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def open_door_once(self) -> None:
        self.calls.append((OPEN_DOOR,))

    def set_door_mode(self, mode: DoorMode) -> None:
        self.calls.append(("door_mode", mode))

    def sync_now(self) -> None:
        self.calls.append((SYNC_NOW,))

    def reload_config(self) -> Callable[[], None]:
        self.calls.append(("reload_config",))
        return lambda: None

    def show_message(self, text: str, seconds: float) -> None:
        self.calls.append((SHOW_MESSAGE, text, seconds))


class RecordingUplink(Uplink):
    """The real uplink's wiring and dispatch, with publishing recorded instead of sent."""

    def __init__(self, cfg: Config, journal: Journal) -> None:
        super().__init__(cfg, journal)
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        self.sent.append((topic, payload))
        return True

    def results(self) -> list[CommandResult]:
        """Every command result so far, read with the back office's own decoder."""
        return [decode_result(p) for t, p in self.sent if t == self.topics.cmd_result]


@dataclass
class Terminal:
    processor: CommandProcessor
    target: FakeTarget
    uplink: RecordingUplink
    journal: Journal
    refusals: list[PayloadError] = field(default_factory=list)

    async def deliver(self, blob: bytes) -> PayloadError | None:
        """One message on ``t/{id}/cmd``; the refusal if it was refused."""
        try:
            await self.processor.handle(self.uplink.topics.cmd, blob)
        except PayloadError as exc:
            self.refusals.append(exc)
            return exc
        return None

    async def commands_journaled(self) -> list[dict[str, Any]]:
        return [r.fields for r in await self.journal.records_after(0, 1000) if r.fields["kind"] == "command"]


def journal_clock() -> tuple[int, bool]:
    return NOW * 1000, True


@contextlib.asynccontextmanager
async def door_terminal() -> AsyncIterator[Terminal]:
    with tempfile.TemporaryDirectory(prefix="fuzz-cmd-") as tmp:
        cfg = parse(f'[terminal]\nid = "{TERMINAL}"\nmode = "access"\nstate_dir = "{tmp}"\n'
                    "[commands]\nmax_ttl_s = 600\n", str(Path(tmp, "terminal.toml")))
        async with Journal(Path(tmp, "journal.db"), TERMINAL, journal_clock, cfg.journal) as journal:
            uplink = RecordingUplink(cfg, journal)
            target = FakeTarget()
            processor = CommandProcessor(cfg, journal, target, uplink, trusted=TRUSTED, wall=lambda: NOW)
            await processor.start()
            yield Terminal(processor, target, uplink, journal)


def run(scenario: Callable[[Terminal], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with door_terminal() as terminal:
            await scenario(terminal)
    with production_stack():
        asyncio.run(main())


def expected_call(blob: bytes) -> tuple[Any, ...]:
    """What the fake target records when ``blob`` acts."""
    _, action, args = decode_command_body(signing.parse(blob)[1])
    if action == SHOW_MESSAGE:
        return (SHOW_MESSAGE, args["text"], float(args["seconds"]))
    if action == LOCKDOWN:
        return ("door_mode", DoorMode.LOCKDOWN)
    return (action,)


def mutate_bytes(blob: bytes, kind: str, pos: int, extra: bytes) -> bytes:
    """One way a broker, a link or an attacker could change an envelope."""
    i = pos % (len(blob) + 1)
    if kind == "flip":
        i %= len(blob)
        return blob[:i] + bytes([blob[i] ^ (1 << (pos % 8))]) + blob[i + 1:]
    if kind == "insert":
        return blob[:i] + (extra or b"\x00") + blob[i:]
    if kind == "delete":
        return blob[:i] + blob[i + 1 + len(extra):]
    if kind == "replace":
        return blob[:i] + extra + blob[i + len(extra):]
    if kind == "truncate":
        return blob[:i]
    return blob + extra  # append


def split(blob: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, body = signing.parse(blob)
    return header.as_json(), json.loads(body), blob[-signing.SIGNATURE_LEN:]


def reassemble(header: dict[str, Any], body: bytes, signature: bytes | None,
               signer: Ed25519PrivateKey | None) -> bytes:
    """Envelope around changed fields: the old signature kept, or a stranger's new one."""
    signed = signing.MAGIC + json_bytes(header) + b"\n" + body
    return signed + (signer.sign(signed) if signer is not None else signature or b"")


def mutate_field(blob: bytes, part: str, key: str, value: Any, how: str) -> bytes:
    header, body, signature = split(blob)
    target = header if part == "header" else body
    if how == "drop":
        target.pop(key, None)
    else:
        target[key] = value
    new_body = json_bytes(body)
    if part == "body":
        header["len"] = len(new_body)
    if how == "forge_kid":  # a stranger's signature claiming the trusted key id
        header["kid"] = KID
        return reassemble(header, new_body, None, STRANGER)
    if how == "stranger":
        header["kid"] = signing.key_id(STRANGER.public_key())
        return reassemble(header, new_body, None, STRANGER)
    return reassemble(header, new_body, signature, None)


BYTE_MUTATION = st.builds(mutate_bytes, st.sampled_from(GENUINE),
                          st.sampled_from(["flip", "insert", "delete", "replace", "truncate", "append"]),
                          st.integers(min_value=0, max_value=10_000), st.binary(max_size=8))
FIELD_VALUES = JSON | st.sampled_from([NOW + 10**6, NOW - 10**6, 0, 2**53, "SIM-0002", "T-1", KID,
                                       "members.delta", "ab" * 8, "0123456789abcdef" * 4, {}, OPEN_DOOR,
                                       {"text": "x", "seconds": 600}])
FIELD_MUTATION = st.builds(
    mutate_field, st.sampled_from(GENUINE), st.sampled_from(["header", "body"]),
    st.sampled_from(sorted(HEADER) + sorted(COMMAND_BODY)), FIELD_VALUES,
    st.sampled_from(["set", "set", "drop", "stranger", "forge_kid"]))


@STACK
@given(st.sampled_from(GENUINE), BYTE_MUTATION | FIELD_MUTATION)
def test_a_changed_command_never_acts_and_the_next_genuine_one_does(genuine: bytes, mutated: bytes) -> None:
    async def scenario(t: Terminal) -> None:
        refusal = await t.deliver(mutated)
        if refusal is None:  # acted: only the very envelope the back office signed may do that
            assert mutated in GENUINE and t.target.calls == [expected_call(mutated)]
            assert t.uplink.results()[-1].status == "done"
        else:
            prefix = refusal.where.split(".")[0]
            assert prefix in {"envelope", "command"}, refusal
            refused_by_name(refusal, prefix)
            assert t.target.calls == [] and await t.commands_journaled() == []
            (result,) = t.uplink.results()
            assert (result.status, result.nonce) == ("refused", "") and result.reason in REASONS
            assert result.reason == refusal_reason(refusal)
            event(f"refused: {result.reason}")
        before = list(t.target.calls)
        again = await t.deliver(genuine)
        if mutated == genuine and refusal is None:
            assert isinstance(again, ReplayError) and t.target.calls == before
        else:
            assert again is None, again
            assert t.target.calls == before + [expected_call(genuine)]
            assert t.uplink.results()[-1].status == "done"
    run(scenario)


@STACK
@given(st.permutations(range(len(GENUINE))), st.lists(st.integers(0, len(GENUINE) - 1), min_size=1, max_size=4),
       st.integers(min_value=1, max_value=signing.MAX_INT))
def test_replayed_commands_never_act_twice(order: list[int], replays: list[int], version: int) -> None:
    """Redelivered, retained or re-signed with a new version: a seen nonce is refused as ``replayed``."""
    async def scenario(t: Terminal) -> None:
        for i in order:
            assert await t.deliver(GENUINE[i]) is None
        acted = list(t.target.calls)
        assert len(acted) == len(GENUINE)
        for i in replays:
            nonce, action, args = decode_command_body(signing.parse(GENUINE[i])[1])
            for blob in (GENUINE[i], build_command(KEY, TERMINAL, version, action, args, issued=NOW, nonce=nonce)):
                refusal = await t.deliver(blob)
                assert isinstance(refusal, ReplayError) and refusal_reason(refusal) == "replayed"
                last = t.uplink.results()[-1]
                assert (last.status, last.reason, last.nonce) == ("refused", "replayed", nonce)
        assert t.target.calls == acted
        assert len(await t.commands_journaled()) == len(GENUINE)
        fresh = build_command(KEY, TERMINAL, 1, SYNC_NOW, issued=NOW, nonce="abcdef0123456789")
        assert await t.deliver(fresh) is None and t.target.calls[-1] == (SYNC_NOW,)
    run(scenario)


SIGNED_BODIES = (shaped(COMMAND_BODY) | DEEP.map(str.encode) | JSON.map(json_bytes) | JSON.map(ascii_json)
                 | st.binary(max_size=100))


@STACK
@given(SIGNED_BODIES, st.integers(min_value=1, max_value=signing.MAX_INT))
@example(b'{"action":"open_door","args":{},"nonce":' + b"[" * 3000 + b"]" * 3000 + b"}", 1)
@example(b'{"action":"show_message","args":{"seconds":5,"text":"\\ud800"},"nonce":"abababababababab"}', 1)
def test_a_signed_but_malformed_body_is_refused_and_nothing_acts(body: bytes, version: int) -> None:
    """A back office bug signs garbage: refused as ``malformed``, and the nonce is not used up."""
    blob = signing.sign(KEY, signing.KIND_COMMAND, TERMINAL, version, NOW, NOW + 60, body)

    async def scenario(t: Terminal) -> None:
        if len(blob) > t.processor.cfg.commands.max_bytes:
            await t.uplink.dispatch(t.uplink.topics.cmd, blob)  # refused for its size, before the handler
            assert t.processor.refused == 0 and t.target.calls == []
            return
        refusal = await t.deliver(blob)
        if refusal is None:  # the target never refuses, so anything but "done" is an exception inside
            assert t.target.calls == [expected_call(blob)]
            assert t.uplink.results()[-1].status == "done", t.uplink.results()[-1]
            return
        refused_by_name(refusal, "command")
        assert refusal_reason(refusal) == "malformed" and t.target.calls == []
        genuine = await t.deliver(GENUINE[0])
        assert genuine is None and t.target.calls == [(OPEN_DOOR,)]
    run(scenario)


@STACK
@given(st.lists(ANY_BYTES | BYTE_MUTATION | st.integers(8180, 8200).map(lambda n: b"UT1\n" + b"x" * n),
                min_size=1, max_size=6))
def test_junk_through_the_uplink_is_logged_as_refused_and_the_terminal_keeps_obeying(junk: list[bytes]) -> None:
    """The real inbound path: size limit, handler, one ``inbound_refused`` line each, no traceback."""
    lines = Lines()
    logger = logging.getLogger("unionterm")
    logger.addHandler(lines)

    async def scenario(t: Terminal) -> None:
        seen: list[bytes] = []
        for payload in junk:
            await t.uplink.dispatch(t.uplink.topics.cmd, payload)
            if payload in GENUINE and payload not in seen:
                seen.append(payload)
        assert t.target.calls == [expected_call(p) for p in seen]
        refused = [line for line in lines.lines if "event=inbound_refused" in line]
        assert len(refused) == len(junk) - len(seen)
        assert not [line for line in lines.lines if "inbound_handler_error" in line or "inbound_failed" in line]
        await t.uplink.dispatch(t.uplink.topics.cmd, GENUINE[1])
        assert t.target.calls[-1] == expected_call(GENUINE[1])
    try:
        run(scenario)
    finally:
        logger.removeHandler(lines)


# -- acks on a real journal --------------------------------------------------------------------


def ack_entry() -> TxEntry:
    return TxEntry(mode="access", kind="tap", decision="approve", reason="ok", member_no="M1", grants_value=True)


@STACK
@given(st.integers(1, 3), st.sampled_from(["flip", "insert", "delete", "replace", "truncate", "append", "field"]),
       st.integers(min_value=0, max_value=10_000), st.binary(max_size=6),
       st.sampled_from(["seq", "hash"]), st.integers(-5, 10) | HUGE | st.text(max_size=70))
def test_a_changed_ack_never_moves_the_watermark_wrongly(acked: int, kind: str, pos: int, extra: bytes,
                                                        field_: str, value: Any) -> None:
    async def scenario(t: Terminal) -> None:
        records = await t.journal.append_batch(ack_entry() for _ in range(3))
        t.uplink.highest_sent = 3  # as if all three were published
        genuine = Ack(acked, records[acked - 1].hash)
        if kind == "field":
            fields = {"seq": genuine.seq, "hash": genuine.hash, field_: value}
            payload = json_bytes(fields)
        else:
            payload = mutate_bytes(encode_ack(genuine), kind, pos, extra)
        await t.uplink.dispatch(t.uplink.topics.ack, payload)
        try:
            decoded: Ack | None = decode_ack(payload)
        except PayloadError:
            decoded = None
        hashes = {r.seq: r.hash for r in records}
        if decoded is not None and hashes.get(decoded.seq) == decoded.hash:
            assert t.journal.acked_seq == decoded.seq
        else:
            assert t.journal.acked_seq == 0
        await t.uplink.dispatch(t.uplink.topics.ack, encode_ack(Ack(3, records[2].hash)))
        assert t.journal.acked_seq == 3
    run(scenario)


@dataclass
class Message:
    topic: str
    payload: Any


class FakeClient:
    """Just what :meth:`Uplink._receive` reads from an aiomqtt client: the message stream."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    @property
    async def messages(self) -> AsyncIterator[Message]:
        for message in self._messages:
            yield message


@STACK
@given(st.lists(PAYLOADS, min_size=1, max_size=6), st.booleans())
@example(["\ud800", 10**5000, object()], True)
def test_any_payload_object_costs_one_message_not_the_session(payloads: list[Any], ack: bool) -> None:
    """The receive loop outlives payloads that have no byte form; the genuine command after them acts."""
    lines = Lines()
    logger = logging.getLogger("unionterm")
    logger.addHandler(lines)

    async def scenario(t: Terminal) -> None:
        topic = t.uplink.topics.ack if ack else t.uplink.topics.cmd
        stream = [Message(topic, p) for p in payloads] + [Message(t.uplink.topics.cmd, GENUINE[2])]
        await t.uplink._receive(FakeClient(stream))  # type: ignore[arg-type]
        assert t.target.calls == [expected_call(GENUINE[2])]
        assert not [line for line in lines.lines if "inbound_handler_error" in line or "inbound_failed" in line]
        assert sum("event=inbound_refused" in line for line in lines.lines) == len(payloads)
    try:
        run(scenario)
    finally:
        logger.removeHandler(lines)


# -- regressions, at the interpreter's own recursion limit ---------------------------------------


@pytest.mark.parametrize("decode,payload,where", [
    (lambda b: signing.verify(b, TRUSTED, signing.KIND_COMMAND, TERMINAL, NOW),
     envelope(b"[" * 1020, b"", STRANGER), "envelope.header"),
    (decode_command_body, b'{"action":"open_door","args":{},"nonce":' + b"[" * 3000 + b"]" * 3000 + b"}", "command"),
    (decode_result, b"[" * 100_000, "cmd.result"),
], ids=["header", "command-body", "result"])
def test_json_nested_past_the_recursion_limit_is_refused_as_malformed(
        decode: Callable[[bytes], object], payload: bytes, where: str) -> None:
    """json gives up on deep nesting with RecursionError, which escaped every decoder; a 1 KiB
    header of ``[`` did it before any signature was checked."""
    with pytest.raises(PayloadError) as err:
        decode(payload)
    assert err.value.where == where and "nested too deeply" in err.value.problem
    assert refusal_reason(err.value) == "malformed"


@pytest.mark.parametrize("payload,problem", [
    ("\ud800", "text is not encodable as UTF-8 (character 0)"),
    (10**5000, "integer too large to write as text"),
    (object(), "a object is not a message payload"),
], ids=["lone-surrogate", "10**5000", "object"])
def test_payload_without_a_byte_form_is_refused(payload: object, problem: str) -> None:
    """These escaped as UnicodeEncodeError or ValueError from the receive loop, ending the MQTT session."""
    with pytest.raises(PayloadError) as err:
        payload_bytes(payload)
    assert (err.value.where, err.value.problem) == ("payload", problem)


def test_a_scope_called_unsigned_is_still_a_bad_signature() -> None:
    """The word was found by searching the problem text, which quotes the scope the envelope names."""
    blob = signing.sign(KEY, signing.KIND_COMMAND, "unsigned", 1, NOW, NOW + 60, b"{}")
    with pytest.raises(SignatureError) as err:
        signing.verify(blob, TRUSTED, signing.KIND_COMMAND, TERMINAL, NOW)
    assert refusal_reason(err.value) == "bad_signature"
