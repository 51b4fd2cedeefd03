"""Word error rate, pure Python, for tests and benchmarks.

``normalise`` lower-cases, turns hyphens into spaces, drops other punctuation and spells out
the small numbers Whisper likes to write as digits ("25" -> "twenty five", "7:30" -> "seven
thirty", "12th" -> "twelfth"), so that a reference written in words and a hypothesis written
in digits compare equal. ``wer`` is the word-level Levenshtein distance over the reference
length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _spell(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + _spell(rest))
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return _spell(thousands) + " thousand" + ("" if rest == 0 else " " + _spell(rest))
    return str(n)


def _ordinal(n: int) -> str:
    words = _spell(n).split()
    last = words[-1]
    if last in _ORDINALS:
        words[-1] = _ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _number(match: re.Match[str]) -> str:
    token = match.group(0)
    clock = re.fullmatch(r"(\d{1,2})[:.](\d{2})", token)
    if clock:
        hours, minutes = int(clock.group(1)), int(clock.group(2))
        return _spell(hours) + ("" if minutes == 0 else " " + _spell(minutes))
    ordinal = re.fullmatch(r"(\d+)(st|nd|rd|th)", token)
    if ordinal:
        return _ordinal(int(ordinal.group(1)))
    return _spell(int(token.replace(",", "")))


def normalise(text: str) -> list[str]:
    """Lower-case words, no punctuation, small numbers spelled out."""
    text = text.lower().replace("%", " percent")
    text = re.sub(r"[£$€]", " ", text)
    text = re.sub(r"\d{1,2}[:.]\d{2}\b|\d+(?:st|nd|rd|th)\b|\d{1,3}(?:,\d{3})+|\d+", _number, text)
    text = re.sub("[-\u2010\u2013\u2014/]", " ", text)
    text = re.sub(r"[^\w\s']", "", text)
    text = text.replace("'", "")
    return text.split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (r != h),
            )
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalise`."""
    ref = normalise(reference)
    hyp = normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
