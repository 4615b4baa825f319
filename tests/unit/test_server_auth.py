"""The token: one constant-time check for REST and the live WebSocket."""

from __future__ import annotations

import hmac

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from qspan.server.app import create_app
from qspan.server.settings import Settings

TOKEN = "s3cret"


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(Settings(token=TOKEN, record_dir=tmp_path)), raise_server_exceptions=False)


def close_reason(client: TestClient, path: str) -> str:
    """Why the server closed the WebSocket before accepting it."""
    with pytest.raises(WebSocketDisconnect) as err:
        with client.websocket_connect(path):
            pass
    assert err.value.code == 1008
    return err.value.reason


def test_websocket_with_a_wrong_token_is_refused(client):
    assert close_reason(client, "/api/sessions/nope/live") == "token required"
    assert close_reason(client, "/api/sessions/nope/live?token=s3crex") == "token required"


def test_websocket_with_the_token_gets_to_the_session(client):
    assert close_reason(client, f"/api/sessions/nope/live?token={TOKEN}") == "no session nope"


def test_websocket_token_is_compared_in_constant_time(client, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert close_reason(client, "/api/sessions/nope/live?token=guess") == "token required"
    assert len(seen) == 1 and {bytes(x) if isinstance(x, bytes) else x.encode() for x in seen[0]} == {b"guess", TOKEN.encode()}


def test_rest_token(client):
    assert client.get("/api/sessions").status_code == 401
    assert client.get("/api/sessions", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get(f"/api/sessions?token={TOKEN}").status_code == 200
    assert client.get("/").status_code == 200, "the page itself needs no token"


def test_a_non_ascii_token_is_refused_not_a_crash(client):
    # hmac.compare_digest raises TypeError on str with non-ASCII characters
    r = client.get("/api/sessions?token=%C3%A9t%C3%A9")
    assert (r.status_code, r.json()) == (401, {"detail": "token required"})
    assert close_reason(client, "/api/sessions/nope/live?token=%C3%A9t%C3%A9") == "token required"
