"""The one text normalisation: `normalize_text`, applied to every text in training and in every serving path.

`prepare` normalises every source's text (AG News CSV, headed CSV, parquet, the Hub, the sample corpus),
and `predict`, the served MLflow model and batch prediction normalise the texts they score, so a model
never sees text cleaned one way in training and another way in serving. This module imports only the
standard library: the inference path imports it.

What `normalize_text` does (AG News' scrape left the first three quirks; undoing them everywhere is
harmless for other text and keeps train and serve identical):
- HTML character references are unescaped: `&#39;`, `&#x27;` and every HTML5 name that ends with `;`
  (`&amp;`, `&lt;`, `&eacute;`). A name without its `;` (`&copy`) is left as typed: in plain text that is
  more often an ampersand and a word.
- Entities that lost their `&` are restored: `#39;` (`#`, digits, `;`) when the character it names is
  punctuation, a symbol, a space or a non-ASCII letter (so "it#39;s" reads "it's" while "issue #12;" and
  "#65;" keep their digits), and ` quot;`, ` amp;`, ` lt;`, ` gt;`, ` nbsp;` whose `&` became a space
  (that space goes with it: `said. quot;Hi` reads `said."Hi`).
- A backslash stands for a line break and becomes a space, except right before `$`, where it escapes
  the dollar sign and is removed (`\\$55bn` reads "$55bn").
- Whitespace runs (anything `str.isspace`) become one space, none is left at either end.

The result is a fixed point: `normalize_text(normalize_text(x)) == normalize_text(x)` for every string.
That needs care, because unescaping can make a new entity (`&amp;quot;` becomes `&quot;`), so the text
is rewritten left to right onto an output buffer and every rewrite is re-examined where it lands, the
way a single pass cannot. Each rewrite shortens the text, so this stays linear in practice; text holding
no `;` and no backslash (most text) takes a plain whitespace collapse.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.entities import html5

__all__ = ["normalize_text"]

# An entity ending at the end of the buffer (the buffer is re-examined each time a ';' lands on it):
# 1 decimal (its '&' optional: AG News lost it), 2 hexadecimal, 3 named, 4 named whose '&' became a space.
_ENTITY_AT_END = re.compile(
    r"(?:(&)?#(\d{1,7})|&#[xX]([0-9a-fA-F]{1,6})|&([A-Za-z][A-Za-z0-9]{1,31})| (quot|amp|lt|gt|nbsp));\Z"
)
_WINDOW = 40  # longer than any match of _ENTITY_AT_END
# Runs of ordinary characters, split around the two characters that can start a rewrite.
_SPECIAL = re.compile(r"([;\\])")
_LONG_RUN = re.compile(r"\s\s+")
_ONE_SPACE = re.compile(r"\s")


def normalize_text(text: str) -> str:
    """`text` with HTML/AG News escapes undone and whitespace collapsed (see the module docstring).

    Idempotent; pure; imports nothing heavy. `text` must be a str (callers check their inputs).
    """
    if ";" not in text and "\\" not in text:
        return " ".join(text.split())
    # The buffer keeps a whitespace run as one or two spaces (whether it was longer than one matters to
    # ` quot;`, which takes one space with it); runs are collapsed once at the end, which cannot complete
    # a rule (every rule that involves a space already saw one there).
    out: list[str] = []
    for chunk in _SPECIAL.split(text):
        if chunk:
            _push_chunk(out, chunk)
    if out and out[-1] == "\\":  # a trailing backslash is a line break at the end: dropped with it
        out.pop()
    return " ".join("".join(out).split())


def _push_chunk(out: list[str], chunk: str) -> None:
    """Append `chunk` (one ';', one backslash, or a run holding neither) to `out`, rewriting as it lands."""
    if out and out[-1] == "\\":  # a pending backslash is decided by the character after it
        _push_char(out, chunk[0])
        chunk = chunk[1:]
    if len(chunk) == 1:
        _push_char(out, chunk)
    elif chunk:  # no rule ends inside a run without ';': only its whitespace is normalised
        out.extend(_ONE_SPACE.sub(" ", _LONG_RUN.sub("  ", chunk)))


def _push_char(out: list[str], char: str) -> None:
    """Append one character to `out`, then rewrite the end of `out` if the character completes a rule."""
    if out and out[-1] == "\\":
        out.pop()
        if char == "$":
            out.append("$")
            return
        out.append(" ")
    if char.isspace():
        out.append(" ")
        return
    out.append(char)
    if char != ";":
        return
    tail = "".join(out[-_WINDOW:])
    match = _ENTITY_AT_END.search(tail)
    if match is None:
        return
    replacement = _entity_value(match)
    if replacement is None:
        return
    del out[len(out) - (len(tail) - match.start()):]
    for new_char in replacement:  # re-examined where it lands: it may complete another entity
        _push_char(out, new_char)


def _entity_value(match: re.Match[str]) -> str | None:
    """The text an entity match stands for, or None when it is not to be replaced."""
    ampersand, decimal, hexadecimal, name, spaced = match.groups()
    if spaced:
        return html5[f"{spaced};"]
    if name:
        return html5.get(f"{name};")
    if hexadecimal:
        return html.unescape(f"&#x{hexadecimal};")
    value = html.unescape(f"&#{decimal};")
    if ampersand or _restorable(value):
        return value
    return None


def _restorable(value: str) -> bool:
    """Whether a bare `#N;` is an entity that lost its '&' (AG News), judged by the character it names."""
    return bool(value) and all(
        not (char.isascii() and char.isalnum()) and char != "\ufffd" and not unicodedata.category(char).startswith("C")
        for char in value
    )
