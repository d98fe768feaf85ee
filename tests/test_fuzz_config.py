"""Whatever is in the config file, the terminal says which file and which key, and nothing else escapes.

Two kinds of input. Random text, TOML-ish token soup and single-character
edits of real configs exercise the TOML layer. Then documents built from the
real schema: a working config (the shipped examples, the simulator's, and
one with every section written out) with one key given a value of the wrong
type, out of its range, empty, huge, NaN, nested or deep, or a key added or
removed. :func:`terminal.config.parse` must return a :class:`Config` or raise
:class:`ConfigError`, whose message starts with the file and names the key
or section at fault. Where the schema alone says the value is wrong (type,
range, unknown key, missing required key) the error must name exactly that
key.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import tempfile
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from simulator.rig import sim_config_text
from terminal.config import Config, load, parse
from terminal.exceptions import ConfigError
from terminal.tomlout import toml_key, toml_scalar

from tests.logkit import production_stack

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The schema has ~150 keys in six documents: more examples for the one test that walks them.
SCHEMA_FUZZ = settings(FUZZ, max_examples=800)
ROOT = Path(__file__).resolve().parent.parent
PATH = "/etc/unionterm/terminal.toml"


def outcome(text: str, path: str = PATH) -> Config | ConfigError:
    """Parse; a ConfigError is returned after checking it names the file, anything else fails the test."""
    try:
        with production_stack():
            return parse(text, path)
    except ConfigError as exc:
        assert exc.path == path and str(exc).startswith(f"{path}: "), str(exc)
        assert exc.problem.strip(), str(exc)
        if exc.key is not None:
            assert exc.key.strip() and str(exc).startswith(f"{path}: {exc.key}: "), str(exc)
        return exc


# -- the documents mutations start from ----------------------------------------------------------

DOOR_RULES = """
[door]
door_id = "D-1"
grants = { staff = "office", "main-gate" = "always" }
card_only_profile = "office"
passback = "soft"
apb_area = "lobby"
side = "out"
apb_reset_s = 600
first_card_groups = ["managers"]
first_card_profile = "office"
lockdown_groups = ["security"]
release_s = 4
held_open_s = 40

[door.profiles.office]
intervals = { mon = [["08:00", "12:00"], ["13:00", "18:00"]], holiday = [["10:00", "24:00"]] }

[door.calendar]
holidays = ["2027-01-01"]
extra_workdays = ["2027-02-07"]
rest_weekdays = [5, 6]

[door.pin]
max_tries = 3

[clock]
floor_unix = 1767225600
ceiling_unix = 0
on_untrusted = "deny_value"
"""

VENUE = """
[terminal]
id = "VENUE-1"
mode = "pos"

[venue]
venue_id = "V-1"
kind = "sanatorium"
day_start_s = 3600

[venue.offerings.swim]
list_price_fen = 2000
member_price_fen = { "1" = 1000, "3" = 500 }
period = "week"
visits_per_period = 2
attendance = true
groups = ["staff"]
"""


def _defaults(cls: type) -> dict[str, Any]:
    """Every defaulted field of a schema section written out, so every key can be mutated."""
    table: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = _defaults(type(value))
        elif isinstance(value, tuple):
            value = list(value)
        table[f.name] = value
    return table


def every_section() -> dict[str, Any]:
    doc = {name: value for name, value in _defaults(Config).items() if name != "source"}
    doc["terminal"] = {"id": "T-1", "mode": "access", "site": "lab", "state_dir": "/var/lib/unionterm",
                       "language": "en", "log_level": "info"}
    doc["gpio"].update(door_contact_pin=5, exit_button_pin=6)
    doc["serial"] = {"ecr": {"port": "/dev/ttyUSB0", "baudrate": 9600}}
    doc["commands"]["public_keys"] = ["cmd.pub"]
    doc["sync"]["trusted_keys"] = ["lists.pub"]
    doc["keypad"]["driver"] = "matrix"
    doc["tls"] = {"ca_file": "ca.pem", "cert_file": "t.pem", "key_file": "t.key"}
    return doc


BASES: dict[str, dict[str, Any]] = {
    **{name: tomllib.loads((ROOT / "config" / name).read_text()) for name in ("access.toml", "pos.toml",
                                                                             "canteen.toml")},
    "sim": tomllib.loads(sim_config_text(Path("/tmp/sim"), "access", 1883, qr_port="/dev/pts/7",
                                         ecr_port="/dev/pts/8",
                                         profiles=("union-app", "bank-pan", "qr-ecard", "uid-legacy"))
                         + DOOR_RULES),
    "venue": tomllib.loads(VENUE),
    "every": every_section(),
}


# -- writing TOML back (inline tables, so arrays of tables and any nesting survive) --------------


@dataclasses.dataclass(frozen=True)
class Raw:
    """TOML text put in as it is: what no Python value can be written as (a 5000-digit number)."""

    text: str


DELETE = object()


def toml_value(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    scalar = toml_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r}")


def toml_text(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


# -- where a mutation lands, and what the schema says about it -------------------------------------

Step = str | int


def dotted(path: tuple[Step, ...]) -> str:
    """The key as ConfigError spells it: tables joined by dots, array items as ``[i]``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def nodes(value: Any, path: tuple[Step, ...] = ()) -> Iterator[tuple[tuple[Step, ...], Any]]:
    """Every key and array item of a document, tables and arrays included."""
    if path:
        yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from nodes(v, path + (i,))


def tables(value: Any, path: tuple[Step, ...] = ()) -> Iterator[tuple[Step, ...]]:
    if isinstance(value, dict):
        yield path
        for k, v in value.items():
            yield from tables(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from tables(v, path + (i,))


def put(doc: Any, path: tuple[Step, ...], value: Any) -> Any:
    """A copy of ``doc`` with ``value`` at ``path`` (or the key removed, for DELETE)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if not rest and value is DELETE:
            copy.pop(head, None)
        else:
            copy[head] = put(doc.get(head), rest, value)
        return copy
    copy_list = list(doc)
    copy_list[head] = put(doc[head], rest, value)  # type: ignore[index]
    return copy_list


class Unknown:
    """The schema has no such key here."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """What the schema declares at one key: its type and, for numbers, its range."""

    tp: Any
    lo: float | None = None
    hi: float | None = None
    required: bool = False


def unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def slot(path: tuple[Step, ...]) -> Slot | type[Unknown]:
    """Walk the Config dataclasses along ``path``."""
    if path == ("source",):
        return Unknown  # a Config field, but set by parse, never read from the file
    tp: Any = Config
    found = Slot(Config)
    for step in path:
        tp = unwrap(tp)
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp)}
            if not isinstance(step, str) or step not in fields:
                return Unknown
            f = fields[step]
            tp = get_type_hints(tp)[step]
            found = Slot(tp, f.metadata.get("min"), f.metadata.get("max"),
                         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
            found = Slot(tp)
        elif get_origin(tp) is tuple:
            tp = get_args(tp)[0]
            found = Slot(tp)
        else:
            return Unknown
    return found


def fits(value: Any, tp: Any) -> bool:
    """Does ``value`` have the shape ``tp`` asks for, at this level (contents of tables aside)?"""
    tp = unwrap(tp)
    if isinstance(value, Raw):
        return True  # unknown: only the other oracles apply
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    origin = get_origin(tp)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(tp))
    if origin is tuple:
        return isinstance(value, list) and all(fits(v, get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return type(value) is bool
    if tp is int:
        return type(value) is int
    if tp is float:
        return type(value) in (int, float)
    if tp is str:
        return type(value) is str
    raise AssertionError(f"the schema grew a type this test does not know: {tp!r}")


def within(key: str, path: str) -> bool:
    """Is ``key`` the key at ``path``, one of its tables, or inside it?"""
    return key == path or path.startswith((key + ".", key + "[")) or key.startswith((path + ".", path + "["))


# -- values -------------------------------------------------------------------------------------

WORDS = st.sampled_from(["", " ", "pcsc", "mock", "matrix", "pos", "canteen", "access", "qr-ecard", "uid-legacy",
                         "09:00", "24:00", "25:00", "²²:00", "2027-13-01", "all", "org-1", "a/b", "#",
                         "554E49", "zz", "always", "nobody", "\x00", "mon", "caturday"])
#: Long values are built, not listed: hypothesis writes strategies' reprs into its reports.
LONG = st.builds(pow, st.just(10), st.sampled_from([30, 400])) | st.builds(str.__mul__, st.just("x"), st.just(300))
NUMBERS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 28, 2**63, -(2**63) - 1]),
                    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]))
SCALARS = st.one_of(st.text(max_size=12), WORDS, NUMBERS, LONG, st.booleans(), st.dates(), st.times(),
                    st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc])))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | WORDS, inner, max_size=3), max_leaves=8)
RAW = st.one_of(
    st.integers(1, 6000).map(lambda d: Raw("[" * d + "]" * d)),
    st.integers(1, 6000).map(lambda d: Raw("{a = " * d + "1" + "}" * d)),
    st.integers(4290, 4400).map(lambda n: Raw("9" * n)),
    st.sampled_from([Raw("1_000"), Raw("0x7fffffffffffffff"), Raw("0o777"), Raw("0b1"), Raw("1979-05-27T07:32:00Z"),
                     Raw("1e400"), Raw("-1e400")]),
)
NEW_KEYS = st.text(min_size=1, max_size=10) | st.sampled_from(["pulse_msec", "source", "hostname", "id", "x.y",
                                                               "windows", "profiles", "[", "ü"])


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, tuple[Step, ...], Any]:
    """A base document, a key in it (or a new one), and what that key now holds."""
    name = draw(st.sampled_from(sorted(BASES)))
    doc = BASES[name]
    how = draw(st.sampled_from(["replace", "replace", "replace", "add", "delete"]))
    if how == "add":
        path = draw(st.sampled_from(list(tables(doc)))) + (draw(NEW_KEYS),)
    else:
        path = draw(st.sampled_from([p for p, _ in nodes(doc) if how != "delete" or isinstance(p[-1], str)]))
    if how == "delete":
        return name, path, DELETE
    where = slot(path)
    edges: list[Any] = []
    if isinstance(where, Slot):
        for bound, step in ((where.lo, -1), (where.hi, 1)):
            if bound is not None:
                edges += [bound, bound + step, bound + step * 0.5]
    value = draw(st.one_of(VALUES, RAW, st.sampled_from(edges or [math.nan])))
    return name, path, value


# -- (a) text that may not be TOML at all ---------------------------------------------------------

TOKENS = st.sampled_from(["[", "]", "[[", "]]", "{", "}", "=", ",", ".", '"', "'", '"""', "'''", "\\", "\n", "\r\n",
                          " ", "\t", "#", "a", "terminal", "id", "mode", "1", "-", "+", "_", "e", "0x", "inf", "nan",
                          "true", "1979-05-27", "T", "07:32:00", "Z", "\x00", "\x7f", "é"])
MINIMAL = '[terminal]\nid = "T-1"\nmode = "access"\n'
TEXTS = [MINIMAL] + [(ROOT / "config" / n).read_text() for n in ("access.toml", "pos.toml", "canteen.toml")]


def edit(text: str, pos: int, kind: str, insert: str) -> str:
    i = pos % (len(text) + 1)
    if kind == "delete":
        return text[:i] + text[i + 1:]
    if kind == "insert":
        return text[:i] + insert + text[i:]
    return text[:i] + insert + text[i + len(insert):]


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=60).map("".join),
                 st.builds(edit, st.sampled_from(TEXTS), st.integers(0, 5000),
                           st.sampled_from(["delete", "insert", "replace"]), TOKENS | st.text(max_size=3)),
                 st.builds(lambda d: "a = " + "[" * d + "]" * d, st.integers(1, 6000))))
@example("a = " + "[" * 3000 + "]" * 3000)
@example(MINIMAL + "[mqtt]\nport = " + "1" * 5000 + "\n")
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    """A file that is not TOML is named, with the line tomllib (or the terminal) found the fault on."""
    result = outcome(text)
    if isinstance(result, ConfigError) and result.problem.startswith("not valid TOML"):
        assert result.key is None and re.search(r"line \d+|end of document", result.problem), result
        event("not TOML")
    else:
        event(type(result).__name__)


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda t, b: t.encode() + b, st.sampled_from(TEXTS), st.binary(max_size=4))
       | st.integers(1, 6000).map(lambda d: b"a = " + b"{b = " * d + b"1" + b"}" * d))
def test_any_file_content_is_a_config_or_a_config_error(raw: bytes) -> None:
    """What is on disk may not even be text (a half-written file, the wrong file copied)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-cfg-") as tmp:
        path = os.path.join(tmp, "terminal.toml")
        Path(path).write_bytes(raw)
        try:
            with production_stack():
                load(path)
        except ConfigError as exc:
            assert exc.path == path and str(exc).startswith(f"{path}: ") and exc.problem.strip()


NAMES = st.one_of(st.text(max_size=20), st.sampled_from(["terminal.toml/x", "x" * 300, "a\x00b", "", ".", "..",
                                                          "sub", "sub/", "sub/terminal.toml", "link"]))


@FUZZ
@given(NAMES)
@example("terminal.toml/x")
@example("x" * 300)
@example("a\x00b")
@example("link")
def test_any_config_path_is_read_or_named_in_a_config_error(name: str) -> None:
    """``unionterm check-config PATH`` with a typo, a file where a folder should be, a loop, ..."""
    with tempfile.TemporaryDirectory(prefix="fuzz-cfg-") as tmp:
        Path(tmp, "terminal.toml").write_text(MINIMAL)
        Path(tmp, "sub").mkdir()
        Path(tmp, "sub", "terminal.toml").write_text(MINIMAL)
        os.symlink("link", os.path.join(tmp, "link"))  # a loop
        path = os.path.join(tmp, name)
        try:
            cfg = load(path)
        except ConfigError as exc:
            assert exc.path == path and str(exc).startswith(f"{path}: ") and exc.problem.strip()
        else:
            assert cfg.source == path


# -- (b) documents from the schema, one key wrong -------------------------------------------------


def test_the_base_documents_are_valid_and_survive_being_written_back() -> None:
    """Every mutation must start from a valid document, or a failure would not be the mutation's."""
    for name, doc in BASES.items():
        text = toml_text(doc)
        assert tomllib.loads(text) == doc, name
        assert isinstance(outcome(text), Config), (name, outcome(text))


@SCHEMA_FUZZ
@given(mutations())
@example(("canteen.toml", ("canteen", "windows", 0, "start"), "²²:00"))
@example(("canteen.toml", ("canteen", "windows", 0, "end"), "06:30"))
@example(("canteen.toml", ("canteen", "windows", 0, "start"), "25:00"))
@example(("sim", ("door", "calendar", "holidays", 0), "2027-13-01"))
@example(("sim", ("door", "profiles", "office", "intervals", "mon", 0), ["18:00", "08:00"]))
@example(("pos.toml", ("pos", "rates_bp", "pharmacy", "x"), 5))
@example(("venue", ("venue", "offerings", "swim", "member_price_fen", "1"), 5000))
@example(("sim", ("reader", "reconnect_s"), 10**400))
@example(("sim", ("reader", "reconnect_s"), math.nan))
@example(("every", ("mqtt", "port"), Raw("9" * 4400)))
@example(("every", ("mqtt", "host"), Raw("[" * 3000 + "]" * 3000)))
@example(("every", ("gpio", "door_contact_pin"), 99))
@example(("every", ("gpio", "exit_button_pin"), -1))
def test_one_wrong_key_is_named_in_the_error(mutation: tuple[str, tuple[Step, ...], Any]) -> None:
    name, path, value = mutation
    key = dotted(path)
    doc = put(BASES[name], path, value)
    result = outcome(toml_text(doc))
    if isinstance(result, ConfigError) and result.key is None:  # only a Raw value can break the syntax
        assert isinstance(value, Raw) and result.problem.startswith("not valid TOML: "), result
        line = list(doc).index(path[0]) + 1  # one line per top-level table
        assert f"line {line}" in result.problem, result
        return
    where = slot(path)
    event(f"{'Config' if isinstance(result, Config) else 'ConfigError'}")
    if value is DELETE:
        if isinstance(where, Slot) and where.required:
            assert isinstance(result, ConfigError) and (result.key, result.problem) == (key, "is required but missing")
        elif isinstance(result, ConfigError):
            assert result.key is not None, result
        return
    if where is Unknown:
        assert isinstance(result, ConfigError) and result.key == key and "unknown key" in result.problem, result
        return
    assert isinstance(where, Slot)
    if not fits(value, where.tp):
        assert isinstance(result, ConfigError), f"{key} = {value!r} was taken for {where.tp}"
        assert within(key, result.key or "") and (result.key or "").startswith(key), (key, str(result))
        return
    number = type(value) in (int, float)
    if number and (value != value or (where.lo is not None and value < where.lo)
                   or (where.hi is not None and value > where.hi)):
        assert isinstance(result, ConfigError) and result.key == key, (key, value, result)
        return
    if isinstance(result, ConfigError):
        assert result.key is not None, result
        named = (within(result.key, key) or result.key.split(".")[0] == key.split(".")[0]
                 or key in result.problem or (isinstance(value, str) and repr(value) in result.problem))
        assert named, f"mutated {key} = {value!r}, error names {result.key}: {result.problem}"


PIN_KEYS = [("gpio", k) for k in ("relay_pin", "green_led_pin", "red_led_pin", "buzzer_pin", "door_contact_pin",
                                  "exit_button_pin")]


@FUZZ
@given(st.sampled_from(PIN_KEYS), st.integers(-(2**63), -1) | st.integers(28, 2**63 - 1))
def test_every_gpio_pin_key_refuses_what_is_not_a_bcm_pin(path: tuple[str, str], pin: int) -> None:
    """Pins are BCM 0..27 everywhere ([gpio] docstring, keypad check); gpiozero fails late and unclearly."""
    result = outcome(toml_text(put(BASES["every"], path, pin)))
    assert isinstance(result, ConfigError) and result.key == dotted(path), result


@pytest.mark.parametrize(("name", "path", "value", "key"), [
    # str.isdigit() takes superscript digits, which int() refuses later: at sale time for a tier
    ("pos.toml", ("pos", "rates_bp", "pharmacy", "²"), 500, "rates_bp.pharmacy.²"),
    ("canteen.toml", ("canteen", "windows", 0, "start"), "0²:00", None),
    # a negative price or allowance would pay the member for a meal
    ("canteen.toml", ("canteen", "windows", 0, "prices", "staff", "price_fen"), -500, "price_fen"),
    ("canteen.toml", ("canteen", "windows", 0, "prices", "staff", "allowance_fen"), -1, "allowance_fen"),
])
def test_rule_checks_found_by_fuzzing(name: str, path: tuple[Step, ...], value: Any, key: str | None) -> None:
    result = outcome(toml_text(put(BASES[name], path, value)))
    assert isinstance(result, ConfigError), result
    assert result.path == PATH and result.key is not None and result.key.startswith(path[0]), result
    if key is not None:
        assert key in str(result), result
