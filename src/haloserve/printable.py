"""Make text from files or peers safe to show on a terminal: one helper for every command.

Model metadata (a GGUF's ``general.name``, tensor names), file names and messages from remote servers
can carry ESC, CSI/OSC sequences and other C0/C1 controls that would retitle a terminal, recolour it or
hide text. :func:`printable` shows each such character as a visible escape (``\\x1b``) instead; rich's
markup is a separate concern handled by ``cli.render.markup_safe``.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, the Unicode line/paragraph separators, bidirectional overrides and
# isolates ("Trojan Source", CVE-2021-42574), and lone surrogates (undecodable file-name bytes, which
# would also make print() raise UnicodeEncodeError).
_SPECIAL = "\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_SPECIAL}]")
_UNSAFE_MULTILINE = re.compile(f"[\x00-\x08\x0b-\x1f{_SPECIAL}]")  # keeps tab and newline


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = None, *, multiline: bool = False) -> str:
    """``text`` with control characters shown as escapes (``multiline`` keeps newlines and tabs)."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "..."
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE).sub(_escape, s)
