"""Synthetic but realistic members: 1.1 million in three batches, several cards each.

Realistic means the shape a terminal will meet in the city: masked Chinese
names drawn from census-like surname frequencies, a few large work units and
a long tail of small ones, ~95 % active, 3 % suspended, 2 % left, a union
card for everyone, a UnionPay bank card for most, an e-card for some and a
legacy MIFARE badge for a few.

Card identifiers are a pure function of (seed, member_no), see
:func:`card_identifiers`, so the simulator can build a virtual card for any
member without holding the list; everything else comes from one seeded
generator, so the same (count, seed) always yields the same list.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

from terminal.cardref import card_ref

#: Asia/Shanghai has been UTC+8 without daylight saving since 1991; a fixed
#: offset keeps the generator independent of the host's tz database.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
DAY = 86_400

#: (surname, weight): roughly the 2020 census frequencies, compound surnames included.
SURNAMES = (
    ("王", 710), ("李", 700), ("张", 640), ("刘", 540), ("陈", 460), ("杨", 310), ("黄", 250),
    ("赵", 200), ("吴", 200), ("周", 190), ("徐", 150), ("孙", 150), ("马", 120), ("朱", 120),
    ("胡", 110), ("郭", 110), ("何", 100), ("林", 100), ("高", 100), ("罗", 90), ("郑", 80),
    ("梁", 80), ("谢", 70), ("宋", 60), ("唐", 60), ("许", 60), ("韩", 60), ("冯", 50),
    ("邓", 50), ("曹", 50), ("彭", 50), ("曾", 50), ("肖", 50), ("田", 50), ("董", 50),
    ("袁", 40), ("潘", 40), ("于", 40), ("蒋", 40), ("蔡", 40), ("余", 40), ("杜", 40),
    ("叶", 40), ("程", 40), ("苏", 30), ("魏", 30), ("吕", 30), ("丁", 30), ("任", 30),
    ("沈", 30), ("姚", 30), ("卢", 30), ("姜", 30), ("崔", 30), ("钟", 30), ("谭", 30),
    ("陆", 30), ("汪", 30), ("范", 30), ("金", 30), ("欧阳", 5), ("上官", 1), ("司马", 1),
    ("诸葛", 1),
)
COMPOUND_SURNAMES = frozenset(s for s, _ in SURNAMES if len(s) == 2) | {
    "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "夏侯", "长孙", "宇文", "司徒", "端木"}
GIVEN_CHARS = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红建文辉力鹏宇浩凯健俊帆帅旭宁龙"
    "林欣佳雪梅琳晨阳婷慧颖倩思博子轩涵睿然泽宏志海斌波亮飞鑫琪悦诗雨嘉怡瑶晓春燕峰坤"
)

#: (org id, work unit name, relative size). The id is what scopes use (``org-1001``).
ORGS = (
    ("1001", "杭州市公共交通集团有限公司", 100), ("1002", "杭州城投建设集团有限公司", 80),
    ("1003", "杭州市第三人民医院", 60), ("1004", "杭州钱江机电设备有限公司", 55),
    ("1005", "浙江之江纺织印染有限公司", 50), ("1006", "杭州市市政工程集团有限公司", 45),
    ("1007", "杭州滨江电子科技有限公司", 40), ("1008", "杭州西溪物流有限公司", 35),
    ("1009", "浙江天目山制药股份有限公司", 30), ("1010", "杭州运河食品有限公司", 28),
    ("1011", "杭州萧山汽车零部件有限公司", 26), ("1012", "杭州湖滨商贸集团有限公司", 24),
    ("1013", "浙江钱塘江港务有限公司", 22), ("1014", "杭州市拱墅区环境卫生管理处", 20),
    ("1015", "杭州新安江水电工程有限公司", 18), ("1016", "杭州余杭建材有限公司", 16),
    ("1017", "杭州富春江造纸有限公司", 14), ("1018", "杭州临平纺织机械厂", 12),
    ("1019", "杭州下沙电子制造有限公司", 11), ("1020", "杭州良渚文化旅游发展有限公司", 10),
    ("1021", "杭州建德化工有限公司", 9), ("1022", "杭州市第十四中学", 8),
    ("1023", "杭州西湖风景名胜区管理委员会", 7), ("1024", "杭州市第一社会福利院", 5),
)
#: Work units without a canteen of their own: their members get no canteen group.
NO_CANTEEN = frozenset({"1013", "1018", "1023"})

#: First day of validity of each enrolment batch.
BATCH_START = {1: date(2023, 1, 1), 2: date(2024, 3, 1), 3: date(2025, 1, 1)}
#: Share of the list per batch: 100k, 400k, 600k of 1.1M.
BATCH_ELEVENTHS = (1, 4, 6)

#: Real-looking UnionPay BINs (62xxxx).
UNIONPAY_BINS = ("622202", "622848", "621700", "622588", "621226", "623058", "621483", "622262")


def _cumulative(weights: list[int]) -> list[float]:
    """Cumulative shares, for drawing weighted choices with one random() and a bisect."""
    cum = list(itertools.accumulate(weights))
    return [c / cum[-1] for c in cum]


_SURNAME_CUM = _cumulative([w for _, w in SURNAMES])
_ORG_CUM = _cumulative([w for _, _, w in ORGS])


#: ASCII digit -> value of the doubled digit, for the Luhn sum.
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))
#: Digits between BIN and check digit: 16-digit cards most, 19-digit next, a few 17/18.
_PAN_DIGITS = (9, 9, 9, 9, 9, 10, 11, 12, 12, 12)


def member_no(index: int) -> str:
    """The member number of the ``index``-th member (0-based); sorts as it counts."""
    return f"33{index + 1:08d}"


def mask_name(full: str) -> str:
    """Mask a name the way the card office prints it: 王*明, 张*, 欧阳*娜.

    Chinese names keep the surname (compound ones too) and the last character
    of the given name; other names keep their first and last character.
    """
    if "*" in full:
        return full
    name = full.strip()
    surname_len = 2 if name[:2] in COMPOUND_SURNAMES and len(name) > 2 else 1
    given = name[surname_len:]
    if not given:
        return name + "*"
    if any("\u4e00" <= c <= "\u9fff" for c in name):
        return name[:surname_len] + "*" + (given[-1] if len(given) > 1 else "")
    return name[0] + "*" + name[-1]


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass the Luhn test (ISO/IEC 7812-1)."""
    rev = partial.encode("ascii")[::-1]
    # Once the check digit is appended, every other digit of ``partial`` from
    # its right end is doubled (9 subtracted when that exceeds 9).
    doubled, plain = rev[0::2].translate(_LUHN_DOUBLED), rev[1::2]
    return str(-(sum(doubled) + sum(plain) - 48 * len(plain)) % 10)


def luhn_valid(number: str) -> bool:
    """True when ``number`` (digits only) passes the Luhn test."""
    return number.isascii() and number.isdigit() and len(number) > 1 and \
        luhn_check_digit(number[:-1]) == number[-1]


def card_identifiers(seed: int, member: str) -> dict[str, bytes | str]:
    """The raw identifiers of every card ``member`` holds, derived from (seed, member_no).

    As ``docs/card-profiles.md`` defines them: ``union``: the 7-byte DESFire
    UID (NXP, first byte 0x04); ``pan``: UnionPay card number, 16-19 digits
    with a valid Luhn digit; ``ecard``: the member number the QR token
    carries; ``uid``: a 7-byte legacy MIFARE UID (0x04...). Everyone has a
    union card, ~80 % a bank card, ~30 % an e-card, ~5 % a legacy badge.
    Kinds come in alphabetical order, the order of a canonical record.
    """
    h = hashlib.blake2b(f"{seed}:{member}".encode(), digest_size=40, person=b"unionterm-cards").digest()
    cards: dict[str, bytes | str] = {}
    if h[17] < 77:
        cards["ecard"] = member
    if h[6] < 205:
        digits = _PAN_DIGITS[h[7] % len(_PAN_DIGITS)]
        body = UNIONPAY_BINS[h[8] % len(UNIONPAY_BINS)]
        body += f"{int.from_bytes(h[9:17], 'big') % 10 ** digits:0{digits}d}"
        cards["pan"] = body + luhn_check_digit(body)
    if h[26] < 13:
        cards["uid"] = b"\x04" + h[27:33]
    cards["union"] = b"\x04" + h[0:6]
    return cards


def batch_sizes(count: int) -> tuple[int, int, int]:
    """Split ``count`` members 1:4:6 into batches, the last one taking the rounding."""
    first = round(count * BATCH_ELEVENTHS[0] / 11)
    second = round(count * (BATCH_ELEVENTHS[0] + BATCH_ELEVENTHS[1]) / 11) - first
    return first, second, count - first - second


def midnight(day: date) -> int:
    """Unix time of 00:00 Asia/Shanghai on ``day``: validity starts and ends at local midnight."""
    return int(datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).timestamp())


def _access_groups(org_id: str, extras: int, role: str) -> tuple[str, ...]:
    """Doors of the member's site; ``extras`` 0: gym and library (10 %), 1: gym (10 %), 2: none."""
    groups = [f"site-{org_id}"]
    if extras <= 1:
        groups.append("gym")
    if extras == 0:
        groups.append("library")
    if role == "technician":
        groups.append("plant-room")
    elif role == "supervisor":
        groups.append(f"office-{org_id}")
    return tuple(sorted(groups))


def generate_members(count: int, seed: int, card_key: bytes) -> Iterator[dict[str, Any]]:
    """Yield ``count`` member records in member_no order, deterministic in (count, seed)."""
    if not 0 <= count <= 99_999_999:
        raise ValueError("count must be 0..99,999,999 (member numbers have 8 digits)")
    rand = random.Random(seed).random
    b1, b2, _ = batch_sizes(count)
    starts = {b: midnight(d) for b, d in BATCH_START.items()}
    groups_of = functools.lru_cache(maxsize=None)(_access_groups)
    for index in range(count):
        no = member_no(index)
        batch = 1 if index < b1 else 2 if index < b1 + b2 else 3
        surname = SURNAMES[bisect.bisect_left(_SURNAME_CUM, rand())][0]
        last_char = GIVEN_CHARS[int(rand() * len(GIVEN_CHARS))] if rand() < 0.8 else ""
        org_id, org_name, _ = ORGS[bisect.bisect_left(_ORG_CUM, rand())]
        r = rand()
        role = "member" if r < 0.97 else "technician" if r < 0.985 else \
            "supervisor" if r < 0.99 else "visitor"
        r = rand()
        status = "active" if r < 0.95 else "suspended" if r < 0.98 else "left"
        r = rand()
        tier = 0 if r < 0.6 else 1 if r < 0.85 else 2 if r < 0.95 else 3
        valid_from = starts[batch] + int(rand() * 90) * DAY
        valid_until = 0
        if role == "visitor":
            valid_until = valid_from + 90 * DAY
        elif status == "left":
            valid_until = valid_from + (30 + int(rand() * 330)) * DAY
        yield {
            "member_no": no,
            "name": surname + "*" + last_char,
            "org": org_name,
            "status": status,
            "tier": tier,
            "canteen_group": "" if org_id in NO_CANTEEN else f"cg-{org_id}",
            "access_groups": list(groups_of(org_id, min(int(rand() * 10), 2), role)),
            "valid_from": valid_from,
            "valid_until": valid_until,
            "batch": batch,
            "role": role,
            "pin_hash": "",
            # card_identifiers gives one card per kind in kind order: already canonical.
            "cards": [{"kind": kind, "ref": card_ref(card_key, kind, ident).hex()}
                      for kind, ident in card_identifiers(seed, no).items()],
        }


def org_ids() -> dict[str, str]:
    """Work-unit name by org id, for building ``org-<id>`` scopes."""
    return {org_id: name for org_id, name, _ in ORGS}
