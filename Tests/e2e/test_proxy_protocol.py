"""PROXY protocol v2 towards the upstream (`proxy_protocol: v2` on a listener): before any byte of
the client's, the upstream reads a v2 header with the client's and the listener's addresses, the
TLS version and cipher (PP2_TYPE_SSL) and the client's SPIFFE ID (TLV 0xE0). The upstream here is a
strict parser written from HAProxy's specification, independent of Ward's encoder (proxyv2.py)."""
import os
import socket
import ssl
import struct
import subprocess

import harness
from clients import context
from proxyv2 import ProxyUpstream, parse_tlvs, start_haproxy

WEB = "spiffe://example.org/ns/prod/sa/web"
RULES = f"default: deny\nrules:\n  - name: web\n    action: allow\n    from: [{WEB}]\n    to: [svc]\n"


def test_upstream_reads_a_proxy_v2_header_with_the_callers_spiffe_id(certs, tmp_path):
    upstream = ProxyUpstream()
    listen = harness.free_port()
    config = harness.config(certs["dir"], [("svc", listen, upstream.port)]).replace(
        f"    upstream: 127.0.0.1:{upstream.port}",
        f"    upstream: 127.0.0.1:{upstream.port}\n    proxy_protocol: v2")
    ward = harness.Ward(str(tmp_path), config, RULES).start()
    try:
        with socket.create_connection(("127.0.0.1", listen), source_address=("127.0.0.7", 0), timeout=10) as raw:
            with context(certs, "web").wrap_socket(raw) as tls:
                tls.sendall(b"hello\n")
                answer = b""
                while not answer.endswith(b"\n") and (chunk := tls.recv(64)):
                    answer += chunk
                version, cipher, local_port = tls.version(), tls.cipher()[0], tls.getsockname()[1]
        assert answer == b"echo: hello\n", (answer, upstream.errors)
        assert not upstream.errors, upstream.errors
        (source, destination, tlvs), = upstream.headers
        assert source == ("127.0.0.7", local_port)
        assert destination == ("127.0.0.1", listen)
        kinds = dict(tlvs)
        assert kinds[0xE0].decode() == WEB
        ssl_tlv = kinds[0x20]
        assert ssl_tlv[0] == 0x03, "client flags: SSL and CERT_CONN"
        assert struct.unpack("!I", ssl_tlv[1:5])[0] == 0, "verify: 0 (the certificate was verified)"
        sub = dict(parse_tlvs(ssl_tlv[5:]))
        assert sub[0x21].decode() == version
        assert sub[0x23].decode() == cipher
    finally:
        ward.stop()
        upstream.close()


def test_proxy_protocol_other_than_v2_is_a_config_error(certs, tmp_path):
    listen = harness.free_port()
    config = harness.config(certs["dir"], [("svc", listen, 9)]).replace(
        "    upstream: 127.0.0.1:9", "    upstream: 127.0.0.1:9\n    proxy_protocol: v1")
    ward = harness.Ward(str(tmp_path), config, RULES)
    out = subprocess.run([harness.WARD, "check", "--config", ward.config_path], capture_output=True, text=True)
    assert out.returncode == 1
    line = config.splitlines().index("    proxy_protocol: v1") + 1
    assert f"{ward.config_path}:{line}: proxy_protocol 'v1' must be v2" in out.stdout.splitlines(), out.stdout


def test_haproxy_accept_proxy_takes_wards_header(certs, tmp_path):
    # HAProxy's own parser (`accept-proxy`) in front of the service: with the header the echo comes
    # back; without it HAProxy refuses the connection, so the first case proves it accepted Ward's.
    echo = harness.Upstream("echo-line")
    haproxy_port = harness.free_port()
    haproxy = start_haproxy(str(tmp_path), haproxy_port, echo.port)
    try:
        for proxy, expected in (("v2", b"echo: via haproxy\n"), (None, b"")):
            folder = os.path.join(str(tmp_path), f"ward-{proxy}")
            os.makedirs(folder)
            listen = harness.free_port()
            config = harness.config(certs["dir"], [("svc", listen, haproxy_port)])
            if proxy:
                config = config.replace(f"    upstream: 127.0.0.1:{haproxy_port}",
                                        f"    upstream: 127.0.0.1:{haproxy_port}\n    proxy_protocol: {proxy}")
            ward = harness.Ward(folder, config, RULES).start()
            try:
                with socket.create_connection(("127.0.0.1", listen), timeout=10) as raw:
                    with context(certs, "web").wrap_socket(raw) as tls:
                        tls.sendall(b"via haproxy\n")
                        answer = b""
                        try:
                            while not answer.endswith(b"\n") and (chunk := tls.recv(64)):
                                answer += chunk
                        except (ssl.SSLError, OSError):
                            pass
                assert answer == expected, (proxy, answer)
            finally:
                ward.stop()
    finally:
        haproxy.terminate()
        haproxy.wait()
        echo.close()
