"""The identifiers of atproto records, made deterministically from a seed: DIDs (`did:plc:`
and 24 base32 characters), TIDs (the 13-character record keys and commit revisions) and
CIDs (CIDv1, dag-cbor, sha-256, base32: `bafyrei...`, 59 characters).

They only need the real shapes and uniqueness, not real cryptography: a collector keys
records on `at://<did>/<collection>/<rkey>` and never checks a CID.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from functools import lru_cache

TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable, as atproto TIDs use
CID_PREFIX = bytes([0x01, 0x71, 0x12, 0x20])  # CIDv1, dag-cbor, sha2-256, 32-byte digest


def digest(*parts: object, size: int = 32) -> bytes:
    """A stable digest of `parts` (joined with ':'), the one source of randomness here."""
    text = ":".join(str(part) for part in parts)
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def number(*parts: object) -> int:
    """A stable 64-bit number from `parts`."""
    return int.from_bytes(digest(*parts, size=8), "big")


def b32(data: bytes) -> str:
    """Lower-case RFC 4648 base32 without padding (the alphabet of did:plc and CIDs)."""
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


@lru_cache(maxsize=16384)
def plc_did(seed: int, author: int) -> str:
    """The DID of author number `author`: `did:plc:` and 24 base32 characters."""
    return "did:plc:" + b32(digest(seed, "author", author, size=15))[:24]


def tid(micros: int, clock_id: int) -> str:
    """A TID: 53 bits of microseconds and 10 bits of clock id in 13 sortable characters."""
    value = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    chars = []
    for _ in range(13):
        chars.append(TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def cid(*parts: object) -> str:
    """A CIDv1 string (`b` + base32 of the CID bytes) over a digest of `parts`."""
    return "b" + b32(CID_PREFIX + digest("cid", *parts))


def iso_millis(micros: int) -> str:
    """`2026-07-04T14:38:06.240Z`, the form atproto clients write `createdAt` in."""
    moment = datetime.fromtimestamp(micros / 1_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{(micros // 1000) % 1000:03d}Z"
