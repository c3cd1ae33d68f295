"""A tiny OpenID Connect issuer on loopback, shaped like one Keycloak realm, for the authentication tests.

It serves what MONAI Label 0.8.5 fetches: the realm document (`GET {realm}`, whose `public_key` verifies tokens),
`{realm}/.well-known/openid-configuration` (its `token_endpoint` is where `POST /auth/token` sends the password
grant), the JWKS, and the token endpoint itself; tokens are RS256 JWTs signed with a key generated at start.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    def __init__(self, realm: str = "monailabel", client_id: str = "monailabel-app") -> None:
        self.key = new_key()
        self.kid = "test-key-1"
        self.client_id = client_id
        self.users: dict[str, tuple[str, list[str]]] = {}  # username -> (password, realm roles)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self.available = True  # False: every request is answered 503 (an identity provider that is down)
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                issuer.requests.append(("GET", self.path))
                if not issuer.available:
                    return self._send(503, {"error": "unavailable"})
                doc = issuer.documents().get(self.path.rstrip("/"))
                self._send(200, doc) if doc is not None else self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                issuer.requests.append(("POST", self.path))
                if self.path != issuer.path + "/protocol/openid-connect/token":
                    return self._send(404, {"error": "not found"})
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                field = {k: v[0] for k, v in form.items()}
                user = issuer.users.get(field.get("username", ""))
                if (field.get("grant_type") != "password" or field.get("client_id") != issuer.client_id or user is None
                        or user[0] != field.get("password")):
                    return self._send(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                self._send(200, {"access_token": issuer.token(field["username"], user[1]), "token_type": "Bearer",
                                 "expires_in": 300, "scope": "openid"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.path = f"/realms/{realm}"
        self.realm_uri = self.base + self.path
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Issuer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_user(self, name: str, password: str, roles: list[str]) -> None:
        self.users[name] = (password, roles)

    def documents(self) -> dict[str, dict]:
        public = self.key.public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        oidc = self.realm_uri + "/protocol/openid-connect"
        return {
            self.path: {"realm": self.path.rsplit("/", 1)[-1], "public_key": base64.b64encode(der).decode(),
                        "token-service": oidc, "account-service": self.realm_uri + "/account", "tokens-not-before": 0},
            self.path + "/.well-known/openid-configuration": {
                "issuer": self.realm_uri, "authorization_endpoint": oidc + "/auth", "token_endpoint": oidc + "/token",
                "jwks_uri": oidc + "/certs", "grant_types_supported": ["password", "authorization_code"],
                "id_token_signing_alg_values_supported": ["RS256"]},
            self.path + "/protocol/openid-connect/certs": {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]},
        }

    def token(self, username: str, roles: list[str], expires_in: int = 300, key=None, algorithm: str = "RS256",
              drop: tuple[str, ...] = ()) -> str:
        """A Keycloak-like access token: roles under realm_access.roles (MONAI Label's default claim path)."""
        now = int(time.time())
        claims = {"iss": self.realm_uri, "sub": f"id-{username}", "typ": "Bearer", "azp": self.client_id,
                  "preferred_username": username, "email": f"{username}@example.org", "name": username.title(),
                  "realm_access": {"roles": roles}, "iat": now, "exp": now + expires_in}
        for k in drop:
            claims.pop(k, None)
        signer = None if algorithm == "none" else key or self.key
        return jwt.encode(claims, signer, algorithm=algorithm, headers={"kid": self.kid})
