"""The hostile review of data plane v2 (TLSStream, Splice, Lingering, the shared session cache), end to
end: one test (or one parametrized test) per finding, each failing on the build reviewed.

1. A peer that never reads can make Ward queue TLS answers without bound: every KeyUpdate with
   update_requested (TLS 1.3) and every renegotiation ClientHello (TLS 1.2, answered with a
   no_renegotiation warning alert) queues a record for the client, and Ward keeps reading the client
   because only the *other* stream's queue pauses it. The previous data plane (bufferevent_openssl)
   stopped reading such a peer.
2. The session cache is bounded in sessions (20,480) but not in bytes: a cached session keeps the
   peer's parsed certificate, about 140 KiB for a certificate just under max_cert_size, so a full
   cache is about 2.8 GiB; and the sessions of peers the rules deny are cached as well.
3. An abort is passed on as a clean end: an upstream that resets makes Ward send the client
   close_notify (the TLS signal that nothing was truncated), and a client that resets makes Ward
   send the upstream a FIN after a truncated stream.

Clients speak real TLS on loopback (Python's ssl, or tlsfuzz's scriptable client for records the ssl
module cannot send).
"""
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
import pki
import tlsfuzz
from clients import context, memory_bio_client

WEB = "spiffe://example.org/ns/prod/sa/web"
BATCH = "spiffe://example.org/ns/dev/sa/batch"
RULES = f"default: deny\nrules:\n  - name: web\n    action: allow\n    from: [{WEB}]\n    to: ['*']\n"
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def start_ward(certs, tmp_path, upstream_port, extra="", rules=RULES):
    listen = harness.free_port()
    text = harness.config(certs["dir"], [("svc", listen, upstream_port)], extra)
    return harness.Ward(str(tmp_path), text, rules).start(), listen


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([line for line in f if line.startswith("VmRSS:")][0].split()[1])


def ward_growth_within(ward, base, budget_kib, seconds):
    """Watches Ward's RSS for `seconds` (returning early once it passes the budget); the largest growth."""
    deadline, worst = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and worst <= budget_kib:
        worst = max(worst, rss_kib(ward.process.pid) - base)
        time.sleep(0.05)
    return worst


# ---------------------------------------------------------------- finding 1: TLS answers to a peer that never reads

STORM_SECONDS = 6
ANSWER_BUDGET_KIB = 512  # ward-before grew 24-56 KiB in this test


def established(certs, port, version):
    """tlsfuzz's client through a full handshake (its certificate: web, allowed), holding the record keys.
    Its socket advertises a small window and a small MSS, so Ward's kernel send buffer stays small and
    what Ward cannot send shows in Ward's own memory, not in socket buffers."""
    session = tlsfuzz.Session(certs, port, version)
    session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    session.sock.connect(("127.0.0.1", port))
    try:
        session.tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    session.hello_record = session.outgoing.read()
    session.send("hello", session.hello_record)
    assert session.read_server_flight() is None, "Ward refused the web SVID"
    session.send_flight(session.client_flight(), tlsfuzz.Plan("established", version))
    session.sent = []  # the storm is not kept for failure messages
    return session


def storm_records(session, storm, count):
    """`count` records that each make Ward answer with one record of about the same size."""
    if storm == "keyupdate":
        return session.key_updates(count, requested=1)  # each answered by Ward's own KeyUpdate
    # A ClientHello header is all OpenSSL looks at before answering no_renegotiation (a warning alert).
    return b"".join(session.keys.seal(tlsfuzz.HANDSHAKE, b"\x01\x00\x00\x00") for _ in range(count))


@pytest.mark.parametrize("storm,version", [("keyupdate", "1.3"), ("renegotiation", "1.2")])
def test_peer_that_never_reads_cannot_make_ward_queue_tls_answers_without_bound(certs, tmp_path, storm, version):
    # Ward must stop reading a peer whose answers it cannot send (as it stops reading a peer whose
    # bytes the upstream does not take), or cut it; ward-before stopped reading, and grew 24-56 KiB here.
    upstream = harness.Upstream("hold")
    ward, listen = start_ward(certs, tmp_path, upstream.port)
    try:
        mark = ward.mark()
        session = established(certs, listen, version)
        ward.wait_for(mark, event="allow", peer_addr=session.peer)
        base = rss_kib(ward.process.pid)
        session.sock.settimeout(2)  # a send blocked this long: Ward stopped reading us (what it should do)
        provoked, blocked, deadline = 0, False, time.monotonic() + STORM_SECONDS
        try:
            while provoked < 4 * 2**20 and time.monotonic() < deadline:
                data = storm_records(session, storm, 500)
                session.sock.sendall(data)
                provoked += len(data)
        except socket.timeout:
            blocked = True
        except (ConnectionResetError, BrokenPipeError):
            # Also right: Ward cut a peer that kept talking without reading its answers, or that
            # sent more post-handshake messages (KeyUpdate) than it allows.
            blocked = True
            close = ward.wait_for(mark, event="close", peer_addr=session.peer)
            detail = close.get("detail", "")
            assert close["close_cause"] == "error" and ("does not read" in detail or "post-handshake" in detail), close
        growth = ward_growth_within(ward, base, ANSWER_BUDGET_KIB, 3)
        assert growth <= ANSWER_BUDGET_KIB, (
            f"Ward grew {growth} KiB queueing {storm} answers for a peer that never reads "
            f"({provoked} bytes of {storm} records sent; Ward "
            + ("stopped reading only when its memory had grown)" if blocked else "never stopped reading them)"))
        assert ward.process.poll() is None
    finally:
        ward.stop()
        upstream.close()


# ---------------------------------------------------------------- finding 2: the session cache has no byte bound

HANDSHAKES = 300
# 20,480 sessions (SessionCache.shared) at 25 KiB each is 512 MiB: the most a sidecar's resumption
# cache should ever hold. Measured: about 140 KiB per session for this certificate.
PER_SESSION_BUDGET_KIB = 25


def large_svid(certs, tmp_path, spiffe_id, name):
    """An example.org SVID of about 29 KB of DER (480 DNS SANs): under max_cert_size (32 KiB)."""
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    issued = pki.leaf(example, [spiffe_id], dns=[f"h{i:05d}.{'x' * 40}.example.org" for i in range(480)])
    return pki.write(issued, str(tmp_path), name)


@pytest.mark.parametrize("who", ["allowed", "denied"])
def test_cached_sessions_stay_within_a_memory_budget(certs, tmp_path, who):
    upstream = harness.Upstream("echo-line")
    ward, listen = start_ward(certs, tmp_path, upstream.port, "resumption: on\n")
    try:
        svid = large_svid(certs, tmp_path, WEB if who == "allowed" else BATCH, f"large-{who}")
        ctx = context(certs, minimum_version=ssl.TLSVersion.TLSv1_3)
        ctx.load_cert_chain(svid.cert_path, svid.key_path)

        def handshake(_):
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as raw:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"x\n")
                    data = b""
                    while not data.endswith(b"\n") and (chunk := tls.recv(64)):
                        data += chunk
                    # Allowed: the echo; denied: close_notify. Either way Ward finished the handshake.
                    return data

        for n in range(20):  # the allocator's first arenas and the loop buffers, before the baseline
            handshake(n)
        base = rss_kib(ward.process.pid)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(handshake, range(HANDSHAKES)))
        assert set(answers) == ({b"echo: x\n"} if who == "allowed" else {b""}), set(answers)
        growth = rss_kib(ward.process.pid) - base
        budget = 4096 if who == "denied" else HANDSHAKES * PER_SESSION_BUDGET_KIB
        assert growth <= budget, (
            f"{HANDSHAKES} handshakes of {'an' if who == 'allowed' else 'a'} {who} peer with a 29 KB SVID grew Ward by {growth} KiB "
            f"({growth // HANDSHAKES} KiB each; at 20,480 cached sessions that is "
            f"{growth * 20480 // HANDSHAKES // 1024} MiB)"
            + ("; a peer the rules refuse should leave nothing to resume" if who == "denied" else ""))
    finally:
        ward.stop()
        upstream.close()


# ---------------------------------------------------------------- finding 3: an abort is passed on as a clean end


def test_upstream_reset_does_not_reach_the_client_as_close_notify(certs, tmp_path):
    # close_notify says "this is the whole stream". An upstream that aborts (RST) after part of a
    # response must not be reported to the client that way, or a length-by-close response is silently
    # truncated. Ward itself logs the end as close_cause error, "Connection reset by peer".
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    response = os.urandom(64 * 1024)
    sent = threading.Event()

    def serve():
        conn, _ = server.accept()
        conn.recv(64)
        conn.sendall(response)
        sent.wait(10)  # the client has all of it: the reset cannot overtake it
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    ward, listen = start_ward(certs, tmp_path, server.getsockname()[1])
    try:
        mark = ward.mark()
        sock, tls, incoming, outgoing = memory_bio_client(listen, context(certs, "web"))
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        tls.write(b"go\n")
        sock.sendall(outgoing.read())
        got, how = b"", None
        while how is None:
            try:
                data = tls.read(65536)
                if not data:  # an SSLObject reads b"" once close_notify came (EOF alone: SSLEOFError)
                    how = "close_notify"
                    break
                got += data
                if len(got) == len(response):
                    sent.set()
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                how = "close_notify"
                break
            except ssl.SSLError as error:
                how = f"TLS error: {error}"
                break
            try:
                chunk = sock.recv(65536)
            except OSError as error:
                how = f"socket error: {error}"
                break
            if chunk:
                incoming.write(chunk)
            else:
                incoming.write_eof()
        sock.close()
        assert got == response, f"{len(got)} of {len(response)} response bytes before the end ({how})"
        close = ward.wait_for(mark, event="close", peer_addr=peer)
        assert close["close_cause"] == "error", close
        assert how != "close_notify", (
            f"the upstream reset, Ward logged {close.get('detail')!r}, yet told the client the stream "
            "ended cleanly (close_notify)")
    finally:
        ward.stop()
        server.close()


def test_client_reset_does_not_reach_the_upstream_as_a_clean_end(certs, tmp_path):
    # The mirror image: a client that aborts mid-upload must not become a FIN to the upstream, which
    # then reads a truncated body followed by a clean end of stream.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    seen = {}
    started, done = threading.Event(), threading.Event()

    def serve():
        conn, _ = server.accept()
        total = 0
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    seen["end"] = "clean EOF"
                    break
                total += len(chunk)
                started.set()
                time.sleep(0.02)  # a slow reader: Ward holds part of the upload when the client aborts
        except OSError as error:
            seen["end"] = f"{type(error).__name__}: {error}"
        seen["bytes"] = total
        conn.close()
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    ward, listen = start_ward(certs, tmp_path, server.getsockname()[1])
    try:
        tls = context(certs, "web").wrap_socket(socket.create_connection(("127.0.0.1", listen), timeout=10))
        tls.settimeout(2)
        sent = 0
        try:
            while sent < 4 * 2**20:
                tls.sendall(bytes(65536))
                sent += 65536
        except socket.timeout:
            pass
        assert started.wait(10), "the upload never reached the upstream"
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        tls.close()
        assert done.wait(15), "the upstream connection never ended"
        assert seen["end"] != "clean EOF", (
            f"the client reset after sending {sent} bytes; the upstream read {seen['bytes']} and then a "
            "clean end of stream, as if the upload were complete")
    finally:
        ward.stop()
        server.close()
