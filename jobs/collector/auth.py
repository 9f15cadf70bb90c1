"""Who may write: API keys per source and OAuth 2.0 client-credentials tokens.

Keys are compared by their SHA-256 in constant time; the settings hold only that digest or the
name of the variable (or secret) holding the key. ``POST /oauth/token`` trades a client's id
and secret for a short-lived access token: a JWT signed with HMAC-SHA256 by the key in
``collector.token_key_env``, carrying the client id, its scopes and an expiry. During a key
rotation ``collector.previous_token_key_env`` still verifies (never signs) the tokens issued
before it, until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from jobs.runtime.errors import ConfigError
from jobs.runtime.secrets import SecretSource
from jobs.runtime.settings import CollectorKey, CollectorSettings

WRITE_SCOPE = "events:write"
ISSUER = "email-lakehouse-collector"


@dataclass(frozen=True)
class Principal:
    name: str  # api key's source name, OAuth client id, or site
    scopes: tuple[str, ...]
    kind: str  # key | token | site


class Refused(Exception):
    """A request that may not write: status 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(self, settings: CollectorSettings, secrets: SecretSource):
        def digest(setting: str, key: CollectorKey) -> bytes:
            if key.sha256 is not None:
                return bytes.fromhex(key.sha256)
            assert key.env is not None
            return _digest(secrets.get(setting, key.env))

        self.keys = [(name, digest(f"collector.api_keys.{name}", key), key.scopes)
                     for name, key in sorted(settings.api_keys.items())]
        self.clients = {client: (digest(f"collector.oauth_clients.{client}", key), key.scopes)
                        for client, key in settings.oauth_clients.items()}
        self.signing: bytes | None = None
        self.verifying: list[bytes] = []
        if self.clients:
            self.signing = secrets.get("collector.token_key_env", settings.token_key_env).encode()
            self.verifying.append(self.signing)
            if settings.previous_token_key_env:
                self.verifying.append(
                    secrets.get("collector.previous_token_key_env", settings.previous_token_key_env).encode())
            if len(self.signing) < 32:
                raise ConfigError(f"collector.token_key_env: {settings.token_key_env} holds fewer than 32 characters; "
                                  "a token key needs at least 32 random characters")
        self.ttl = settings.token_ttl_seconds

    # -- API keys ----------------------------------------------------------------------------
    def api_key(self, presented: str) -> Principal:
        digest = _digest(presented)
        found = None
        for name, expected, scopes in self.keys:  # every key compared: the time says nothing
            if hmac.compare_digest(digest, expected) and found is None:
                found = Principal(name, scopes, "key")
        if found is None:
            raise Refused(401, "invalid_key", "unknown API key")
        return found

    # -- OAuth 2.0 client credentials ----------------------------------------------------------
    def issue_token(self, client_id: str, secret: str, scope: str | None,
                    now: float | None = None) -> dict[str, object]:
        known = self.clients.get(client_id)
        if known is None or self.signing is None or not hmac.compare_digest(_digest(secret), known[0]):
            raise Refused(401, "invalid_client", "unknown client or wrong secret")
        allowed = known[1]
        asked = tuple(scope.split()) if scope else allowed
        if not set(asked) <= set(allowed):
            raise Refused(400, "invalid_scope", f"scope {' '.join(sorted(set(asked) - set(allowed)))} is not "
                                                f"granted to this client")
        issued = int(time.time() if now is None else now)
        claims = {"iss": ISSUER, "sub": client_id, "scope": " ".join(asked), "iat": issued, "exp": issued + self.ttl}
        return {"access_token": self._sign(claims), "token_type": "Bearer", "expires_in": self.ttl,
                "scope": claims["scope"]}

    def _sign(self, claims: dict[str, object]) -> str:
        assert self.signing is not None
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self.signing, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def token(self, token: str, now: float | None = None) -> Principal:
        try:
            head, body, signature = token.split(".")
            header = json.loads(_unb64(head))
            given = _unb64(signature)
        except ValueError:
            raise Refused(401, "invalid_token", "malformed access token") from None
        if header.get("alg") != "HS256":
            raise Refused(401, "invalid_token", "access token not signed with HS256")
        signed = f"{head}.{body}".encode()
        if not any(hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), given)
                   for key in self.verifying):
            raise Refused(401, "invalid_token", "access token signature does not verify")
        claims = json.loads(_unb64(body))
        if claims.get("iss") != ISSUER or claims.get("sub") not in self.clients:
            raise Refused(401, "invalid_token", "access token for an unknown client")
        if float(claims.get("exp", 0)) <= (time.time() if now is None else now):
            raise Refused(401, "expired_token", "access token expired")
        return Principal(str(claims["sub"]), tuple(str(claims.get("scope", "")).split()), "token")

    def bearer(self, credential: str) -> Principal:
        """An ``Authorization: Bearer`` value: a token (three dot-separated parts) or an API key."""
        return self.token(credential) if credential.count(".") == 2 else self.api_key(credential)


def require(principal: Principal, scope: str = WRITE_SCOPE) -> Principal:
    if scope not in principal.scopes:
        raise Refused(403, "insufficient_scope", f"{principal.kind} {principal.name!r} lacks the {scope} scope")
    return principal
