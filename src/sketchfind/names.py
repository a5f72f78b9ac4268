"""File names as people see them: any byte sequence the file system allows, shown on one line.

Paths keep their exact bytes everywhere they are used to open a file (Python holds undecodable bytes as
surrogate escapes, ``os.fsdecode``); only what is printed or sent as JSON goes through :func:`shown_name`.
"""

from __future__ import annotations

import os


def shown_name(text: str | os.PathLike) -> str:
    """``text`` printable on one line in UTF-8: undecodable bytes as ``\\xNN``, control characters escaped."""
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")  # file-name bytes that were not UTF-8
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")  # other lone surrogates (from JSON \ud800 escapes)
    decoded = raw.decode("utf-8", "backslashreplace")
    if decoded.isprintable():
        return decoded
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in decoded)
