"""What the client reads of its own token: the ``sub`` claim (its user id).

The claims are read, not verified: the token is this client's own, and the hub verifies
it on every request. PyJWT (a dependency of the hub) would do the decoding, but importing
it loads ``cryptography`` (~10 MB resident), which an idle device has no other use for;
base64url and JSON (RFC 7519 section 7.2, steps 1-7 without the signature check) are all
it takes here.
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["token_subject"]


def token_subject(token: str) -> str | None:
    """The ``sub`` claim of a compact JWT, or ``None`` when it has none or is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) else None
