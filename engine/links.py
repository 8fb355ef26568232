"""Signed, expiring download links for files over Discord's upload limit.

A token is `<id>.<expires>.<signature>`: the signature (HMAC-SHA256 over id and expiry with the
server's secret) stops forged or edited links, the expiry is checked before the database is asked, and
the database row lets a link be revoked (its project deleted) before it expires."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

# id (token_urlsafe(12) → 16 chars), expiry (unix seconds), signature (unpadded base64 of 32 bytes).
TOKEN_SHAPE = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})", re.ASCII)


@dataclass(frozen=True)
class ParsedToken:
    token_id: str
    expires_at: int


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_config(cls, configured: str, secret_file: Path) -> LinkSigner:
        """Uses the configured secret, or one generated on first start and kept in the data folder."""
        if configured:
            return cls(configured.encode())
        if not secret_file.exists():
            secret_file.parent.mkdir(parents=True, exist_ok=True)
            secret_file.write_bytes(secrets.token_bytes(32))
            secret_file.chmod(0o600)
        return cls(secret_file.read_bytes())

    def sign(self, token_id: str, expires_at: int) -> str:
        return f"{token_id}.{expires_at}.{self._signature(token_id, expires_at)}"

    def verify(self, token: str, now: float) -> ParsedToken | None:
        """The token's parts if it is authentic and unexpired, else None."""
        shape = TOKEN_SHAPE.fullmatch(token)
        if shape is None:  # checked first, so nothing below ever sees non-ASCII or huge input
            return None
        token_id, expires_at, signature = shape[1], int(shape[2]), shape[3]
        if not hmac.compare_digest(signature, self._signature(token_id, expires_at)):
            return None
        if expires_at <= now:
            return None
        return ParsedToken(token_id, expires_at)

    def _signature(self, token_id: str, expires_at: int) -> str:
        mac = hmac.new(self._secret, f"{token_id}.{expires_at}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def new_token_id() -> str:
    return secrets.token_urlsafe(12)
