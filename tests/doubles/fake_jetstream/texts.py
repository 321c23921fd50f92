"""Post texts: the real sample texts, kept as they are or varied with the characters that
break naive CSV and JSON handling (quotes, commas, newlines, CR, tabs, emoji sequences,
right-to-left and combining scripts, `&<>` that Go escapes, U+2028, spreadsheet formulas,
empty and long texts), so the collector's `posts.csv` round trip is really tested.
"""

from __future__ import annotations

import random

# Each fragment is there for a reason named beside it.
FRAGMENTS = (
    'She said "no", then "yes, fine" - quotes, commas',  # CSV quoting
    "first line\nsecond line\n\nafter a blank line",  # embedded newlines
    "windows line\r\nend and a\ttab",  # CR LF and tab
    # emoji with ZWJ sequences, a skin tone and a flag
    "\U0001f98b bluesky \U0001f3f3\ufe0f\u200d\U0001f308 "
    "\U0001f469\U0001f3fd\u200d\U0001f4bb \U0001f1ef\U0001f1f5",
    "مرحبا بالعالم \u2013 שלום עולם",  # right-to-left scripts
    # NFD accent, a ligature, full-width letters
    "café vs cafe\u0301, \ufb01ne, \uff26\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48",
    "<b>bold?</b> & more &amp; <script>",  # Go escapes & < > as \\u0026 \\u003c \\u003e
    "line\u2028separator and paragraph\u2029separator",  # Go escapes these too
    "=HYPERLINK(\"http://x\"),+1,-1,@cmd",  # spreadsheet formula starts
    'back\\slash and {"json": "inside"}',  # backslashes, JSON-looking text
    "  leading and trailing spaces  ",  # whitespace kept as is
    "replacement \ufffd char and zero\u200bwidth",  # U+FFFD, zero-width space
    "日本語のテキスト、句読点。한국어 텍스트",  # CJK
    "Ελληνικά, русский, ქართული",  # other alphabets
)
LONG_WORDS = ("lorem", "ipsum", "🙂", "ß", "naïve", "déjà", "vu", "—", "\"q\"", "a,b")


def post_text(original: str, rnd: random.Random) -> tuple[str, bool]:
    """A text for a post made from a sample whose text was `original`; True when it is the
    original (its facets, which index its UTF-8 bytes, still fit)."""
    roll = rnd.random()
    if roll < 0.35:
        return original, True
    fragment = rnd.choice(FRAGMENTS)
    if roll < 0.60:
        return f"{original} {fragment}", False
    if roll < 0.85:
        return fragment, False
    if roll < 0.90:
        return "", False  # an image-only post has an empty text
    if roll < 0.95:
        return " ".join(rnd.choice(LONG_WORDS) for _ in range(60))[:300], False
    return f"{fragment}\n{rnd.choice(FRAGMENTS)}", False
