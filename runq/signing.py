"""Signed messages: who may make a worker run a task, and with which arguments.

Anyone who can write to the broker can otherwise put any task with any arguments in front
of a worker. With ``App(url, signing_keys=[new, old])`` (or ``RUNQ_SIGNING_KEYS=new,old``)
the producer ends each payload with an HMAC-SHA256 of it, and a worker that holds keys runs
only the messages one of its keys verifies. Anything else (a payload altered after signing,
one signed with a key the worker does not hold, an unsigned one) ends ``failed`` with error
type ``BadSignature``, its raw text kept, and never runs. A worker without keys runs signed
and unsigned messages alike (so producers can start signing before workers start checking).

A signed payload is the message's JSON with one more field, always the last:

    {"name":"add","args":[2,3],"sig":"<key id>.<mac>"}
    mac    = base64url(HMAC-SHA256(key, "runq-sig-1\\n" + task id + "\\n" + body)), unpadded
    body   = the payload without its ``,"sig":"..."`` (the producer's exact text, never re-encoded)
    key id = the first 8 hex digits of SHA-256("runq key id\\n" + key): which key, not the key

The task id is covered, so a signed payload copied onto another task (another id or queue)
does not verify. What signing does not stop: a writer to the broker can still make an
existing, correctly signed task run again (delivery is at least once anyway) or delete it.

Rotation without downtime: the first key signs, every key verifies. Give the workers
``[old, new]``, then the producers ``[new, old]``, then, once no message signed with the old
key is left (mind delayed tasks and retry back-offs), drop it everywhere.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Sequence

MIN_KEY_LENGTH = 16
_DOMAIN = b"runq-sig-1\n"
_SIG = re.compile(r',"sig":"([0-9a-f]{8})\.([A-Za-z0-9_-]{43})"\}\Z')


class BadSignature(Exception):
    """A message a worker with signing keys must not run; the text says why."""


def key_id(key: str) -> str:
    """A short public name for a key, so a worker finds the right one among several."""
    return hashlib.sha256(b"runq key id\n" + key.encode()).hexdigest()[:8]


def check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """The keys as a tuple, or a ``ValueError``/``TypeError`` that never shows a key."""
    if isinstance(keys, (str, bytes)):
        raise TypeError("signing_keys takes a list of keys (the first signs, all verify), not one string")
    checked = tuple(keys)
    for position, key in enumerate(checked, 1):
        if not isinstance(key, str):
            raise TypeError(f"signing key #{position} is a {type(key).__name__}; keys are strings")
        if len(key) < MIN_KEY_LENGTH or key != key.strip():
            raise ValueError(
                f"signing key #{position} must be at least {MIN_KEY_LENGTH} characters without surrounding"
                " spaces (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    if len({key_id(key) for key in checked}) != len(checked):
        raise ValueError("signing_keys holds the same key twice")
    return checked


class Signer:
    """Signs with the first key, verifies with any. Its repr shows key ids, never keys."""

    __slots__ = ("_keys", "_signing")

    def __init__(self, keys: Sequence[str]) -> None:
        checked = check_keys(keys)
        if not checked:
            raise ValueError("a Signer needs at least one key")
        self._keys = {key_id(key): key.encode() for key in checked}
        self._signing = next(iter(self._keys.items()))

    def __repr__(self) -> str:
        return f"<runq.signing.Signer key ids {', '.join(self._keys)}>"

    def seal(self, task_id: str, body: str) -> str:
        """``body`` (a JSON object's text) with its signature as the last field."""
        kid, key = self._signing
        return f'{body[:-1]},"sig":"{kid}.{_mac(key, task_id, body)}"}}'

    def open(self, task_id: str, payload: str) -> str:
        """The body a signature vouches for (what the worker may decode and run), else
        :class:`BadSignature` saying why."""
        found = _SIG.search(payload)
        if found is None:
            raise BadSignature("the message is not signed, and this worker runs only signed messages")
        kid, mac = found.groups()
        key = self._keys.get(kid)
        if key is None:
            raise BadSignature(f"the message is signed with key {kid}, which this worker does not hold")
        body = payload[: found.start()] + "}"
        if not hmac.compare_digest(mac, _mac(key, task_id, body)):
            raise BadSignature(f"the signature (key {kid}) does not match: the message was altered after signing")
        return body


def _mac(key: bytes, task_id: str, body: str) -> str:
    digest = hmac.new(key, _DOMAIN + task_id.encode() + b"\n" + body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@functools.lru_cache(maxsize=16)
def signer(keys: tuple[str, ...]) -> Signer | None:
    """The Signer for a settings' ``signing_keys`` (built once per key set); ``None`` without keys."""
    return Signer(keys) if keys else None
