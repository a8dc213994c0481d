"""End to end: the built ward, real TLS clients, real upstreams on loopback. One scenario each."""
import hashlib
import os
import shutil
import socket
import ssl
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from clients import context, exchange, half_close_exchange


def test_allowed_python_client_reaches_upstream(env):
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs, "web"), b"hello\n")
    assert out.data == b"echo: hello\n", out.error
    peer = f"127.0.0.1:{out.local_port}"
    allow = env.ward.wait_for(mark, event="allow", peer_addr=peer)
    assert allow["peer_id"] == "spiffe://example.org/ns/prod/sa/web"
    assert allow["trust_domain"] == "example.org"
    assert allow["rule"] == "web-everywhere"
    assert allow["listener"] == "echo"
    assert allow["tls_version"] == "TLSv1.3"
    der = env.certs["web"].cert.public_bytes(Encoding.DER)
    assert allow["cert_sha256"] == hashlib.sha256(der).hexdigest()
    serial = format(env.certs["web"].cert.serial_number, "X")
    assert allow["cert_serial"] == serial.zfill(len(serial) + len(serial) % 2)  # whole bytes, as openssl prints
    close = env.ward.wait_for(mark, event="close", conn=allow["conn"])
    assert close["close_cause"] == "upstream"
    assert close["bytes_in"] == 6 and close["bytes_out"] == 12
    assert close["duration_ms"] >= 0


def test_openssl_s_client_is_allowed(env):
    mark = env.ward.mark()
    c = env.certs
    run = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{env.ports['echo']}", "-quiet",
         "-cert", c["web"].cert_path, "-key", c["web"].key_path, "-CAfile", c["example_ca"]],
        input=b"from s_client\n", capture_output=True, timeout=20)
    assert b"echo: from s_client" in run.stdout, run.stderr
    assert env.ward.wait_for(mark, event="allow", listener="echo")["rule"] == "web-everywhere"


def test_curl_gets_http_response(env):
    mark = env.ward.mark()
    c = env.certs
    run = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cert", c["web"].cert_path, "--key", c["web"].key_path,
         "--cacert", c["example_ca"], f"https://127.0.0.1:{env.ports['http']}/"],
        capture_output=True, timeout=30)
    assert run.stdout == b"hello from upstream\n", run.stderr
    allow = env.ward.wait_for(mark, event="allow", listener="http")
    assert allow["peer_id"] == "spiffe://example.org/ns/prod/sa/web"
    env.ward.wait_for(mark, event="close", conn=allow["conn"])


def test_rsa_svid_is_allowed(env):
    out = exchange(env.ports["echo"], context(env.certs, "web_rsa"), b"rsa\n")
    assert out.data == b"echo: rsa\n", out.error


def test_tls12_client_is_allowed(env):
    out = exchange(env.ports["echo"], context(env.certs, "web", maximum_version=ssl.TLSVersion.TLSv1_2), b"v12\n")
    assert out.data == b"echo: v12\n", out.error


def test_chain_through_intermediate(env):
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs, "via_intermediate"), b"chain\n")
    assert out.data == b"echo: chain\n", out.error
    allow = env.ward.wait_for(mark, event="allow", peer_addr=f"127.0.0.1:{out.local_port}")
    assert allow["peer_id"] == "spiffe://example.org/ns/prod/sa/worker"


def test_unlisted_id_is_denied_without_upstream_connection(env):
    before = env.echo.accepted
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs, "batch"), b"let me in\n")
    assert out.data == b""
    deny = env.ward.wait_for(mark, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")
    assert deny["reason"] == "rule_denied"
    assert deny["rule"] == "default"
    assert deny["peer_id"] == "spiffe://example.org/ns/dev/sa/batch"
    assert env.echo.accepted == before
    assert not any(r.get("event") == "close" and r["conn"] == deny["conn"] for r in env.ward.lines(mark))


def test_deny_rule_wins_over_allow(env):
    before = env.echo.accepted
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs, "billing"), b"x\n")
    assert out.data == b""
    deny = env.ward.wait_for(mark, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")
    assert deny["rule"] == "no-billing-on-http" and deny["trust_domain"] == "partner.org"
    assert env.echo.accepted == before


def test_no_client_certificate(env):
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs))
    assert out.data == b""
    record = env.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")
    assert record["reason"] == "no_client_cert"
    assert "peer_id" not in record


REFUSALS = [
    ("unknown_domain", "unknown_trust_domain", "spiffe://other.org/ns/prod/sa/web"),
    ("partner_by_example", "untrusted_chain", "spiffe://partner.org/ns/prod/sa/billing"),
    ("example_by_partner", "untrusted_chain", "spiffe://example.org/ns/prod/sa/web"),
    ("two_uris", "multiple_uri_sans", None),
    ("no_uri", "no_uri_san", None),
    ("not_spiffe", "not_spiffe_id", None),
    ("root_id", "not_spiffe_id", None),
    ("ca_leaf", "leaf_is_ca", "spiffe://example.org/ns/prod/sa/web"),
    ("bad_ku", "bad_key_usage", "spiffe://example.org/ns/prod/sa/web"),
    ("server_only_eku", "bad_eku", "spiffe://example.org/ns/prod/sa/web"),
    ("expired", "expired", "spiffe://example.org/ns/prod/sa/web"),
    ("not_yet_valid", "not_yet_valid", "spiffe://example.org/ns/prod/sa/web"),
    ("long_lived", "svid_lifetime_too_long", "spiffe://example.org/ns/prod/sa/web"),
    ("missing_intermediate", "untrusted_chain", "spiffe://example.org/ns/prod/sa/worker"),
]


@pytest.mark.parametrize("cert, reason, peer_id", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_invalid_svid_is_refused(env, cert, reason, peer_id):
    before = env.echo.accepted
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], context(env.certs, cert), b"x\n")
    # In TLS 1.3 the client learns of the refusal only when it reads: nothing may come back.
    assert out.data == b""
    record = env.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")
    assert record["reason"] == reason
    assert record.get("peer_id") == peer_id
    if peer_id:
        assert record["trust_domain"] == peer_id.split("/")[2]
    assert record["cert_sha256"]
    assert env.echo.accepted == before


def test_half_close_delivers_request_and_whole_response(env):
    payload = os.urandom(300_000)
    mark = env.ward.mark()
    response = half_close_exchange(env.ports["halfclose"], context(env.certs, "web"), payload)
    expected = f"got {len(payload)} bytes sha256={hashlib.sha256(payload).hexdigest()}\n".encode()
    assert response == expected
    close = env.ward.wait_for(mark, event="close", listener="halfclose")
    assert close["close_cause"] == "client"
    assert close["bytes_in"] == len(payload) and close["bytes_out"] == len(expected)


def test_upstream_down_closes_client_and_logs_reason(env):
    mark = env.ward.mark()
    out = exchange(env.ports["down"], context(env.certs, "web"), b"anyone?\n")
    assert out.data == b""
    allow = env.ward.wait_for(mark, event="allow", peer_addr=f"127.0.0.1:{out.local_port}")
    close = env.ward.wait_for(mark, event="close", conn=allow["conn"])
    assert close["reason"] == "upstream_unreachable"
    assert close["close_cause"] == "error"


def raw_connection(env):
    """A plain TCP connection to the echo listener, and its local port for matching log lines."""
    s = socket.create_connection(("127.0.0.1", env.ports["echo"]), timeout=10)
    return s, s.getsockname()[1]


def test_plain_text_client_gets_tls_error(env):
    mark = env.ward.mark()
    s, port = raw_connection(env)
    with s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = s.recv(1024)
        except ConnectionResetError:
            reply = b""
        assert b"echo" not in reply
    record = env.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{port}")
    assert record["reason"] == "tls_error"
    assert record["detail"] == "http request"


def test_stalled_handshake_times_out(env):
    mark = env.ward.mark()
    s, port = raw_connection(env)
    with s:
        # Say nothing: the 1s handshake_timeout in this config must close it.
        assert s.recv(1024) == b""
    record = env.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{port}")
    assert record["reason"] == "handshake_timeout"


def test_tls11_client_is_refused(env):
    ctx = context(env.certs, "web")
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):  # pragma: no cover - depends on the local OpenSSL policy
        pytest.skip("this Python cannot speak TLS 1.1")
    mark = env.ward.mark()
    out = exchange(env.ports["echo"], ctx)
    assert out.data == b""
    record = env.ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")
    assert record["reason"] == "protocol_version"


def echo_again(listen, ctx, session=None):
    """One echo, offering `session`: (answer, the new session, whether it resumed, local port)."""
    with socket.create_connection(("127.0.0.1", listen), timeout=10) as raw:
        with ctx.wrap_socket(raw, session=session) as tls:
            tls.sendall(b"again\n")
            data = tls.recv(64)
            return data, tls.session, tls.session_reused, tls.getsockname()[1]


def test_tls13_resumption_is_verified_and_decided_again(certs, tmp_path):
    import harness as h
    upstream = h.Upstream("echo-line")
    listen = h.free_port()
    rules = "rules:\n  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"
    config = h.config(certs["dir"], [("svc", listen, upstream.port)], "resumption: on\n").replace(
        "workers: 2", "workers: 1")
    ward = h.Ward(str(tmp_path), config, rules).start()
    try:
        ctx = context(certs, "web")

        def connect(session=None):
            return echo_again(listen, ctx, session)

        mark = ward.mark()
        data, session, reused, _ = connect()
        assert data == b"echo: again\n" and not reused
        data, _, reused, port = connect(session)
        assert data == b"echo: again\n" and reused
        allow = ward.wait_for(mark, event="allow", peer_addr=f"127.0.0.1:{port}")
        assert allow["peer_id"] == "spiffe://example.org/ns/prod/sa/web" and allow["rule"] == "web"
        with open(os.path.join(ward.folder, "rules.yaml"), "w") as f:
            f.write("default: deny\nrules: []\n")
        assert subprocess.run([h.WARD, "reload", "--config", ward.config_path], capture_output=True).returncode == 0
        try:
            data, _, _, port = connect(session)
        except (ssl.SSLError, OSError):
            data = b""
        assert data == b""
    finally:
        ward.stop()
        upstream.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_resumed_session_is_verified_again_after_its_bundle_changed(certs, tmp_path, workers):
    # A resumed session skips chain verification only while its trust domain's bundle and
    # Ward's limits are the ones it was verified under; a new bundle verifies it again.
    import harness as h
    upstream = h.Upstream("echo-line")
    listen = h.free_port()
    rules = "rules:\n  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"
    pki = os.path.join(str(tmp_path), "pki")
    shutil.copytree(certs["dir"], pki)
    config = h.config(pki, [("svc", listen, upstream.port)], "resumption: on\n").replace(
        "workers: 2", f"workers: {workers}")
    ward = h.Ward(str(tmp_path), config, rules).start()
    try:
        # web's SVID comes from a second CA of example.org; the bundle holds both CAs.
        import pki as p
        second = p.ca("example.org second root")
        web = p.write(p.leaf(second, ["spiffe://example.org/ns/prod/sa/web"]), pki, "web-second")
        bundle = os.path.join(pki, "example.org.bundle.pem")
        original = open(bundle, "rb").read()
        with open(bundle, "ab") as out:
            out.write(second.cert.public_bytes(Encoding.PEM))
        assert subprocess.run([h.WARD, "reload", "--config", ward.config_path], capture_output=True).returncode == 0
        ctx = context(certs)
        ctx.load_cert_chain(web.cert_path, web.key_path)

        def connect(session=None):
            return echo_again(listen, ctx, session)

        data, session, reused, _ = connect()
        assert data == b"echo: again\n" and not reused
        resumed = 0
        for _ in range(6):
            data, session, reused, _ = connect(session)
            assert data == b"echo: again\n"
            resumed += reused
        assert resumed >= 5
        # The second CA leaves the bundle: web's chain no longer verifies.
        with open(bundle + ".new", "wb") as out:
            out.write(original)
        os.replace(bundle + ".new", bundle)
        mark = ward.mark()
        assert subprocess.run([h.WARD, "reload", "--config", ward.config_path], capture_output=True).returncode == 0
        for _ in range(4):
            try:
                data, _, _, port = connect(session)
            except (ssl.SSLError, OSError):
                data = b""
            assert data == b""
        record = ward.wait_for(mark, event="handshake_error")
        assert record["reason"] == "untrusted_chain", record
    finally:
        ward.stop()
        upstream.close()


def test_every_connection_event_says_direction_inbound(certs, tmp_path):
    import harness as h
    upstream = h.Upstream("echo-line")
    listen = h.free_port()
    rules = "rules:\n  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"
    ward = h.Ward(str(tmp_path), h.config(certs["dir"], [("svc", listen, upstream.port)]), rules).start()
    try:
        mark = ward.mark()
        assert exchange(listen, context(certs, "web"), b"in\n").data == b"echo: in\n"
        exchange(listen, context(certs, "batch"), b"in\n")  # refused by the rules
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
            raw.recv(64)
        ward.wait_for(mark, event="handshake_error")
        ward.wait_for(mark, event="deny")
        ward.wait_for(mark, event="close")
        events = [r for r in ward.lines(mark) if r.get("conn") is not None]
        assert {r["event"] for r in events} >= {"allow", "deny", "close", "handshake_error"}
        assert all(r.get("direction") == "inbound" for r in events), events
    finally:
        ward.stop()
        upstream.close()
