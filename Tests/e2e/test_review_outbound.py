"""The hostile review of outbound mode, end to end: one test (or one parametrized test) per finding,
each failing on the build reviewed.

1. Loops: an outbound `target` that is one of Ward's own listen addresses (an outbound entry's or a
   listener's), or a listener `upstream` that is, makes one app connection multiply through Ward
   until no descriptor is left. `ward check` and `ward run` must refuse such a config.
2. Two entries (listeners or outbound, any mix) on one address both bind (SO_REUSEPORT) and split
   its connections between them; a wildcard listen (0.0.0.0, ::) overlaps every address on its port.
   `ward check` must refuse it.
3. A peer flooding KeyUpdate records (an allowed client, or a target server with a matching SVID)
   holds the worker inside one SSL_read for as long as records keep coming: every other connection
   of that worker waits. Ward must stay responsive and close the flooding connection (at most 64
   post-handshake handshake messages per 10 s per connection).
4. "A DNS change reaches Ward with the next reload" held only when a file had changed: a reload the
   operator asks for (`ward reload`, SIGHUP) must follow a target name that now resolves elsewhere.
5. A server certificate message over `max_cert_size` was logged `handshake_too_large`, not
   `cert_too_large` (the client reads the certificate in another state than the server does).
6. The outbound `listener_full` line lacked `peer_addr` (the target) and `rule` (the entry), which
   every other outbound line carries.
"""
import contextlib
import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

import harness
import tlsfuzz
from clients import context
from test_outbound import ORDERS, WEB, TLSServer, app_exchange, entry, reload, run_ward, silent_target, ward_a

ALLOW_WEB = f"default: deny\nrules:\n  - name: web\n    action: allow\n    from: [{WEB}]\n    to: ['*']\n"


# ---------------------------------------------------------------- helpers


def entry_lines(text, name):
    """The 1-based line numbers of the listener or outbound entry `name` in a config text: its
    `- name:` line and every key line under it."""
    lines = text.splitlines()
    start = lines.index(f"  - name: {name}")
    numbers = [start + 1]
    for index in range(start + 1, len(lines)):
        if not lines[index].startswith("    "):
            break
        numbers.append(index + 1)
    return set(numbers)


def problems_at(out, config_path, line_numbers):
    """The lines of `ward check` output that report a problem at FILE:LINE for one of the lines."""
    return [line for line in (out.stdout + out.stderr).splitlines()
            if any(line.startswith(f"{config_path}:{n}: ") for n in line_numbers)]


def run_refused(config_path, seconds=10):
    """`ward run` on a config it must refuse: (exit code, or None if it got ready / kept running; output)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen([harness.WARD, "run", "--config", config_path], stdout=out,
                                   stderr=subprocess.STDOUT)
        deadline, code = time.monotonic() + seconds, None
        try:
            while time.monotonic() < deadline:
                code = process.poll()
                if code is not None:
                    break
                out.seek(0)
                if b"ready:" in out.read():
                    break
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        out.seek(0)
        return code, out.read().decode(errors="replace")


def write_config(folder, text, rules_text=None):
    os.makedirs(folder, exist_ok=True)
    return harness.Ward(folder, text, rules_text)


# ---------------------------------------------------------------- finding 1: loops through Ward itself


def loop_config(certs, case):
    """(config text, the entry the loop must be reported at, whether a listener is in it)."""
    p, q = harness.free_port(), harness.free_port()
    listeners, outbound, rewrite = [], [], []
    if case == "target_is_its_own_listen":
        outbound = [{"name": "loop", "listen": p, "target": p, "server_id": [ORDERS]}]
        culprit = "loop"
    elif case == "target_names_its_own_listen":
        outbound = [{"name": "loop", "listen": p, "target": f"localhost:{p}", "server_id": [ORDERS]}]
        culprit = "loop"
    elif case == "target_is_another_outbound_listen":
        outbound = [{"name": "first", "listen": p, "target": q, "server_id": [ORDERS]},
                    {"name": "second", "listen": q, "target": p, "server_id": [ORDERS]}]
        culprit = "first"
    elif case == "target_is_a_listener":
        listeners = [("in", p, q)]
        outbound = [{"name": "out", "listen": q, "target": p, "server_id": [ORDERS]}]
        culprit = "out"
    elif case == "target_on_a_wildcard_listener":
        listeners = [("in", p, q)]
        outbound = [{"name": "out", "listen": q, "target": p, "server_id": [ORDERS]}]
        rewrite = [(f"    listen: 127.0.0.1:{p}\n", f"    listen: 0.0.0.0:{p}\n")]
        culprit = "out"
    elif case == "upstream_is_an_outbound_listen":
        listeners = [("in", p, q)]
        outbound = [{"name": "out", "listen": q, "target": p, "server_id": [ORDERS]}]
        culprit = "in"
    elif case == "upstream_is_a_listener":
        listeners = [("front", p, q), ("back", q, p)]
        culprit = "front"
    else:
        raise ValueError(case)
    return rewritten_config(certs, listeners, outbound, rewrite), culprit, bool(listeners)



def rewritten_config(certs, listeners, outbound, rewrite):
    """Ward A's config (identity WEB) with each (old, new) of `rewrite` applied, old text required."""
    text = harness.config(certs["dir"], listeners, identity="web", outbound=outbound, rules=bool(listeners))
    for old, new in rewrite:
        assert old in text
        text = text.replace(old, new)
    return text

LOOPS = ["target_is_its_own_listen", "target_names_its_own_listen", "target_is_another_outbound_listen",
         "target_is_a_listener", "target_on_a_wildcard_listener", "upstream_is_an_outbound_listen",
         "upstream_is_a_listener"]


@pytest.mark.parametrize("case", LOOPS)
def test_a_loop_through_ward_itself_is_refused(certs, tmp_path, case):
    # Review t01/t10: one app connection on such a config made Ward call itself until every
    # descriptor was gone (and t10's two-hop loop went on after the app had left).
    text, culprit, has_listeners = loop_config(certs, case)
    ward = write_config(str(tmp_path), text, ALLOW_WEB if has_listeners else None)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1, f"ward check accepted a loop ({case}), exit {out.returncode}:\n{text}{out.stdout}"
    found = problems_at(out, ward.config_path, entry_lines(text, culprit))
    assert any("loop" in line for line in found), (
        f"no '{ward.config_path}:LINE: ...loop...' at entry {culprit!r}; got:\n{out.stdout}{out.stderr}")
    code, output = run_refused(ward.config_path)
    assert code == 1, f"ward run on a loop ({case}): exit {code}:\n{output}"
    assert "loop" in output, output
    if case == "target_is_its_own_listen":
        # Not a loop: the same port on another loopback address.
        with open(ward.config_path, "w") as f:
            f.write(text.replace("    target: 127.0.0.1:", "    target: 127.0.0.2:"))
        out = run_ward("check", "--config", ward.config_path)
        assert out.returncode == 0, out.stdout + out.stderr



@pytest.mark.parametrize("case", ["colocated_call", "gateway", "mesh_on_one_port", "wildcard_upstream_elsewhere"])
def test_calls_through_ward_that_do_not_come_back_are_allowed(certs, tmp_path, case):
    """Second review: only a cycle is a loop. An app calling a service beside it through this
    Ward's own listener, a listener whose upstream is an outbound entry (a gateway), and a
    wildcard listener on the port its targets or upstreams elsewhere use all pass."""
    p, q, far = harness.free_port(), harness.free_port(), harness.free_port()
    listeners, outbound, rewrite = [], [], []
    if case == "colocated_call":
        listeners = [("in", p, far)]
        outbound = [{"name": "out", "listen": q, "target": p, "server_id": [ORDERS]}]
    elif case == "gateway":
        listeners = [("in", p, q)]
        outbound = [{"name": "out", "listen": q, "target": far, "server_id": [ORDERS]}]
    elif case == "mesh_on_one_port":
        listeners = [("in", p, far)]
        outbound = [{"name": "out", "listen": q, "target": f"192.0.2.10:{p}", "server_id": [ORDERS]}]
        rewrite = [(f"    listen: 127.0.0.1:{p}\n", f"    listen: 0.0.0.0:{p}\n")]
    else:
        listeners = [("in", p, far)]
        rewrite = [(f"    listen: 127.0.0.1:{p}\n", f"    listen: 0.0.0.0:{p}\n"),
                   (f"    upstream: 127.0.0.1:{far}\n", f"    upstream: 192.0.2.10:{p}\n")]
    text = rewritten_config(certs, listeners, outbound, rewrite)
    ward = write_config(str(tmp_path), text, ALLOW_WEB if listeners else None)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, f"{case} refused:\n{text}{out.stdout}{out.stderr}"

# ---------------------------------------------------------------- finding 2: two entries on one address


def duplicate_config(certs, case):
    """(config text, the two entries that share an address, whether a listener is in it)."""
    p, up1, up2, t1, t2 = (harness.free_port() for _ in range(5))
    listeners, outbound, rewrite = [], [], []
    if case == "two_outbound_entries":
        outbound = [{"name": "one", "listen": p, "target": t1, "server_id": [ORDERS]},
                    {"name": "two", "listen": p, "target": t2, "server_id": [ORDERS]}]
        pair = ("one", "two")
    elif case == "outbound_entry_and_listener":
        listeners = [("in", p, up1)]
        outbound = [{"name": "out", "listen": p, "target": t1, "server_id": [ORDERS]}]
        pair = ("in", "out")
    elif case == "two_listeners":
        listeners = [("a", p, up1), ("b", p, up2)]
        pair = ("a", "b")
    elif case == "address_and_name":
        outbound = [{"name": "one", "listen": p, "target": t1, "server_id": [ORDERS]},
                    {"name": "two", "listen": f"localhost:{p}", "target": t2, "server_id": [ORDERS]}]
        pair = ("one", "two")
    elif case in ("wildcard_ipv4_listener", "wildcard_ipv6_listener"):
        # [::]:P is quoted: a bare [ starts a YAML list.
        listen = f"0.0.0.0:{p}" if case == "wildcard_ipv4_listener" else f'"[::]:{p}"'
        listeners = [("in", p, up1)]
        outbound = [{"name": "out", "listen": p, "target": t1, "server_id": [ORDERS]}]
        rewrite = [(f"  - name: in\n    listen: 127.0.0.1:{p}\n", f"  - name: in\n    listen: {listen}\n")]
        pair = ("in", "out")
    elif case == "wildcard_outbound_entry":
        listeners = [("in", p, up1)]
        outbound = [{"name": "out", "listen": f"0.0.0.0:{p}", "target": t1, "server_id": [ORDERS],
                     "allow_remote": True}]
        pair = ("in", "out")
    else:
        raise ValueError(case)
    return rewritten_config(certs, listeners, outbound, rewrite), pair, bool(listeners)


DUPLICATES = ["two_outbound_entries", "outbound_entry_and_listener", "two_listeners", "address_and_name",
              "wildcard_ipv4_listener", "wildcard_ipv6_listener", "wildcard_outbound_entry"]


@pytest.mark.parametrize("case", DUPLICATES)
def test_two_entries_on_one_listen_address_are_refused(certs, tmp_path, case):
    # Review t19/t19b: both bound (SO_REUSEPORT) and the kernel split the app's connections
    # between two targets with different server_id.
    text, pair, has_listeners = duplicate_config(certs, case)
    ward = write_config(str(tmp_path), text, ALLOW_WEB if has_listeners else None)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1, (
        f"ward check accepted two entries on one address ({case}), exit {out.returncode}:\n{text}{out.stdout}")
    found = problems_at(out, ward.config_path, entry_lines(text, pair[0]) | entry_lines(text, pair[1]))
    assert any("same address" in line or "already" in line for line in found), (
        f"no '{ward.config_path}:LINE: ...same address/already...' at {pair}; got:\n{out.stdout}{out.stderr}")
    code, output = run_refused(ward.config_path)
    assert code == 1, f"ward run with two entries on one address ({case}): exit {code}:\n{output}"
    if case == "two_outbound_entries":
        # Not the same address: the same port on another loopback address.
        second = entry_lines(text, "two")
        moved = "".join(line.replace("listen: 127.0.0.1:", "listen: 127.0.0.2:") if n in second else line
                        for n, line in enumerate(text.splitlines(keepends=True), 1))
        assert "listen: 127.0.0.2:" in moved
        with open(ward.config_path, "w") as f:
            f.write(moved)
        out = run_ward("check", "--config", ward.config_path)
        assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- finding 3: KeyUpdate floods

# About 2.7 MB of KeyUpdate(update_requested) records, sent at once: the build reviewed spent 4-5 s
# on them inside SSL_read (about 45 us a record on a 2-core test machine, debug or release), every
# other connection of the worker waiting. Generating them takes Python 3-4 s.
FLOOD_RECORDS = 100_000
PROBE_BUDGET = 1.0  # seconds: the slowest echo through another connection while the flood runs
FLOOD_WINDOW = 6.0  # seconds the probes go on after the flood starts (less once Ward closed it)
CLOSE_WITHIN = 5.0  # seconds from the flood's start to Ward's close line for it


def key_update_flood(keys, secret, count):
    """`count` KeyUpdate(update_requested) records, each sealed under the keys the one before retired."""
    records = []
    message = tlsfuzz.handshake(tlsfuzz.KEY_UPDATE, b"\x01")
    for _ in range(count):
        records.append(keys.seal(tlsfuzz.HANDSHAKE, message))
        keys, secret = keys.next_generation(secret)
    return b"".join(records)


class Flood:
    """Sends `blob` on `sock` from a thread while another thread reads (and drops) what Ward sends
    back, so Ward's answers never back up; `ended` is set when Ward closes or resets the connection."""

    def __init__(self, sock, blob):
        self.sock, self.blob = sock, blob
        self.ended = threading.Event()
        self.sent_error = None
        sock.settimeout(None)
        threading.Thread(target=self.drain, daemon=True).start()
        self.started, self.started_wall = time.monotonic(), time.time()
        threading.Thread(target=self.send, daemon=True).start()

    def drain(self):
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.ended.set()

    def send(self):
        try:
            self.sock.sendall(self.blob)
        except OSError as error:  # Ward closed the connection: the rest of the flood has nowhere to go
            self.sent_error = error


def probe_during(flood_start, probe):
    """Runs `probe` (one round trip through another connection of the same worker) once alone, then
    in a loop from just before the flood until Ward ended it (at least 2 s) or FLOOD_WINDOW passed;
    returns the flood and the loop's [(seconds, error or None)]."""
    before = probe()
    assert before[1] is None, f"the probe fails even before the flood: {before[1]}"
    results, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            results.append(probe())
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.2)
    flood = flood_start()
    deadline = flood.started + FLOOD_WINDOW
    while time.monotonic() < deadline:
        if flood.ended.is_set() and time.monotonic() > flood.started + 2.0:
            break
        time.sleep(0.05)
    stop.set()
    thread.join(15)
    return flood, results


def timed(action):
    started = time.monotonic()
    try:
        action()
        error = None
    except (OSError, AssertionError, ssl.SSLError) as e:
        error = repr(e)
    return time.monotonic() - started, error


def wait_close(ward, since, seconds, **fields):
    """The close line with `fields`, looked for (at least once) for up to `seconds`; None if none came."""
    deadline = time.monotonic() + seconds
    while True:
        for record in ward.lines(since):
            if record.get("event") == "close" and all(record.get(k) == v for k, v in fields.items()):
                return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def assert_fair(results, who):
    assert len(results) >= 3, f"only {len(results)} probes ran during the flood: {results}"
    worst, error = max(results)
    failed = [r for r in results if r[1] is not None]
    assert worst < PROBE_BUDGET and not failed, (
        f"while {who} flooded {FLOOD_RECORDS} KeyUpdate records, an echo through another connection of "
        f"the same worker took {worst:.2f} s (budget {PROBE_BUDGET} s; {len(results)} probes"
        + (f", failures: {failed[:3]}" if failed else "") + ")")


def assert_flood_closed(close, flood, who):
    assert close is not None, (
        f"Ward did not close the connection of {who} flooding KeyUpdate within {CLOSE_WITHIN} s "
        "(at most 64 post-handshake messages per 10 s)")
    closed_at = datetime.datetime.fromisoformat(close["ts"].replace("Z", "+00:00")).timestamp()
    assert closed_at - flood.started_wall < CLOSE_WITHIN, (
        f"Ward closed {who}'s KeyUpdate flood {closed_at - flood.started_wall:.1f} s after it began", close)
    assert close["close_cause"] == "error" and "post-handshake" in close.get("detail", ""), close


def established_client(certs, port):
    """tlsfuzz's client (SVID web, allowed) through a full TLS 1.3 handshake, holding its record keys."""
    session = tlsfuzz.Session(certs, port, "1.3")
    session.sock.connect(("127.0.0.1", port))
    try:
        session.tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    session.hello_record = session.outgoing.read()
    session.send("hello", session.hello_record)
    assert session.read_server_flight() is None, "Ward refused the web SVID"
    session.send_flight(session.client_flight(), tlsfuzz.Plan("established", "1.3"))
    return session


def test_keyupdate_flood_from_a_client_neither_stalls_the_worker_nor_goes_on(certs, tmp_path):
    # Review t13/t14/t15: an allowed client's KeyUpdate flood froze a 1-worker Ward for as long as it
    # lasted; 4 such clients froze a 2-worker Ward for ~48 s.
    upstream = harness.Upstream("hold")
    flood_port, probe_port = harness.free_port(), harness.free_port()
    text = harness.config(certs["dir"], [("flood", flood_port, upstream.port), ("probe", probe_port, upstream.port)])
    ward = harness.Ward(str(tmp_path), text.replace("workers: 2", "workers: 1"), ALLOW_WEB)
    session = None
    try:
        ward.start()
        mark = ward.mark()
        session = established_client(certs, flood_port)
        ward.wait_for(mark, event="allow", peer_addr=session.peer)
        blob = key_update_flood(session.keys, session.app_secret, FLOOD_RECORDS)
        ctx = context(certs, "web")

        def probe():
            def once():
                with socket.create_connection(("127.0.0.1", probe_port), timeout=10) as raw:
                    with ctx.wrap_socket(raw) as tls:
                        tls.sendall(b"p")
                        assert tls.recv(1) == b"p", "no echo"
            return timed(once)

        flood, results = probe_during(lambda: Flood(session.sock, blob), probe)
        close = wait_close(ward, mark, max(0.0, flood.started + CLOSE_WITHIN - time.monotonic()),
                           listener="flood", peer_addr=session.peer)
        assert_fair(results, "an allowed client")
        assert_flood_closed(close, flood, "an allowed client")
    finally:
        if session is not None:
            session.sock.close()
        ward.stop()
        upstream.close()


class FloodingServer:
    """A TLS 1.3 server with a matching SVID (Python's ssl over memory BIOs, no tickets, a key log):
    it completes the handshake with Ward and keeps the connection, with its record keys, for the test."""

    def __init__(self, cert, ca, folder):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.cert_path, cert.key_path)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(ca)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.num_tickets = 0  # nothing under the application keys before the flood
        self.keylog = os.path.join(folder, "flood-server.keylog")
        self.ctx.keylog_filename = self.keylog
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.ready = threading.Event()
        self.conn = self.keys = self.secret = self.error = None
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
            hello = b""
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        conn.sendall(outgoing.read())
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise EOFError("Ward closed during the handshake")
                    if len(hello) < 43:
                        hello += chunk
                    incoming.write(chunk)
            assert not outgoing.pending, "the server wrote records after its handshake"
            client_random = hello[11:43].hex()
            with open(self.keylog) as f:
                secrets = {label: bytes.fromhex(secret) for label, rnd, secret in
                           (line.split() for line in f if line.count(" ") == 2) if rnd == client_random}
            self.secret = secrets["SERVER_TRAFFIC_SECRET_0"]
            self.keys = tlsfuzz.Keys.tls13_from(tls.cipher()[0], self.secret)
            self.conn = conn
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = repr(error)
        self.ready.set()

    def close(self):
        self.sock.close()
        if self.conn:
            self.conn.close()


def test_keyupdate_flood_from_a_target_server_neither_stalls_the_worker_nor_goes_on(certs, tmp_path):
    # Review t04: a server whose SVID matches server_id floods KeyUpdate after the handshake; the
    # build reviewed stalled the whole worker ~5 s per such connection.
    with contextlib.ExitStack() as stack:
        flooder = FloodingServer(certs["ward"], certs["example_ca"], str(tmp_path))
        stack.callback(flooder.close)
        echo = TLSServer(certs["ward"], certs["example_ca"], mode="hold")
        stack.callback(echo.close)
        storm, probe_entry = entry("storm", flooder.port, [ORDERS]), entry("echo", echo.port, [ORDERS])
        a = ward_a(str(tmp_path / "a"), certs["dir"], [storm, probe_entry], workers=1)
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        app = socket.create_connection(("127.0.0.1", storm["listen"]), timeout=10,
                                       source_address=("127.0.0.1", 0))
        stack.callback(app.close)
        app_address = f"127.0.0.1:{app.getsockname()[1]}"
        app.sendall(b"x\n")
        assert flooder.ready.wait(harness.DEADLINE), "Ward never completed a handshake with the flooding server"
        assert flooder.error is None, flooder.error
        a.wait_for(mark, event="allow", app_addr=app_address)
        blob = key_update_flood(flooder.keys, flooder.secret, FLOOD_RECORDS)

        def probe():
            def once():
                with socket.create_connection(("127.0.0.1", probe_entry["listen"]), timeout=10) as sock:
                    sock.sendall(b"p")
                    assert sock.recv(1) == b"p", "no echo"
            return timed(once)

        flood, results = probe_during(lambda: Flood(flooder.conn, blob), probe)
        close = wait_close(a, mark, max(0.0, flood.started + CLOSE_WITHIN - time.monotonic()),
                           listener="storm", app_addr=app_address)
        assert_fair(results, "a target server")
        assert_flood_closed(close, flood, "a target server")
        assert close["direction"] == "outbound"


# ---------------------------------------------------------------- finding 4: DNS changes on an operator reload


def private_hosts(hosts, resolv=None):
    """A command-line wrapper that runs Ward with `hosts` bind-mounted over /etc/hosts (and
    `resolv` over /etc/resolv.conf: a name missing from `hosts` then fails at once instead of
    waiting on DNS); skips the test where a private mount namespace cannot be made."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare for a private /etc/hosts")
    mounts = f"mount --bind '{hosts}' /etc/hosts" + (f" && mount --bind '{resolv}' /etc/resolv.conf" if resolv else "")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mounts],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount a private /etc/hosts: {probe.stderr.strip()}")
    return lambda args: ["unshare", "-m", "--propagation", "private", "sh", "-c",
                         f"{mounts} && exec " + " ".join(f"'{a}'" for a in args)]


def rewrite_in_place(path, text):
    with open(path, "r+") as f:  # in place: a bind mount follows the inode
        f.seek(0)
        f.write(text)
        f.truncate()


def ward_behind_a_name(stack, certs, tmp_path, wrap, addresses):
    """Ward A (run through `wrap`) with one entry `dns` whose target is wardtarget:PORT, and a
    TLSServer on PORT at each of `addresses`, answering server-A, server-B, ... in turn."""
    servers = []
    for index, ip in enumerate(addresses):
        port = servers[0].port if servers else 0
        servers.append(TLSServer(certs["ward"], certs["example_ca"], host=ip, port=port,
                                 reply=f"server-{'AB'[index]}\n".encode()))
        stack.callback(servers[-1].close)
    out_entry = entry("dns", f"wardtarget:{servers[0].port}", [ORDERS])
    a = ward_a(str(tmp_path / "a"), certs["dir"], [out_entry])
    stack.callback(a.stop)
    a.start(wrap=wrap)
    return a, out_entry, servers[0]


@pytest.mark.parametrize("trigger", ["ward_reload", "sighup"])
def test_reload_follows_a_target_name_that_moved(certs, tmp_path, trigger):
    # Review t06: docs/outbound.md says a DNS change reaches Ward with the next reload; without a
    # changed file the reload was a no-op and new connections kept going to the old address.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 wardtarget\n")
    with contextlib.ExitStack() as stack:
        a, out_entry, old = ward_behind_a_name(stack, certs, tmp_path, private_hosts(hosts), ["127.0.0.2", "127.0.0.3"])
        mark = a.mark()
        before = app_exchange(out_entry["listen"], b"hi\n")
        assert before.data == b"server-A\n", before
        assert a.wait_for(mark, event="allow", app_addr=before.addr)["peer_addr"] == f"127.0.0.2:{old.port}"

        rewrite_in_place(hosts, "127.0.0.1 localhost\n127.0.0.3 wardtarget\n")
        mark = a.mark()
        if trigger == "ward_reload":
            reload(a)
        else:
            a.process.send_signal(signal.SIGHUP)
        line = a.wait_for(mark, event="reload")
        after = app_exchange(out_entry["listen"], b"hi\n")
        allow = a.wait_for(mark, event="allow", app_addr=after.addr)
        assert after.data == b"server-B\n" and allow["peer_addr"] == f"127.0.0.3:{old.port}", (
            f"after the name moved and a reload ({trigger}), a new connection went to {allow['peer_addr']} "
            f"({after.data!r}); reload line: {line}")
        assert line["ok"] is True and line["changed"] is True, line

        # Nothing moved since: a reload asked for again is still a no-op.
        mark = a.mark()
        reload(a)
        again = a.wait_for(mark, event="reload")
        assert again["ok"] is True and again["changed"] is False and again["generation"] == line["generation"], again



def test_a_name_whose_answers_still_hold_the_address_in_use_has_not_moved(certs, tmp_path):
    """Second review: with a name that resolves to several addresses (round-robin DNS), every
    SIGHUP published a generation and re-checked every connection, though nothing had moved.
    The address in use is kept as long as the name still resolves to it."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 wardtarget\n")
    with contextlib.ExitStack() as stack:
        a, out_entry, old = ward_behind_a_name(stack, certs, tmp_path, private_hosts(hosts), ["127.0.0.2", "127.0.0.3"])
        # Another address answers first now; the one in use is still among the answers.
        rewrite_in_place(hosts, "127.0.0.1 localhost\n127.0.0.3 wardtarget\n127.0.0.2 wardtarget\n")
        mark = a.mark()
        a.process.send_signal(signal.SIGHUP)
        line = a.wait_for(mark, event="reload")
        assert line["ok"] is True and line["changed"] is False and line["generation"] == 1, line
        after = app_exchange(out_entry["listen"], b"hi\n")
        assert after.data == b"server-A\n", after


def test_a_name_that_does_not_resolve_keeps_its_address_and_lets_the_reload_through(certs, tmp_path):
    """Second review: a reload (a new SVID, say) while the target's name did not resolve failed,
    and nothing retried it. The name keeps its last address, with a warning, and the rest of the
    reload applies."""
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 wardtarget\n")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    with contextlib.ExitStack() as stack:
        a, out_entry, _ = ward_behind_a_name(stack, certs, tmp_path, private_hosts(hosts, resolv), ["127.0.0.2"])
        rewrite_in_place(hosts, "127.0.0.1 localhost\n")  # the name is gone
        with open(a.config_path, "a") as f:
            f.write("idle_timeout: 2h\n")  # a change the reload must apply
        mark = a.mark()
        reload(a)
        line = a.wait_for(mark, event="reload")
        assert line["ok"] is True and line["generation"] == 2, line
        stderr = open(a.stderr_path).read()
        assert "keeping 127.0.0.2:" in stderr and "wardtarget" in stderr, stderr
        after = app_exchange(out_entry["listen"], b"hi\n")
        assert after.data == b"server-A\n", after

# ---------------------------------------------------------------- finding 5: a server certificate over max_cert_size


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_server_certificate_over_max_cert_size_is_cert_too_large(certs, tmp_path, version):
    # Review t11: the inbound side names it cert_too_large; the outbound side said handshake_too_large.
    with contextlib.ExitStack() as stack:
        server = TLSServer(certs["huge_cert"], certs["example_ca"])  # ~100 KB leaf, ID web
        server.ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
        stack.callback(server.close)
        out_entry = entry("huge", server.port, [WEB])
        a = ward_a(str(tmp_path), certs["dir"], [out_entry])
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        out = app_exchange(out_entry["listen"], b"secret\n")
        assert out.data == b"", out
        record = a.wait_for(mark, event="handshake_error", app_addr=out.addr)
        assert record["reason"] == "cert_too_large", record
        assert record["direction"] == "outbound" and record["listener"] == "huge"


# ---------------------------------------------------------------- finding 6: the outbound listener_full line


def test_outbound_listener_full_line_names_the_target_and_the_entry(certs, tmp_path):
    # Review t05: every outbound line carries peer_addr (the target) and rule (the entry) but this one.
    with contextlib.ExitStack() as stack:
        silent = silent_target()  # Ward's handshakes to it stay open: each holds a connection slot
        stack.callback(silent.close)
        target = silent.getsockname()[1]
        out_entry = entry("silent", target, [ORDERS])
        a = ward_a(str(tmp_path), certs["dir"], [out_entry], "max_connections: 2\nhandshake_timeout: 10s\n",
                   workers=1)
        stack.callback(a.stop)
        a.start()
        mark = a.mark()
        held = []
        for _ in range(4):
            sock = socket.socket()
            stack.callback(sock.close)
            sock.settimeout(10)
            sock.bind(("127.0.0.1", 0))  # the address is known even if the connect is reset
            held.append(f"127.0.0.1:{sock.getsockname()[1]}")
            # A refused one may be reset before connect() returns (Ward resets at accept).
            with contextlib.suppress(ConnectionResetError):
                sock.connect(("127.0.0.1", out_entry["listen"]))
            time.sleep(0.1)
        record = a.wait_for(mark, event="handshake_error", reason="listener_full")
        assert record["app_addr"] in held[2:], (record, held)
        assert record["direction"] == "outbound" and record["listener"] == "silent"
        assert record.get("peer_addr") == f"127.0.0.1:{target}", record
        assert record.get("rule") == "silent", record


def test_outbound_refusals_do_not_use_up_the_inbound_lines_of_the_same_address(certs, tmp_path):
    """handshake_error lines are limited per source and per direction: 30 refused servers at
    127.0.0.1 (past the 20 lines a source gets per second) must not silence the next client
    calling from 127.0.0.1. Before the fix both counted against one budget for 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        impostor = TLSServer(certs["batch"], certs["example_ca"])  # a valid SVID, not ORDERS
        stack.callback(impostor.close)
        listen = harness.free_port()
        out = entry("out", impostor.port, [ORDERS])
        ward = ward_a(str(tmp_path), certs["dir"], [out], listeners=[("in", listen, 1)],
                      rules_text="default: deny\nrules: []\n", workers=1)
        stack.callback(ward.stop)
        ward.start()
        mark = ward.mark()
        for _ in range(30):
            app_exchange(out["listen"], b"x\n")
        refused = [r for r in ward.lines(mark) if r.get("event") == "handshake_error"
                   and r.get("direction") == "outbound"]
        assert 0 < len(refused) <= 20, f"{len(refused)} outbound lines: the per-source limit should apply"
        # A client without a certificate, from the same address, within the same second.
        plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        plain.check_hostname, plain.verify_mode = False, ssl.CERT_NONE
        sock = socket.create_connection(("127.0.0.1", listen), timeout=10)
        source = f"127.0.0.1:{sock.getsockname()[1]}"
        with contextlib.suppress(ssl.SSLError, OSError):
            with plain.wrap_socket(sock) as tls:
                tls.recv(1)
        sock.close()
        line = ward.wait_for(mark, event="handshake_error", peer_addr=source)
        assert line["direction"] == "inbound" and line["reason"] == "no_client_cert", line
        summary = ward.wait_for(mark, event="handshake_error_suppressed")
        assert summary["direction"] == "outbound", summary


def test_ward_takes_the_hard_descriptor_limit_and_warns_when_it_is_short(certs, tmp_path):
    """Started with a soft open-file limit of 256, Ward runs with the hard limit; when
    max_connections on its listeners and entries could need more descriptors than that, it says
    so at start."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip("the hard open-file limit is too low to tell raised from not")
    out = entry("out", 9, [ORDERS])
    ward = ward_a(str(tmp_path), certs["dir"], [out], f"max_connections: {hard}\n", workers=1)
    ward.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    try:
        limits = open(f"/proc/{ward.process.pid}/limits").read()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3] == str(hard), row
        stderr = open(ward.stderr_path).read()
        assert "open-file limit" in stderr and "max_connections" in stderr, stderr
    finally:
        ward.stop()


def test_explain_names_an_outbound_entry_as_such(certs, tmp_path):
    """`ward explain --to ENTRY` says that no rule decides an outbound entry and which server IDs
    it accepts, instead of calling it an unknown listener."""
    out = entry("orders-api", 9, [ORDERS])
    ward = ward_a(str(tmp_path), certs["dir"], [out])
    result = run_ward("explain", "--config", ward.config_path, "--from", ORDERS, "--to", "orders-api")
    assert result.returncode == 1, result
    said = result.stdout + result.stderr
    assert "outbound entry" in said and ORDERS in said, said
