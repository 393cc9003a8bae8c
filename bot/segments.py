"""Count SMS segments the way carriers bill them: GSM 03.38 septets, else UCS-2 code units."""

from __future__ import annotations

from enum import StrEnum

# GSM 03.38 default alphabet. ESC (0x1B) is left out: it only introduces the extension table.
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each is sent as ESC + char, so it costs two septets.
GSM_EXTENDED = frozenset("\f^{}\\[~]|€")

GSM_SINGLE, GSM_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


class Encoding(StrEnum):
    """How a message is encoded on the air."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


def encoding(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM 03.38 tables, else UCS-2."""
    if all(ch in GSM_BASIC or ch in GSM_EXTENDED for ch in text):
        return Encoding.GSM7
    return Encoding.UCS2


def segments(text: str) -> int:
    """Number of SMS segments text is sent as (0 for empty text)."""
    if not text:
        return 0
    if encoding(text) is Encoding.GSM7:
        units = [2 if ch in GSM_EXTENDED else 1 for ch in text]
        return _pack(units, GSM_SINGLE, GSM_PART)
    # UTF-16 code units; a character outside the BMP is a surrogate pair.
    units = [1 if ord(ch) <= 0xFFFF else 2 for ch in text]
    return _pack(units, UCS2_SINGLE, UCS2_PART)


def _pack(units: list[int], single: int, part: int) -> int:
    """Fill segments in order; an escape sequence or surrogate pair is never split."""
    if sum(units) <= single:
        return 1
    count, used = 1, 0
    for size in units:
        if used + size > part:
            count, used = count + 1, 0
        used += size
    return count
