"""Hostile and broken peers: while one legitimate client keeps echoing, each kind of abuse is
refused with a logged reason and the legitimate client is never disturbed."""
import os
import random
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import harness
from clients import context, exchange

RULES = "rules:\n  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"


class Legit:
    """One long-lived allowed connection echoing 1 KiB every 10 ms on its own thread."""

    def __init__(self, certs, port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = context(certs, "web").wrap_socket(raw)
        self.errors, self.echoes = [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        rng = random.Random(1)
        try:
            while not self.stop.is_set():
                payload = rng.randbytes(1024)
                self.tls.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = self.tls.recv(len(payload) - len(got))
                    if not chunk:
                        raise AssertionError("legitimate stream closed")
                    got += chunk
                if got != payload:
                    raise AssertionError("legitimate echo corrupted")
                self.echoes += 1
                time.sleep(0.01)
        except Exception as error:  # noqa: BLE001 - asserted on by finish()
            self.errors.append(repr(error))

    def finish(self):
        # Still echoing after the abuse: a few more round trips must complete.
        target, deadline = self.echoes + 5, time.monotonic() + 10
        while self.echoes < target and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        self.stop.set()
        self.thread.join(timeout=30)
        self.tls.close()
        assert not self.errors, self.errors
        assert self.echoes >= target, self.echoes


@pytest.fixture
def hostile(certs, tmp_path):
    upstream = harness.Upstream("hold")
    listen = harness.free_port()
    extra = "handshake_timeout: 1s\nupstream_connect_timeout: 1s\n"
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream.port)], extra),
                        RULES).start()
    legit = Legit(certs, listen)
    yield ward, listen, certs
    legit.finish()
    ward.stop()
    upstream.close()


def raw(port, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s, f"{source}:{s.getsockname()[1]}"


def failures(ward, mark, source, reason):
    """The handshake_error lines of one source for one reason, and how many more the per-source
    throttle summed up in handshake_error_suppressed lines instead."""
    lines = ward.lines(mark)
    logged = [r for r in lines if r.get("event") == "handshake_error" and r.get("reason") == reason
              and r["peer_addr"].rsplit(":", 1)[0] == source]
    suppressed = sum(r["reasons"].get(reason, 0) for r in lines
                     if r.get("event") == "handshake_error_suppressed" and r.get("peer_ip") == source)
    return logged, suppressed


def client_hello():
    """The bytes of a real TLS ClientHello, from Python's ssl over memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_garbage_record_and_plain_text(hostile):
    ward, port, _ = hostile
    mark = ward.mark()
    s1, peer1 = raw(port)
    s1.sendall(b"\x16\x03\x01\x00\x20" + os.urandom(32))
    s2, peer2 = raw(port)
    s2.sendall(b"GET / HTTP/1.1\r\nHost: ward\r\n\r\n")
    for peer in (peer1, peer2):
        assert ward.wait_for(mark, event="handshake_error", peer_addr=peer)["reason"] == "tls_error"
    s1.close()
    s2.close()


def test_half_a_client_hello(hostile):
    ward, port, _ = hostile
    mark = ward.mark()
    hello = client_hello()
    s, peer = raw(port)
    s.sendall(hello[: len(hello) // 2])
    s.shutdown(socket.SHUT_WR)
    assert ward.wait_for(mark, event="handshake_error", peer_addr=peer)["reason"] == "tls_error"
    s.close()
    s, peer = raw(port)
    s.sendall(hello[: len(hello) // 2])  # and then silence: the handshake timer must end it
    assert ward.wait_for(mark, event="handshake_error", peer_addr=peer)["reason"] == "handshake_timeout"
    s.close()


def test_slowloris_500_connections_time_out(hostile):
    ward, port, _ = hostile
    mark = ward.mark()
    hello = client_hello()
    # A source of its own: the per-source log throttle then sums these up apart from others.
    sockets = [raw(port, "127.0.0.5") for _ in range(500)]
    started = time.monotonic()
    # One byte per socket every 0.3 s: always trickling, never finishing, for 2.5 s.
    for i in range(8):
        for s, _ in sockets:
            try:
                s.send(hello[i:i + 1])
            except OSError:
                pass
        time.sleep(0.3)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        timed_out, suppressed = failures(ward, mark, "127.0.0.5", "handshake_timeout")
        if len(timed_out) + suppressed >= 500:
            break
        time.sleep(0.1)
    # Every one timed out: each logged, or counted in a summary line.
    assert {r["peer_addr"] for r in timed_out} <= {peer for _, peer in sockets}
    assert len(timed_out) + suppressed == 500
    assert time.monotonic() - started < 15
    for s, _ in sockets:
        s.close()


def test_1000_silent_connections(hostile):
    ward, port, _ = hostile
    mark = ward.mark()
    sockets = [raw(port, "127.0.0.6") for _ in range(1000)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logged, suppressed = failures(ward, mark, "127.0.0.6", "handshake_timeout")
        if len(logged) + suppressed >= 1000:
            break
        time.sleep(0.1)
    assert len(logged) + suppressed == 1000
    for s, _ in sockets:
        s.close()


def test_renegotiation_is_refused(hostile):
    _, port, certs = hostile
    c = certs["web"]
    script = "printf 'hello\\n'; sleep 0.5; printf 'R\\n'; sleep 1"
    out = subprocess.run(
        f"({script}) | openssl s_client -connect 127.0.0.1:{port} -tls1_2 -cert {c.cert_path} -key {c.key_path} "
        f"-CAfile {certs['example_ca']}", shell=True, capture_output=True, text=True, timeout=30)
    assert "RENEGOTIATING" in out.stdout + out.stderr
    assert "no renegotiation" in out.stdout + out.stderr


def refusal_reason(hostile, cert):
    """Connects with `cert`; asserts nothing came back; returns the logged refusal reason."""
    ward, port, certs = hostile
    mark = ward.mark()
    out = exchange(port, context(certs, cert), b"x")
    assert out.data == b""
    return ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")["reason"]


def test_chain_longer_than_max_chain_depth(hostile):
    assert refusal_reason(hostile, "deep_chain") == "chain_too_long"


def test_100kb_certificate_is_refused(hostile):
    assert os.path.getsize(hostile[2]["huge_cert"].cert_path) > 100_000
    assert refusal_reason(hostile, "huge_cert") == "cert_too_large"


def test_resets_mid_handshake_and_mid_stream(hostile):
    ward, port, certs = hostile
    mark = ward.mark()
    s, peer = raw(port)
    s.sendall(client_hello())
    time.sleep(0.1)
    reset(s)
    assert ward.wait_for(mark, event="handshake_error", peer_addr=peer)["reason"] == "tls_error"
    raw_socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context(certs, "web").wrap_socket(raw_socket)
    tls.sendall(b"abc")
    assert tls.recv(3) == b"abc"
    peer = f"127.0.0.1:{tls.getsockname()[1]}"
    reset(tls)
    close = ward.wait_for(mark, event="close", peer_addr=peer)
    assert close["close_cause"] in ("error", "client")


def test_connection_flood_is_refused_at_accept(certs, tmp_path):
    upstream = harness.Upstream("hold")
    listen = harness.free_port()
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream.port)],
                                                     "max_connections: 20\n"), RULES).start()
    try:
        legit = Legit(certs, listen)
        mark = ward.mark()
        held = [raw(listen) for _ in range(19)]  # 1 legit + 19 = the limit
        time.sleep(0.2)
        # The refusal is an RST right after accept: it may even beat connect() back to us.
        extra = socket.socket()
        extra.bind(("127.0.0.1", 0))
        peer = f"127.0.0.1:{extra.getsockname()[1]}"
        try:
            extra.settimeout(10)
            extra.connect(("127.0.0.1", listen))
            extra.sendall(client_hello())
            data = extra.recv(10)
        except OSError:
            data = b""
        extra.close()
        assert data == b""
        record = ward.wait_for(mark, event="handshake_error", peer_addr=peer)
        assert record["reason"] == "listener_full"
        for s, _ in held:
            s.close()
        time.sleep(0.3)
        assert exchange(listen, context(certs, "web"), b"x", timeout=5).error in (None, "The read operation timed out")
        legit.finish()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(ward.folder, "admin.sock"))
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            metrics = b""
            while chunk := s.recv(65536):
                metrics += chunk
        assert b'ward_handshake_errors_total{listener="svc",reason="listener_full"} 1' in metrics
    finally:
        ward.stop()
        upstream.close()


def test_descriptor_exhaustion_backs_off_and_recovers(certs, tmp_path):
    upstream = harness.Upstream("echo-line")
    listen = harness.free_port()
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream.port)],
                                                     "handshake_timeout: 30s\n").replace("workers: 2", "workers: 1"),
                        RULES)
    ward.stderr = open(ward.stderr_path, "w")
    ward.process = subprocess.Popen(["prlimit", "--nofile=64", "--", harness.WARD, "run", "--config",
                                     ward.config_path], stdout=subprocess.DEVNULL, stderr=ward.stderr)
    ward.wait_for_stderr("ready:")
    try:
        held = [raw(listen)[0] for _ in range(80)]  # more than Ward has descriptors
        time.sleep(0.5)
        fields = lambda: open(f"/proc/{ward.process.pid}/stat").read().rsplit(")", 1)[1].split()
        before = int(fields()[11]) + int(fields()[12])
        time.sleep(2)
        spent = (int(fields()[11]) + int(fields()[12]) - before) / os.sysconf("SC_CLK_TCK")
        assert spent < 0.2, f"{spent}s of CPU in 2s while out of descriptors: a busy loop"
        assert "accept failed: Too many open files" in open(ward.stderr_path).read()
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while exchange(listen, context(certs, "web"), b"hi\n", timeout=5).data != b"echo: hi\n":
            assert time.monotonic() < deadline, "service did not recover"
            time.sleep(0.2)
    finally:
        ward.stop()
        upstream.close()


def start_with_upstream(certs, tmp_path, upstream_port, extra=""):
    listen = harness.free_port()
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], [("svc", listen, upstream_port)],
                                                     "upstream_connect_timeout: 1s\n" + extra), RULES).start()
    return ward, listen


def rss_kib(pid):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")][0].split()[1])


def test_upstream_that_never_reads_keeps_memory_bounded(certs, tmp_path):
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(sink.accept()), daemon=True).start()
    ward, listen = start_with_upstream(certs, tmp_path, sink.getsockname()[1])
    try:
        raw_socket = socket.create_connection(("127.0.0.1", listen), timeout=10)
        tls = context(certs, "web").wrap_socket(raw_socket)
        before = rss_kib(ward.process.pid)
        sent = [0]

        def pump():
            chunk = os.urandom(65536)
            try:
                while sent[0] < 64 * 2**20:
                    tls.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass

        writer = threading.Thread(target=pump, daemon=True)
        writer.start()
        time.sleep(3)  # long enough for every buffer on the way to fill
        growth = rss_kib(ward.process.pid) - before
        assert sent[0] < 64 * 2**20, "the upstream never reads, so the client must be held back"
        assert growth < 8 * 1024, f"Ward grew {growth} KiB for one stalled connection"
        raw_socket.close()
    finally:
        ward.stop()
        sink.close()


def test_upstream_closing_mid_stream(certs, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve():
        conn, _ = server.accept()
        conn.recv(10)
        conn.sendall(b"partial")
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    ward, listen = start_with_upstream(certs, tmp_path, server.getsockname()[1])
    try:
        mark = ward.mark()
        out = exchange(listen, context(certs, "web"), b"0123456789")
        assert out.data == b"partial"
        close = ward.wait_for(mark, event="close", peer_addr=f"127.0.0.1:{out.local_port}")
        assert close["close_cause"] == "upstream" and close["bytes_out"] == 7
    finally:
        ward.stop()
        server.close()


def test_upstream_slow_to_accept_times_out(certs, tmp_path):
    # A listener whose accept queue is full drops new SYNs: the connect hangs, as to a stuck host.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(stuck.getsockname())
        fillers.append(s)
    time.sleep(0.2)
    ward, listen = start_with_upstream(certs, tmp_path, stuck.getsockname()[1])
    try:
        mark = ward.mark()
        started = time.monotonic()
        out = exchange(listen, context(certs, "web"), b"hello?")
        assert out.data == b""
        close = ward.wait_for(mark, event="close", peer_addr=f"127.0.0.1:{out.local_port}")
        assert close["reason"] == "upstream_unreachable" and close["detail"] == "connect timed out"
        assert 0.9 < time.monotonic() - started < 5
    finally:
        ward.stop()
        for s in fillers:
            s.close()
        stuck.close()
