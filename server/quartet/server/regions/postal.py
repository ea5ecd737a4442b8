"""Reading an FSA out of what people type: an FSA or a whole postal code, in any case or spacing.

Canada Post's rules: an FSA is letter, digit, letter ("K1A"); a postal code adds digit, letter,
digit ("K1A 0B1"). D, F, I, O, Q and U are never used (they are too easily misread), and W and Z
never start a postal code.
"""

from __future__ import annotations

import re
import string

FIRST_LETTERS = frozenset("ABCEGHJKLMNPRSTVXY")
LETTERS = frozenset("ABCEGHJKLMNPRSTVWXYZ")
MAX_LENGTH = 16  # far more than "K1A 0B1" with generous spacing; longer text is not an attempt
_SHAPE = re.compile(r"(\S{3})(?:\s*(\S{3}))?")
_NEVER_USED = "D, F, I, O, Q and U are never used in postal codes"


class InvalidFsa(ValueError):
    """The text is not an FSA or postal code; the message says why, for people."""


def parse_fsa(text: str) -> str:
    """The FSA, upper case, of text: an FSA or a postal code, surrounding spaces ignored.

    Raises InvalidFsa with the first problem found.
    """
    value = text.strip().upper()
    if not value:
        raise InvalidFsa('is required: an FSA such as "K1A" or a postal code such as "K1A 0B1"')
    match = _SHAPE.fullmatch(value) if len(value) <= MAX_LENGTH else None
    if match is None:
        shown = f'"{value}" is not' if len(value) <= MAX_LENGTH else "is not"
        raise InvalidFsa(f'{shown} an FSA such as "K1A" or a postal code such as "K1A 0B1"')
    fsa, second_half = match.groups()
    if not (_letter(fsa[0]) and _digit(fsa[1]) and _letter(fsa[2])):
        raise InvalidFsa(f'"{fsa}" is not letter, digit, letter, as an FSA such as "K1A" is')
    if fsa[0] not in FIRST_LETTERS:
        raise InvalidFsa(
            f'"{fsa}" starts with {fsa[0]}, which no FSA does: '
            "D, F, I, O, Q, U, W and Z never start a postal code"
        )
    if fsa[2] not in LETTERS:
        raise InvalidFsa(f'"{fsa}" has {fsa[2]} third: {_NEVER_USED}')
    if second_half is not None:
        _check_second_half(second_half)
    return fsa


def _check_second_half(half: str) -> None:
    if not (_digit(half[0]) and _letter(half[1]) and _digit(half[2])):
        raise InvalidFsa(
            f'the postal code\'s second half "{half}" is not digit, letter, digit, as in "0B1"'
        )
    if half[1] not in LETTERS:
        raise InvalidFsa(f'the postal code\'s second half "{half}" has {half[1]}: {_NEVER_USED}')


def _letter(character: str) -> bool:
    return character in string.ascii_uppercase


def _digit(character: str) -> bool:
    return character in string.digits
