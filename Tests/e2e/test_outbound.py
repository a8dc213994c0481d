"""Outbound mode end to end: a local app speaks plaintext to an `outbound:` entry, Ward calls the
target over mTLS with its own SVID, checks the server's SVID and `server_id`, and only then lets a
byte through. Targets are another Ward (whose upstream reads Ward's PROXY v2 header), HAProxy,
Python `ssl` servers with good and bad SVIDs, and addresses where nothing speaks TLS or listens."""
import contextlib
import datetime
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

import harness
from harness import reload_ward as reload, run_ward, write_atomically
import pki
from clients import context, exchange
from proxyv2 import SPIFFE_TLV, ProxyUpstream, start_haproxy

WEB = "spiffe://example.org/ns/prod/sa/web"
ORDERS = "spiffe://example.org/ns/prod/sa/orders"
BATCH = "spiffe://example.org/ns/dev/sa/batch"
BILLING = "spiffe://example.org/ns/prod/sa/billing"
OTHER_ORDERS = "spiffe://other.org/ns/prod/sa/orders"

# Ward B: the serving side, identity ORDERS (the session's `ward` SVID); A's identity is WEB.
B_RULES = f"""default: deny
rules:
  - name: web-to-orders
    action: allow
    from: [{WEB}]
    to: ["*"]
"""


# ---------------------------------------------------------------- helpers


@dataclass
class AppOutcome:
    local_port: int
    data: bytes
    error: str | None

    @property
    def addr(self):
        return f"127.0.0.1:{self.local_port}"


def app_exchange(port, payload=b"ping\n", timeout=10, half_close=False):
    """The local app: plaintext to 127.0.0.1:`port`, sends `payload` at once (before Ward can have
    checked anything), then reads to EOF. A reset is reported as error "reset", a timeout fails."""
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))  # the port is known before connecting: it is the log's app_addr
    raw.settimeout(timeout)
    local_port = raw.getsockname()[1]
    data, error = b"", None
    try:
        raw.connect(("127.0.0.1", port))
        if payload:
            raw.sendall(payload)
        if half_close:
            raw.shutdown(socket.SHUT_WR)
        while chunk := raw.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        error = "reset"
    except socket.timeout:
        raise AssertionError(f"the app got no EOF within {timeout}s (had {data!r})")
    finally:
        raw.close()
    return AppOutcome(local_port, data, error)


def app_stream(port, timeout=10):
    """A long-lived app connection that has echoed once through the whole path."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=("127.0.0.1", 0))
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    return sock


def app_addr(sock):
    return f"127.0.0.1:{sock.getsockname()[1]}"


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def peer_uri(cert):
    uris = [value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "URI"]
    return uris[0] if len(uris) == 1 else uris or None


class TLSServer:
    """A non-Ward SPIFFE mTLS server: Python's ssl, client certificate required (example.org CA).
    Records, per connection, whether the handshake finished, the client's URI SAN, the SNI it was
    sent and every application byte it read.

    mode "echo-line": reply `echo: LINE` to the first line, then close (with close_notify).
    mode "hold": echo every chunk until EOF.
    `banner`: sent first, before reading (a server-speaks-first protocol such as SMTP).
    `reply`: in mode "echo-line", sent instead of the echo (to tell servers apart).
    """

    def __init__(self, cert, ca, mode="echo-line", banner=b"", host="127.0.0.1", port=0, reply=None):
        self.mode, self.banner, self.reply = mode, banner, reply
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert_path, cert.key_path)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(ca)
        self.sni = {}
        self.ctx.sni_callback = lambda sock, name, _ctx: self.sni.__setitem__(id(sock), name)
        self.records = []
        self.changed = threading.Condition()
        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        record = {"handshake": None, "peer_id": None, "sni": None, "data": b"", "error": None}
        conn.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as error:
            record["handshake"] = f"failed: {error}"
            conn.close()
            return self.done(record)
        record["handshake"] = "ok"
        record["sni"] = self.sni.pop(id(tls), None)
        record["peer_id"] = peer_uri(tls.getpeercert())
        try:
            if self.banner:
                tls.sendall(self.banner)
            if self.mode == "echo-line":
                while b"\n" not in record["data"]:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    record["data"] += chunk
                if record["data"]:
                    tls.sendall(self.reply if self.reply is not None else b"echo: " + record["data"])
                tls.settimeout(2)
                tls.unwrap()  # close_notify, then the peer's
            else:
                while chunk := tls.recv(65536):
                    record["data"] += chunk
                    tls.sendall(chunk)
        except (ssl.SSLError, OSError, ValueError) as error:
            record["error"] = repr(error)
        finally:
            tls.close()
        self.done(record)

    def done(self, record):
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_records(self, count):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.records) >= count, timeout=harness.DEADLINE), \
                f"{len(self.records)} of {count} connections ended at the server"
            return list(self.records)

    def close(self):
        self.sock.close()


def silent_target():
    """Accepts TCP (the kernel does, from the backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def entry(name, target, server_id, **more):
    """One outbound entry on a fresh loopback port."""
    return {"name": name, "listen": harness.free_port(), "target": target, "server_id": server_id, **more}


def ward_a(folder, pki_dir, entries, extra="", listeners=(), rules_text=None, workers=2):
    """Ward A, the calling side (identity WEB). Outbound only unless `listeners` are given."""
    os.makedirs(folder, exist_ok=True)
    text = harness.config(pki_dir, list(listeners), extra, identity="web", outbound=entries,
                          rules=rules_text is not None).replace("workers: 2", f"workers: {workers}")
    return harness.Ward(folder, text, rules_text)


def ward_b(folder, pki_dir, upstream_port, extra="", proxy=False, identity="ward"):
    """Ward B, the serving side (identity ORDERS): one listener `orders` in front of `upstream_port`."""
    os.makedirs(folder, exist_ok=True)
    listen = harness.free_port()
    listener = ("orders", listen, upstream_port, {"proxy_protocol": "v2"} if proxy else {})
    ward = harness.Ward(folder, harness.config(pki_dir, [listener], extra, identity=identity), B_RULES)
    return ward, listen


def wait_count(ward, since, count, **fields):
    """At least `count` log records after `since` with `fields`; returns them all."""
    deadline = time.monotonic() + harness.DEADLINE
    while True:
        found = [r for r in ward.lines(since) if all(r.get(k) == v for k, v in fields.items())]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} of {count} lines with {fields}; saw {ward.lines(since)}"
            return found
        time.sleep(0.02)


def admin_get(ward, path):
    """One HTTP/1.0 GET over the admin Unix socket: (status, body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(os.path.join(ward.folder, "admin.sock"))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: ward\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def scrape(ward):
    """/metrics as {(name, frozenset(labels)): value}, whatever order the labels come in."""
    status, body = admin_get(ward, "/metrics")
    assert status == 200, body
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            samples[(name, frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))] = float(value)
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def cert_sha256(issued):
    return hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).hexdigest()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server_certs(certs, tmp_path_factory):
    """Server SVIDs for the targets: good ones and each kind a client must refuse."""
    folder = str(tmp_path_factory.mktemp("outbound-pki"))
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    other = pki.ca("other.org root")
    specs = {
        "orders_plain": (example, [ORDERS], {}),
        "orders_expired": (example, [ORDERS], dict(not_before=pki.NOW - datetime.timedelta(hours=3))),
        "orders_ca_leaf": (example, [ORDERS], dict(is_ca=True, cert_sign=True)),
        "orders_client_eku": (example, [ORDERS], dict(eku=[ExtendedKeyUsageOID.CLIENT_AUTH])),
        "orders_two_uris": (example, [ORDERS, "spiffe://example.org/ns/prod/sa/admin"], {}),
        "orders_other_domain": (other, [OTHER_ORDERS], {}),
    }
    c = {"example": example}
    for name, (issuer, uris, options) in specs.items():
        c[name] = pki.write(pki.leaf(issuer, uris, **options), folder, name)
    c["impostor"] = certs["batch"]  # a valid SVID of example.org, of another workload
    return c


# (entry name, server certificate, reason, peer_id in the handshake_error line)
REFUSALS = [
    ("impostor", "impostor", "unexpected_server_id", BATCH),
    ("foreign", "orders_other_domain", "unknown_trust_domain", OTHER_ORDERS),
    ("expired", "orders_expired", "expired", ORDERS),
    ("ca-leaf", "orders_ca_leaf", "leaf_is_ca", ORDERS),
    ("client-eku", "orders_client_eku", "bad_eku", ORDERS),
    ("two-uris", "orders_two_uris", "multiple_uri_sans", None),
]


class Pair:
    """Ward B (listeners `orders` with PROXY v2, and `bulk`), the targets, and Ward A with one
    outbound entry per target plus an inbound listener of its own."""


@pytest.fixture(scope="module")
def pair(certs, server_certs, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        p = Pair()
        p.certs = certs
        p.upstream = ProxyUpstream()
        stack.callback(p.upstream.close)
        p.bulk_upstream = harness.Upstream("until-eof")
        stack.callback(p.bulk_upstream.close)
        p.b_listen, p.b_bulk = harness.free_port(), harness.free_port()
        b_config = harness.config(certs["dir"], [("orders", p.b_listen, p.upstream.port, {"proxy_protocol": "v2"}),
                                                 ("bulk", p.b_bulk, p.bulk_upstream.port)])
        p.b = harness.Ward(str(tmp_path_factory.mktemp("ward-b")), b_config, B_RULES)
        stack.callback(p.b.stop)
        p.b.start()

        p.servers = {}
        for name, cert, _, _ in REFUSALS:
            p.servers[name] = TLSServer(server_certs[cert], certs["example_ca"])
        p.servers["plain"] = TLSServer(server_certs["orders_plain"], certs["example_ca"])
        p.servers["plain-hold"] = TLSServer(server_certs["orders_plain"], certs["example_ca"], mode="hold")
        p.servers["banner"] = TLSServer(server_certs["orders_plain"], certs["example_ca"],
                                        banner=b"220 orders ready\r\n")
        for server in p.servers.values():
            stack.callback(server.close)
        p.silent = silent_target()
        stack.callback(p.silent.close)
        p.not_tls = harness.Upstream("hold")  # sends Ward's ClientHello straight back
        stack.callback(p.not_tls.close)
        p.down = harness.free_port()

        entries = [
            entry("orders-api", p.b_listen, [ORDERS]),
            entry("bulk", p.b_bulk, [ORDERS]),
            # A host name as target, a pattern as server_id, and SNI.
            entry("plain", f"localhost:{p.servers['plain'].port}", ["spiffe://example.org/ns/*/sa/orders"],
                  server_name="orders.internal"),
            entry("plain-hold", p.servers["plain-hold"].port, [ORDERS]),
            entry("banner", p.servers["banner"].port, [ORDERS]),
            entry("silent", p.silent.getsockname()[1], [ORDERS]),
            entry("not-tls", p.not_tls.port, [ORDERS]),
            entry("down", p.down, [ORDERS]),
        ] + [entry(name, p.servers[name].port, [ORDERS]) for name, _, _, _ in REFUSALS]
        p.entries = {e["name"]: e for e in entries}
        p.ports = {e["name"]: e["listen"] for e in entries}

        p.a_upstream = harness.Upstream("echo-line")
        stack.callback(p.a_upstream.close)
        p.a_listen = harness.free_port()
        a_rules = f"default: deny\nrules:\n  - name: orders-in\n    action: allow\n    from: [{ORDERS}]\n" \
                  "    to: [a-in]\n"
        p.a = ward_a(str(tmp_path_factory.mktemp("ward-a")), certs["dir"], entries, "handshake_timeout: 1s\n",
                     listeners=[("a-in", p.a_listen, p.a_upstream.port)], rules_text=a_rules)
        stack.callback(p.a.stop)
        p.a.start()
        yield p


# ---------------------------------------------------------------- 1. Ward to Ward on loopback


def test_ward_to_ward_carries_the_callers_id_to_the_upstream(pair):
    mark_a, mark_b = pair.a.mark(), pair.b.mark()
    headers = len(pair.upstream.headers)
    out = app_exchange(pair.ports["orders-api"], b"hello\n")
    assert out.data == b"echo: hello\n" and out.error is None, (out, pair.upstream.errors)

    allow = pair.a.wait_for(mark_a, event="allow", app_addr=out.addr)
    assert allow["direction"] == "outbound"
    assert allow["listener"] == "orders-api" and allow["rule"] == "orders-api"
    assert allow["peer_id"] == ORDERS
    assert allow["peer_addr"] == f"127.0.0.1:{pair.b_listen}"
    assert allow["resumed"] is False  # B has no `resumption: on`: it offers no tickets
    close = pair.a.wait_for(mark_a, event="close", conn=allow["conn"])
    assert close["direction"] == "outbound" and close["listener"] == "orders-api" and close["rule"] == "orders-api"
    assert close["app_addr"] == out.addr and close["peer_addr"] == allow["peer_addr"]
    assert close["bytes_in"] == 6 and close["bytes_out"] == 12
    assert close["close_cause"] == "upstream"  # the echo upstream closed first, then B, then A

    inbound = pair.b.wait_for(mark_b, event="allow", listener="orders")
    assert inbound["direction"] == "inbound"
    assert inbound["peer_id"] == WEB and inbound["rule"] == "web-to-orders"
    assert not pair.upstream.errors, pair.upstream.errors
    assert len(pair.upstream.headers) == headers + 1
    source, destination, tlvs = pair.upstream.headers[-1]
    assert f"{source[0]}:{source[1]}" == inbound["peer_addr"]  # A's own address, as B saw it
    assert destination == ("127.0.0.1", pair.b_listen)
    assert dict(tlvs)[SPIFFE_TLV].decode() == WEB
    # Every line either Ward wrote for this says which way it went.
    assert all(r.get("direction") == "outbound" for r in pair.a.lines(mark_a) if "conn" in r)
    assert all(r.get("direction") == "inbound" for r in pair.b.lines(mark_b) if "conn" in r)


def test_no_resumption_when_the_server_offers_no_tickets(pair):
    mark = pair.a.mark()
    for _ in range(2):
        out = app_exchange(pair.ports["orders-api"], b"again\n")
        assert out.data == b"echo: again\n", out
        assert pair.a.wait_for(mark, event="allow", app_addr=out.addr)["resumed"] is False


def test_bulk_transfer_with_half_close_is_byte_exact(pair):
    payload = os.urandom(300_000)
    mark = pair.a.mark()
    out = app_exchange(pair.ports["bulk"], payload, half_close=True)
    expected = f"got {len(payload)} bytes sha256={hashlib.sha256(payload).hexdigest()}\n".encode()
    assert out.data == expected and out.error is None, out
    allow = pair.a.wait_for(mark, event="allow", app_addr=out.addr)
    close = pair.a.wait_for(mark, event="close", conn=allow["conn"])
    assert close["bytes_in"] == len(payload) and close["bytes_out"] == len(expected)
    assert close["close_cause"] == "client"  # the app finished sending first


# ---------------------------------------------------------------- 2. HAProxy behind Ward B


def test_haproxy_accept_proxy_behind_ward_b_fed_through_ward_a(certs, tmp_path):
    # app -> A (outbound) -> B (proxy_protocol: v2) -> HAProxy (accept-proxy) -> a PROXY v2 reader.
    # HAProxy passes on, with its own send-proxy-v2, the addresses it parsed from B's header: the
    # reader seeing A's address proves HAProxy took B's header, fed by a connection A made.
    with contextlib.ExitStack() as stack:
        upstream = ProxyUpstream()
        stack.callback(upstream.close)
        haproxy_port = harness.free_port()
        haproxy = start_haproxy(str(tmp_path), haproxy_port, upstream.port, send_proxy=True)
        stack.callback(haproxy.wait)
        stack.callback(haproxy.terminate)
        b, b_listen = ward_b(str(tmp_path / "b"), certs["dir"], haproxy_port, proxy=True)
        stack.callback(b.stop)
        b.start()
        out_entry = entry("orders-api", b_listen, [ORDERS])
        a = ward_a(str(tmp_path / "a"), certs["dir"], [out_entry])
        stack.callback(a.stop)
        a.start()
        mark_a, mark_b = a.mark(), b.mark()
        out = app_exchange(out_entry["listen"], b"via haproxy\n")
        assert out.data == b"echo: via haproxy\n", (out, upstream.errors)
        allow = a.wait_for(mark_a, event="allow", app_addr=out.addr)
        assert allow["peer_id"] == ORDERS and allow["direction"] == "outbound"
        inbound = b.wait_for(mark_b, event="allow", listener="orders")
        assert inbound["peer_id"] == WEB
        assert not upstream.errors, upstream.errors
        source, destination, _ = upstream.headers[-1]
        assert f"{source[0]}:{source[1]}" == inbound["peer_addr"]
        assert destination == ("127.0.0.1", b_listen)


# ---------------------------------------------------------------- 3. servers that must be refused


@pytest.mark.parametrize("name, cert, reason, peer_id", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_server_svid_is_refused_before_any_app_byte(pair, name, cert, reason, peer_id):
    server = pair.servers[name]
    before = len(server.records)
    mark = pair.a.mark()
    out = app_exchange(pair.ports[name], b"secret request\n")
    assert out.data == b"", f"the app got {out.data!r} from a refused server"
    assert out.error is None, "the app's connection must end with EOF, not a reset"
    record = pair.a.wait_for(mark, event="handshake_error", app_addr=out.addr)
    assert record["reason"] == reason, record
    assert record["direction"] == "outbound" and record["listener"] == name
    assert record["peer_addr"] == f"127.0.0.1:{server.port}"
    assert record.get("peer_id") == peer_id
    if reason == "unexpected_server_id":  # Ward's own check says why (SVID checks, like inbound, may not)
        assert isinstance(record.get("detail"), str) and record["detail"], record
    assert not [r for r in pair.a.lines(mark) if r.get("event") == "allow" and r.get("app_addr") == out.addr]
    # The server saw Ward's connection and not one byte of the app's.
    seen = server.wait_records(before + 1)[before:]
    assert len(seen) == 1 and seen[0]["data"] == b"", seen


def test_impostor_gets_nothing_even_from_a_patient_app(pair):
    # The app sends, waits, sends again: nothing is forwarded, the app is closed with EOF.
    server = pair.servers["impostor"]
    before = len(server.records)
    mark = pair.a.mark()
    sock = socket.create_connection(("127.0.0.1", pair.ports["impostor"]), timeout=10)
    with sock:
        try:
            sock.sendall(b"first\n")
            pair.a.wait_for(mark, event="handshake_error", app_addr=app_addr(sock), reason="unexpected_server_id")
            sock.sendall(b"second\n")
            data = sock.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
    assert data == b""
    assert server.wait_records(before + 1)[before]["data"] == b""


@pytest.mark.parametrize("name, reason", [("silent", "handshake_timeout"), ("not-tls", "tls_error")])
def test_target_that_does_not_speak_tls(pair, name, reason):
    mark = pair.a.mark()
    out = app_exchange(pair.ports[name], b"hello?\n")
    assert out.data == b"" and out.error in (None, "reset")
    record = pair.a.wait_for(mark, event="handshake_error", app_addr=out.addr)
    assert record["reason"] == reason, record
    assert record["direction"] == "outbound" and record["listener"] == name
    assert "peer_id" not in record


# ---------------------------------------------------------------- 4. non-Ward servers and clients


def test_non_ward_server_with_a_matching_svid(pair):
    server = pair.servers["plain"]
    before = len(server.records)
    mark = pair.a.mark()
    out = app_exchange(pair.ports["plain"], b"plain\n")
    assert out.data == b"echo: plain\n" and out.error is None, out
    allow = pair.a.wait_for(mark, event="allow", app_addr=out.addr)
    assert allow["peer_id"] == ORDERS and allow["listener"] == "plain" and allow["rule"] == "plain"
    assert allow["peer_addr"] == f"127.0.0.1:{server.port}"  # target localhost:PORT, resolved
    (record,) = server.wait_records(before + 1)[before:]
    assert record["handshake"] == "ok"
    assert record["peer_id"] == WEB  # Ward presented its own SVID
    assert record["sni"] == "orders.internal"
    assert record["data"] == b"plain\n"
    close = pair.a.wait_for(mark, event="close", conn=allow["conn"])
    assert close["close_cause"] == "upstream" and close["bytes_in"] == 6 and close["bytes_out"] == 12


def test_app_closing_first_and_no_sni_by_default(pair):
    server = pair.servers["plain-hold"]
    before = len(server.records)
    mark = pair.a.mark()
    sock = app_stream(pair.ports["plain-hold"])
    addr = app_addr(sock)
    sock.sendall(b"abc")
    assert recv_exactly(sock, 3) == b"abc"
    sock.close()
    allow = pair.a.wait_for(mark, event="allow", app_addr=addr)
    close = pair.a.wait_for(mark, event="close", conn=allow["conn"])
    assert close["close_cause"] == "client"
    assert close["bytes_in"] == 7 and close["bytes_out"] == 7
    (record,) = server.wait_records(before + 1)[before:]
    assert record["sni"] is None  # no server_name: no SNI
    assert record["data"] == b"pingabc"


def test_server_speaks_first(pair):
    # Ward connects to the target when the app connects, not when the app first sends.
    sock = socket.create_connection(("127.0.0.1", pair.ports["banner"]), timeout=10)
    with sock:
        assert recv_exactly(sock, 18) == b"220 orders ready\r\n"
        sock.sendall(b"QUIT\n")
        rest = b""
        while chunk := sock.recv(64):
            rest += chunk
    assert rest == b"echo: QUIT\n"


def test_inbound_from_non_ward_clients_keeps_working(pair):
    # A plain Python TLS client straight to B's listener, and to A's own listener.
    mark_b = pair.b.mark()
    direct = exchange(pair.b_listen, context(pair.certs, "web"), b"direct\n")
    assert direct.data == b"echo: direct\n", direct.error
    allow = pair.b.wait_for(mark_b, event="allow", peer_addr=f"127.0.0.1:{direct.local_port}")
    assert allow["direction"] == "inbound" and allow["peer_id"] == WEB
    source, _, tlvs = pair.upstream.headers[-1]
    assert source == ("127.0.0.1", direct.local_port) and dict(tlvs)[SPIFFE_TLV].decode() == WEB

    mark_a = pair.a.mark()
    ctx = context(pair.certs)
    ctx.load_cert_chain(pair.certs["ward"].cert_path, pair.certs["ward"].key_path)  # ORDERS calls A
    to_a = exchange(pair.a_listen, ctx, b"into a\n")
    assert to_a.data == b"echo: into a\n", to_a.error
    allow = pair.a.wait_for(mark_a, event="allow", peer_addr=f"127.0.0.1:{to_a.local_port}")
    assert allow["direction"] == "inbound" and allow["listener"] == "a-in" and allow["peer_id"] == ORDERS
    refused = exchange(pair.a_listen, context(pair.certs, "batch"), b"x\n")
    assert refused.data == b""
    assert pair.a.wait_for(mark_a, event="deny", peer_addr=f"127.0.0.1:{refused.local_port}")["direction"] == "inbound"


# ---------------------------------------------------------------- 8. unreachable target


def test_unreachable_target_closes_the_app(pair):
    mark = pair.a.mark()
    out = app_exchange(pair.ports["down"], b"anyone?\n")
    assert out.data == b"" and out.error in (None, "reset")
    close = pair.a.wait_for(mark, event="close", app_addr=out.addr)
    assert close["reason"] == "upstream_unreachable" and close["close_cause"] == "error"
    assert close["direction"] == "outbound" and close["listener"] == "down"
    assert close["peer_addr"] == f"127.0.0.1:{pair.down}"
    assert not [r for r in pair.a.lines(mark) if r.get("event") == "allow" and r.get("app_addr") == out.addr]


def test_metrics_count_outbound_connections(certs, server_certs, tmp_path):
    with contextlib.ExitStack() as stack:
        good = TLSServer(server_certs["orders_plain"], certs["example_ca"])
        held = TLSServer(server_certs["orders_plain"], certs["example_ca"], mode="hold")
        impostor = TLSServer(server_certs["impostor"], certs["example_ca"])
        for server in (good, held, impostor):
            stack.callback(server.close)
        entries = [entry("good", good.port, [ORDERS]), entry("held", held.port, [ORDERS]),
                   entry("impostor", impostor.port, [ORDERS]), entry("down", harness.free_port(), [ORDERS])]
        port = {e["name"]: e["listen"] for e in entries}
        a = ward_a(str(tmp_path), certs["dir"], entries)
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        for _ in range(3):
            assert app_exchange(port["good"], b"hi\n").data == b"echo: hi\n"
        for _ in range(2):
            assert app_exchange(port["impostor"], b"hi\n").data == b""
        assert app_exchange(port["down"], b"hi\n").data == b""
        wait_count(a, mark, 3, event="close", listener="good")
        wait_count(a, mark, 2, event="handshake_error", listener="impostor")
        wait_count(a, mark, 1, event="close", listener="down")
        stream = app_stream(port["held"])
        a.wait_for(mark, event="allow", listener="held")

        m = scrape(a)
        total, active, moved = ("ward_outbound_connections_total", "ward_outbound_active_connections",
                                "ward_outbound_bytes_total")
        assert sample(m, total, outbound="good", outcome="allow") == 3
        assert sample(m, total, outbound="held", outcome="allow") == 1
        assert sample(m, total, outbound="impostor", outcome="unexpected_server_id") == 2
        assert sample(m, total, outbound="down", outcome="upstream_unreachable") == 1
        assert sample(m, total, outbound="impostor", outcome="allow") in (None, 0)
        assert sample(m, active, outbound="good") == 0
        assert sample(m, active, outbound="held") == 1
        assert sample(m, moved, outbound="good", direction="in") == 9
        assert sample(m, moved, outbound="good", direction="out") == 27
        assert sample(m, moved, outbound="impostor", direction="in") in (None, 0)
        # No outbound entry is counted as an inbound listener.
        assert not [key for key in m if key[0] == "ward_connections_total" and ("listener", "good") in key[1]]

        stream.close()
        wait_count(a, mark, 1, event="close", listener="held")
        m = scrape(a)
        assert sample(m, active, outbound="held") == 0
        assert sample(m, moved, outbound="held", direction="in") == 4
        assert sample(m, moved, outbound="held", direction="out") == 4


# ---------------------------------------------------------------- 5. revocation on reload


def test_reload_that_drops_the_servers_id_revokes_open_connections(certs, tmp_path):
    with contextlib.ExitStack() as stack:
        upstream = harness.Upstream("hold")
        stack.callback(upstream.close)
        b, b_listen = ward_b(str(tmp_path / "b"), certs["dir"], upstream.port)
        stack.callback(b.stop)
        b.start()
        entries = [entry("orders-api", b_listen, [ORDERS]),
                   entry("orders-keep", b_listen, ["spiffe://example.org/ns/prod/sa/*"])]
        a = ward_a(str(tmp_path / "a"), certs["dir"], entries)
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        doomed = app_stream(entries[0]["listen"])
        stack.callback(doomed.close)
        kept = app_stream(entries[1]["listen"])
        stack.callback(kept.close)
        allow = a.wait_for(mark, event="allow", app_addr=app_addr(doomed))
        kept_allow = a.wait_for(mark, event="allow", app_addr=app_addr(kept))

        text = open(a.config_path).read()
        assert f"server_id: [{ORDERS}]" in text
        write_atomically(a.config_path, text.replace(f"server_id: [{ORDERS}]", f"server_id: [{BILLING}]"))
        started = time.monotonic()
        reload(a)
        doomed.settimeout(5)
        assert doomed.recv(1) == b""  # EOF, not a reset
        assert time.monotonic() - started < 2.0
        revoke = a.wait_for(mark, event="revoke", conn=allow["conn"])
        assert revoke["direction"] == "outbound" and revoke["listener"] == "orders-api"
        assert revoke["reason"] == "unexpected_server_id" and revoke["peer_id"] == ORDERS
        assert a.wait_for(mark, event="close", conn=allow["conn"])["close_cause"] == "revoked"

        kept.sendall(b"still here")
        assert recv_exactly(kept, 10) == b"still here"
        assert not [r for r in a.lines(mark) if r.get("event") == "revoke" and r.get("conn") == kept_allow["conn"]]
        # New connections through the changed entry meet the new server_id.
        refused = app_exchange(entries[0]["listen"], b"x\n")
        assert refused.data == b""
        assert a.wait_for(mark, event="handshake_error", app_addr=refused.addr)["reason"] == "unexpected_server_id"


def test_reload_that_drops_the_servers_ca_revokes_open_connections(certs, tmp_path):
    # B's SVID comes from example.org's next root. A trusts both roots, then only the old one.
    pki_a, pki_b = str(tmp_path / "pki-a"), str(tmp_path / "pki-b")
    shutil.copytree(certs["dir"], pki_a)
    shutil.copytree(certs["dir"], pki_b)
    both = open(certs["example_ca"]).read() + open(certs["example_next_ca"]).read()
    for folder in (pki_a, pki_b):
        write_atomically(os.path.join(folder, "example.org.bundle.pem"), both)
    shutil.copy(certs["ward_next"].cert_path, os.path.join(pki_b, "ward.pem"))
    shutil.copy(certs["ward_next"].key_path, os.path.join(pki_b, "ward.key"))
    with contextlib.ExitStack() as stack:
        upstream = harness.Upstream("hold")
        stack.callback(upstream.close)
        b, b_listen = ward_b(str(tmp_path / "b"), pki_b, upstream.port)
        stack.callback(b.stop)
        b.start()
        out_entry = entry("orders-api", b_listen, [ORDERS])
        a = ward_a(str(tmp_path / "a"), pki_a, [out_entry])
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        stream = app_stream(out_entry["listen"])
        stack.callback(stream.close)
        allow = a.wait_for(mark, event="allow", app_addr=app_addr(stream))
        write_atomically(os.path.join(pki_a, "example.org.bundle.pem"), open(certs["example_ca"]).read())
        a.process.send_signal(signal.SIGHUP)
        stream.settimeout(harness.DEADLINE)
        assert stream.recv(1) == b""
        revoke = a.wait_for(mark, event="revoke", conn=allow["conn"])
        assert revoke["reason"] == "untrusted_chain" and revoke["direction"] == "outbound"
        assert a.wait_for(mark, event="close", conn=allow["conn"])["close_cause"] == "revoked"
        assert app_exchange(out_entry["listen"], b"x\n").data == b""


# ---------------------------------------------------------------- 6. TLS 1.3 resumption


def test_resumption_with_a_ward_that_offers_tickets(certs, tmp_path):
    pki_a = str(tmp_path / "pki-a")
    shutil.copytree(certs["dir"], pki_a)
    with contextlib.ExitStack() as stack:
        upstream = harness.Upstream("echo-line")
        stack.callback(upstream.close)
        b, b_listen = ward_b(str(tmp_path / "b"), certs["dir"], upstream.port, extra="resumption: on\n")
        stack.callback(b.stop)
        b.start()
        out_entry = entry("orders-api", b_listen, [ORDERS])
        # One worker: which worker holds a ticket is not what this test is about.
        a = ward_a(str(tmp_path / "a"), pki_a, [out_entry], workers=1)
        stack.callback(a.stop)
        a.start()

        def through():
            mark_a, mark_b = a.mark(), b.mark()
            out = app_exchange(out_entry["listen"], b"again\n")
            assert out.data == b"echo: again\n", out
            allow = a.wait_for(mark_a, event="allow", app_addr=out.addr)
            assert allow["peer_id"] == ORDERS
            inbound = b.wait_for(mark_b, event="allow")
            assert inbound["peer_id"] == WEB
            return allow, inbound

        first, _ = through()
        assert first["resumed"] is False
        second, _ = through()
        assert second["resumed"] is True

        # A's own SVID is re-issued: the reload that publishes it drops every session.
        example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                           os.path.join(certs["dir"], "example.org.bundle.key"))
        reissued = pki.write(pki.leaf(example, [WEB]), str(tmp_path), "web-reissued")
        mark = a.mark()
        shutil.copy(reissued.cert_path, os.path.join(pki_a, "web.pem.new"))
        shutil.copy(reissued.key_path, os.path.join(pki_a, "web.key.new"))
        os.replace(os.path.join(pki_a, "web.pem.new"), os.path.join(pki_a, "web.pem"))
        os.replace(os.path.join(pki_a, "web.key.new"), os.path.join(pki_a, "web.key"))
        reload(a)
        a.wait_for(mark, event="reload", ok=True, generation=2)
        third, inbound = through()
        assert third["resumed"] is False
        assert inbound["cert_sha256"] == cert_sha256(reissued)  # B saw the new SVID in a full handshake
        fourth, _ = through()
        assert fourth["resumed"] is True
        assert not [r for r in a.lines(mark) if r.get("event") == "reload" and r.get("generation", 0) > 2]


# ---------------------------------------------------------------- 7. configuration


def test_outbound_only_config_runs_and_forwards(certs, server_certs, tmp_path):
    with contextlib.ExitStack() as stack:
        server = TLSServer(server_certs["orders_plain"], certs["example_ca"])
        stack.callback(server.close)
        out_entry = entry("orders-api", server.port, [ORDERS])
        a = ward_a(str(tmp_path), certs["dir"], [out_entry])
        text = open(a.config_path).read()
        assert "listeners:" not in text and "rules:" not in text
        assert not os.path.exists(os.path.join(str(tmp_path), "rules.yaml"))
        check = run_ward("check", "--config", a.config_path)
        assert check.returncode == 0, check.stdout + check.stderr
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        out = app_exchange(out_entry["listen"], b"solo\n")
        assert out.data == b"echo: solo\n", out
        allow = a.wait_for(mark, event="allow", app_addr=out.addr)
        assert allow["direction"] == "outbound" and allow["peer_id"] == ORDERS


def test_config_without_listeners_or_outbound_is_an_error(certs, tmp_path):
    text = harness.config(certs["dir"], [], rules=False).replace("listeners:\n", "")
    assert "listeners" not in text and "outbound" not in text
    ward = harness.Ward(str(tmp_path), text, None)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode != 0
    assert out.stdout.startswith(f"{ward.config_path}:") and "listeners" in out.stdout, out.stdout


CHECK_RULES = f"default: deny\nrules:\n  - name: web\n    action: allow\n    from: [{WEB}]\n    to: [svc]\n"
# (id, line to change, replacement (None: delete it), words the message must hold)
CONFIG_ERRORS = [
    ("listen_without_port", "    listen: 127.0.0.1:9001", "    listen: 127.0.0.1", ["127.0.0.1"]),
    ("listen_bad_port", "    listen: 127.0.0.1:9001", "    listen: 127.0.0.1:70000", ["127.0.0.1:70000"]),
    ("target_without_port", "    target: 127.0.0.1:8443", "    target: orders.internal", ["orders.internal"]),
    ("listen_not_loopback", "    listen: 127.0.0.1:9001", "    listen: 0.0.0.0:9001", ["0.0.0.0:9001", "allow_remote"]),
    ("server_id_bad_pattern", f"    server_id: [{ORDERS}]", "    server_id: [spiffe://example.org/ns/prod/sa/ord*]",
     ["spiffe://example.org/ns/prod/sa/ord*"]),
    ("server_id_no_bundle", f"    server_id: [{ORDERS}]", "    server_id: [spiffe://nowhere.org/ns/prod/sa/orders]",
     ["nowhere.org"]),
    ("server_id_empty", f"    server_id: [{ORDERS}]", "    server_id: []", ["server_id"]),
    ("server_id_missing", f"    server_id: [{ORDERS}]", None, ["server_id"]),
    ("unknown_key", "    target: 127.0.0.1:8443", "    target: 127.0.0.1:8443\n    servr_name: orders.internal",
     ["servr_name"]),
    ("duplicate_name", "  - name: orders-api", "  - name: svc", ["svc", "duplicate"]),
]


def check_config(certs, tmp_path, outbound_text):
    base = harness.config(certs["dir"], [("svc", 8453, 8080)], identity="web")
    text = base.replace("rules: rules.yaml\n", outbound_text + "rules: rules.yaml\n")
    return harness.Ward(str(tmp_path), text, CHECK_RULES), text


OUTBOUND_TEXT = f"""outbound:
  - name: orders-api
    listen: 127.0.0.1:9001
    target: 127.0.0.1:8443
    server_id: [{ORDERS}]
"""


def test_check_accepts_the_outbound_section(certs, tmp_path):
    ward, _ = check_config(certs, tmp_path, OUTBOUND_TEXT.replace(
        "    target: 127.0.0.1:8443\n", "    target: localhost:8443\n    server_name: orders.internal\n"
        "    allow_remote: false\n"))
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("old, new, words", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_check_reports_outbound_errors_with_file_and_line(certs, tmp_path, old, new, words):
    outbound = OUTBOUND_TEXT.replace(old + "\n", "" if new is None else new + "\n")
    assert outbound != OUTBOUND_TEXT
    ward, text = check_config(certs, tmp_path, outbound)
    lines = text.splitlines()
    if new is None:  # a missing key: the entry's line
        expected = {lines.index("  - name: orders-api") + 1}
    elif old == "  - name: orders-api":  # a duplicate: either of the two names
        expected = {i + 1 for i, line in enumerate(lines) if line == "  - name: svc"}
    else:
        expected = {lines.index(new.splitlines()[-1]) + 1}
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode != 0, out.stdout
    found = [line for line in out.stdout.splitlines()
             if any(line.startswith(f"{ward.config_path}:{n}: ") for n in expected)]
    assert found, f"no problem reported at {ward.config_path}:{sorted(expected)}; got:\n{out.stdout}"
    assert any(all(word in line for word in words) for line in found), (words, found)


def test_non_loopback_listen_needs_allow_remote(certs, tmp_path):
    ward, text = check_config(certs, tmp_path, OUTBOUND_TEXT.replace("127.0.0.1:9001", "0.0.0.0:9001"))
    out = run_ward("run", "--config", ward.config_path, timeout=10)
    assert out.returncode != 0
    assert "0.0.0.0:9001" in out.stdout + out.stderr and "allow_remote" in out.stdout + out.stderr
    with open(ward.config_path, "w") as f:
        f.write(text.replace("    listen: 0.0.0.0:9001\n", "    listen: 0.0.0.0:9001\n    allow_remote: true\n"))
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- 9. entries need a restart


@pytest.mark.parametrize("change", ["add", "remove"])
def test_adding_or_removing_an_outbound_entry_needs_a_restart(certs, server_certs, tmp_path, change):
    with contextlib.ExitStack() as stack:
        server = TLSServer(server_certs["orders_plain"], certs["example_ca"])
        stack.callback(server.close)
        first, second = entry("first", server.port, [ORDERS]), entry("second", server.port, [ORDERS])
        a = ward_a(str(tmp_path), certs["dir"], [first] if change == "add" else [first, second])
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        changed = [first, second] if change == "add" else [first]
        write_atomically(a.config_path, harness.config(certs["dir"], [], identity="web", outbound=changed,
                                                       rules=False))
        out = reload(a, expect_ok=False)
        assert "restart required" in out.stderr, out.stdout + out.stderr
        failed = a.wait_for(mark, event="reload", ok=False)
        assert "restart required" in failed["error"]
        assert not [r for r in a.lines(mark) if r.get("event") == "reload" and r.get("ok")]
        # The old configuration still serves: the first entry, and the second only if it was there.
        assert app_exchange(first["listen"], b"one\n").data == b"echo: one\n"
        if change == "add":
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", second["listen"]), timeout=5).close()
        else:
            assert app_exchange(second["listen"], b"two\n").data == b"echo: two\n"
