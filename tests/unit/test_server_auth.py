"""The token: one constant-time check for REST and the live WebSocket."""

from __future__ import annotations

import base64
import hmac

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from qspan.server.app import create_app
from qspan.errors import QspanError
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


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_the_page_hands_the_token_over_as_a_websocket_subprotocol(client):
    """Browsers cannot set a WebSocket's headers, and a token in its URL would sit in logs and
    history: the page offers it base64url-encoded as a subprotocol (frontend/app.js wsProtocols)."""
    url = "ws://127.0.0.1:8321/api/sessions/nope/live"
    with pytest.raises(WebSocketDisconnect) as err:
        with client.websocket_connect(url, subprotocols=["qspan.v1", "qspan.token." + _b64(TOKEN)]):
            pass
    assert err.value.reason == "no session nope"  # past the token
    for wrong in ("qspan.token." + _b64("s3crex"), "qspan.token.%%%", "qspan.token."):
        with pytest.raises(WebSocketDisconnect) as err:
            with client.websocket_connect(url, subprotocols=["qspan.v1", wrong]):
                pass
        assert err.value.reason == "token required", wrong


def _origin_check(settings: Settings, origin: str | None, host: str) -> str:
    c = TestClient(create_app(settings), raise_server_exceptions=False)
    headers = {"host": host} | ({"origin": origin} if origin else {})
    with pytest.raises(WebSocketDisconnect) as err:
        with c.websocket_connect(f"ws://{host}/api/sessions/nope/live?token={TOKEN}", headers=headers):
            pass
    return err.value.reason


def test_origins_follow_the_address_the_user_opened(tmp_path):
    # qspan serve --host 0.0.0.0 --token T, reached through a port published on 127.0.0.1:9999 (compose)
    published = Settings(host="0.0.0.0", port=8321, token=TOKEN, record_dir=tmp_path)
    assert _origin_check(published, "http://127.0.0.1:9999", "127.0.0.1:9999") == "no session nope"
    assert _origin_check(published, "http://evil.example", "127.0.0.1:9999") == "origin not allowed"
    assert _origin_check(published, "https://127.0.0.1:9999", "127.0.0.1:9999") == "origin not allowed"  # not TLS here
    assert _origin_check(published, None, "127.0.0.1:9999") == "no session nope"  # not a browser: the token decides
    extra = Settings(host="0.0.0.0", token=TOKEN, record_dir=tmp_path, extra_origins=("https://ops.example",))
    assert _origin_check(extra, "https://ops.example", "10.0.0.5:8321") == "no session nope"
    # loopback without a token: loopback names only, whatever Host a page sends
    local = Settings(record_dir=tmp_path)
    assert _origin_check(local, "http://localhost:8321", "localhost:8321") == "no session nope"
    assert _origin_check(local, "http://evil.example:8321", "127.0.0.1:8321") == "origin not allowed"
    # DNS rebinding: evil.example made to resolve to 127.0.0.1, its page same-origin with its own Host
    assert _origin_check(local, "http://evil.example:8321", "evil.example:8321") == "origin not allowed"


def test_a_loopback_server_without_a_token_answers_to_loopback_names_only(tmp_path):
    c = TestClient(create_app(Settings(record_dir=tmp_path)), raise_server_exceptions=False)
    assert c.get("http://127.0.0.1:8321/api/sessions").status_code == 200
    assert c.get("http://localhost:8321/api/sessions").status_code == 200
    assert c.get("http://[::1]:8321/api/sessions").status_code == 200
    r = c.get("http://evil.example:8321/api/sessions")
    assert r.status_code == 421 and "loopback names only" in r.json()["detail"]
    assert c.get("http://evil.example:8321/").status_code == 421  # not even the page


@pytest.mark.parametrize("kw,message", [
    ({"tls_cert": "cert.pem"}, "--tls-cert and --tls-key go together"),
    ({"tls_cert": "cert.pem", "tls_key": "missing.pem"}, "--tls-key .*missing.pem: no such file"),
    ({"extra_origins": ("https://ops.example/path",)}, "an origin is scheme://host"),
    ({"extra_origins": ("ops.example",)}, "an origin is scheme://host"),
])
def test_serve_options_are_checked(tmp_path, kw, message):
    (tmp_path / "cert.pem").write_text("x")
    kw = {k: (tmp_path / v if k.startswith("tls") else v) for k, v in kw.items()}
    with pytest.raises(QspanError, match=message):
        Settings(record_dir=tmp_path, **kw).check()


def test_plain_http_beyond_loopback_is_what_serve_warns_about(tmp_path):
    (tmp_path / "c.pem").write_text("x")
    assert Settings(host="0.0.0.0", token=TOKEN).plain_http_beyond_loopback
    assert not Settings(host="127.0.0.1").plain_http_beyond_loopback
    tls = Settings(host="0.0.0.0", token=TOKEN, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.pem")
    assert not tls.plain_http_beyond_loopback and tls.scheme == "https"
    assert "https://0.0.0.0:8321" in tls.allowed_origins


def test_the_token_is_asked_for_on_the_path_the_router_takes_whatever_the_host_says(client):
    """request.url is rebuilt from the Host header a client chooses: the check reads scope["path"]."""
    for host in ("x/y?", "127.0.0.1:8321/static?", "[::1"):
        r = client.get("http://127.0.0.1:8321/api/sessions", headers={"host": host})
        assert r.status_code == 401, (host, r.status_code)


def test_a_tunnel_on_another_local_port_may_open_the_live_view(tmp_path):
    """ssh -L 9000:127.0.0.1:8321: the page comes from http://localhost:9000 to a loopback server
    without a token; its own loopback origin is accepted, a site's rebound name is not."""
    local = Settings(record_dir=tmp_path)
    assert _origin_check(local, "http://localhost:9000", "localhost:9000") == "no session nope"
    assert _origin_check(local, "http://127.0.0.1:9000", "127.0.0.1:9000") == "no session nope"
    assert _origin_check(local, "http://evil.example:9000", "evil.example:9000") == "origin not allowed"
