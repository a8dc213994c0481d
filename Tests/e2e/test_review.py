"""The hostile review of 2026-11-30, end to end: one test (or a few) per finding, written against the
interface of its fix. Finding 9 (`when.hours` is not re-checked on open connections) is documented,
not tested."""
import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

import harness
import pki
from clients import context, exchange
from test_safety import (ALLOW_JOB, ALLOW_WEB, WEB, Admin, open_stream, prepare, run_bounded, run_ward, stop_within,
                         tcp_admin_option, wait_records, warning_lines, write_atomically)

ORDERS = "spiffe://example.org/ns/prod/sa/orders"
BATCH = "spiffe://example.org/ns/dev/sa/batch"
CHAIN5 = "log_chain: true\nlog_checkpoint_lines: 5\nlog_checkpoint_interval: 1h\n"


# ---------------------------------------------------------------- helpers


def wait_count(ward, predicate, count, since=0, seconds=harness.DEADLINE):
    """Log records after `since` matching `predicate`, once there are `count` (fails at the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [r for r in ward.lines(since) if predicate(r)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} expected log records; saw {ward.lines(since)}"
        time.sleep(0.02)


def event(name, **fields):
    return lambda r: r.get("event") == name and all(r.get(k) == v for k, v in fields.items())


def verify(*paths, bundle=None, require_close=False, signer=None):
    args = [harness.WARD, "audit", "verify", *paths]
    if bundle:
        args += ["--bundle", bundle]
    if require_close:
        args.append("--require-close")
    if signer:
        args += ["--signer", signer]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def said(out):
    return f"exit {out.returncode}: {out.stdout}{out.stderr}"


def raw_lines(path):
    with open(path, "rb") as f:
        return f.read().splitlines()


def is_checkpoint(line):
    return json.loads(line)["event"] == "checkpoint"


def sha(line):
    return hashlib.sha256(line).hexdigest()


def without_prev(line):
    """A chained line without the `"prev"` Ward appends last."""
    return line[:line.rindex(b',"prev":"')] + b"}"


def rechain(bodies, prev):
    """Lines without prev, chained from `prev` as Ward chains them."""
    out = []
    for body in bodies:
        line = body[:-1] + b',"prev":"' + prev.encode() + b'"}'
        out.append(line)
        prev = sha(line)
    return out


def unsealed_tail(lines):
    """Lines after the last checkpoint."""
    last = max(i for i, line in enumerate(lines) if is_checkpoint(line))
    return len(lines) - 1 - last


def runs_between_checkpoints(lines):
    """Lengths of the runs of non-checkpoint lines between checkpoints, and after the last."""
    runs, run = [], 0
    for line in lines:
        if is_checkpoint(line):
            runs.append(run)
            run = 0
        else:
            run += 1
    return runs + [run]


def metric_sum(text, name):
    """Sum of every sample of `name` in Prometheus text; None when there is none."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else None


def ts(moment):
    """Ward's `ts` format."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


# Failed handshakes from a new 127/8 source address each time (per-source limits never apply): plain
# text, then a reset. Runs for argv[3] seconds or until killed; prints how many it made.
FLOOD = r"""
import socket, struct, sys, time
port, base, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)
n, deadline = 0, time.monotonic() + seconds
print("ready", flush=True)
while time.monotonic() < deadline:
    i = base + n
    n += 1
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.bind((f"127.{64 | (i >> 16) & 63}.{(i >> 8) & 255}.{(i & 255) or 1}", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.close()
    except OSError:
        pass
print(n, flush=True)
"""


def start_flood(port, seconds, base=0):
    process = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), str(base), str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def end(process):
    if process.poll() is None:
        process.kill()
    process.wait()


# ---------------------------------------------------------------- finding 1: SIGTERM with an admin connection open


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sigterm_with_an_idle_admin_connection_exits_cleanly(certs, tmp_path, kind):
    port, option = tcp_admin_option() if kind == "tcp" else (None, None)
    ward, _, upstream = prepare(certs, tmp_path, admin=option)
    ward.start()
    admin = Admin(ward, port)
    socket_path = os.path.join(ward.folder, "admin.sock")
    idle = None
    try:
        idle = admin.connect()
        # Ward accepts in order: once a later request is answered, the idle connection is Ward's too.
        assert admin.request("GET", "/healthz")[0] == 200
        ward.process.send_signal(signal.SIGTERM)
        try:
            code = ward.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = "still running 10 s after SIGTERM"
        fatal = [line for line in open(ward.stderr_path).read().splitlines() if "Fatal" in line]
        assert code == 0, f"SIGTERM with one idle {kind} admin connection: exit {code} {fatal[:1]}"
        if kind == "unix":
            assert not os.path.exists(socket_path), "the admin socket file was left behind"
    finally:
        if idle:
            idle.close()
        stop_within(ward, 1)
        upstream.close()


# ---------------------------------------------------------------- finding 2: a restart must not seal a tampered log


def traffic_with_denies(ward, listen, certs, rounds=4):
    """`rounds` times an allowed web connection and a denied batch one; waits for their 12 lines."""
    since = ward.mark()
    for _ in range(rounds):
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        assert exchange(listen, context(certs, "batch"), b"hi\n").data == b""
    wait_count(ward, lambda r: r.get("event") in ("allow", "close", "deny"), 3 * rounds, since)


def rotate(ward):
    os.rename(ward.log_path, ward.log_path + ".1")
    ward.process.send_signal(signal.SIGUSR1)
    wait_count(ward, event("checkpoint", kind="genesis"), 1)
    return ward.log_path + ".1"


def sealed_deny_made_allow(lines):
    """The attack: the first (sealed) deny becomes an allow; every checkpoint after it is removed and the
    chain recomputed from there. Returns the tampered lines and how many follow its last checkpoint."""
    deny = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "deny")
    assert any(is_checkpoint(line) for line in lines[deny:]), "the deny is not sealed: nothing to attack"
    cut = max(i for i in range(deny) if is_checkpoint(lines[i]))
    bodies = []
    for i in range(cut + 1, len(lines)):
        if is_checkpoint(lines[i]):
            continue
        body = without_prev(lines[i])
        if i == deny:
            record = json.loads(body)
            record.update(event="allow", rule="web")
            record.pop("reason", None)
            record.pop("enforced", None)
            body = json.dumps(record, separators=(",", ":")).encode()
        bodies.append(body)
    return lines[:cut + 1] + rechain(bodies, sha(lines[cut])), len(bodies)


def test_restart_does_not_seal_a_tampered_log(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, extra=CHAIN5, upstream_mode="echo-line")
    try:
        ward.start()
        traffic_with_denies(ward, listen, certs)
        old = rotate(ward)
        traffic_with_denies(ward, listen, certs)
        assert ward.stop() == 0
        new = ward.log_path
        out = verify(old, new, bundle=certs["example_ca"], require_close=True)
        assert out.returncode == 0, f"the untouched logs must verify: {said(out)}"
        tampered, unsealed = sealed_deny_made_allow(raw_lines(new))
        assert unsealed > 5, f"the attack leaves only {unsealed} lines after the last checkpoint"
        with open(new, "wb") as f:
            f.write(b"\n".join(tampered) + b"\n")
        # Ward restarts on the tampered file and writes its start checkpoint over it.
        since = ward.mark()
        ward.start()
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        wait_count(ward, event("close"), 1, since)
        start = wait_count(ward, event("checkpoint", kind="start"), 1, since)[0]
        assert ward.stop() == 0
    finally:
        stop_within(ward)
        upstream.close()
    out = verify(old, new, bundle=certs["example_ca"], require_close=True)
    assert out.returncode == 1, f"a sealed deny rewritten as allow verifies after a restart: {said(out)}"
    assert start.get("unsealed_before") == unsealed, f"start checkpoint after {unsealed} unsealed lines: {start}"


def test_stripped_checkpoints_are_detected_without_a_restart(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, extra=CHAIN5, upstream_mode="echo-line")
    ward.start()
    try:
        traffic_with_denies(ward, listen, certs)
    finally:
        stop_within(ward)
        upstream.close()
    out = verify(ward.log_path)
    assert out.returncode == 0, f"the untouched log must verify: {said(out)}"
    tampered, unsealed = sealed_deny_made_allow(raw_lines(ward.log_path))
    assert unsealed > 5
    path = str(tmp_path / "tampered.log")
    with open(path, "wb") as f:
        f.write(b"\n".join(tampered) + b"\n")
    out = verify(path)
    # log_checkpoint_lines is 5: a run of more lines than that means a checkpoint was removed.
    assert out.returncode == 1 and "checkpoint" in out.stdout + out.stderr, \
        f"{unsealed} lines after the last checkpoint with checkpoints every 5 lines: {said(out)}"


def test_restart_after_a_kill_says_which_lines_it_did_not_seal(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, extra=CHAIN5, upstream_mode="echo-line")
    ward.start()
    try:
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        wait_count(ward, event("close"), 1)
        ward.process.kill()  # no close checkpoint: the last lines stay unsealed
        ward.process.wait()
        unsealed = unsealed_tail(raw_lines(ward.log_path))
        assert 0 < unsealed <= 5, unsealed
        since = ward.mark()
        ward.start()
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        wait_count(ward, event("close"), 1, since)
        start = wait_count(ward, event("checkpoint", kind="start"), 1, since)[0]
        assert ward.stop() == 0
    finally:
        stop_within(ward)
        upstream.close()
    assert start.get("unsealed_before") == unsealed, f"start checkpoint after {unsealed} unsealed lines: {start}"
    out = verify(ward.log_path, bundle=certs["example_ca"])
    assert "not sealed" in out.stdout, f"verify does not report the {unsealed} lines Ward did not seal: {said(out)}"
    out = verify(ward.log_path, bundle=certs["example_ca"], require_close=True)
    assert out.returncode == 1, f"--require-close accepts lines left unsealed at a restart: {said(out)}"


# ---------------------------------------------------------------- finding 3: checkpoint times and --signer


@pytest.fixture(scope="module")
def web_signed_log(certs, tmp_path_factory):
    """A genuine chained log written by a Ward running as the web workload (another SVID than orders)."""
    folder = tmp_path_factory.mktemp("web-signed")
    ward, listen, upstream = prepare(certs, folder, extra="log_chain: true\n", upstream_mode="echo-line")
    text = open(ward.config_path).read().replace("/ward.pem", "/web.pem").replace("/ward.key", "/web.key")
    with open(ward.config_path, "w") as f:
        f.write(text)
    try:
        ward.start()
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        wait_count(ward, event("close"), 1)
    finally:
        stop_within(ward)
        upstream.close()
    return ward.log_path


def seal_input(version, record, prev):
    """The bytes a checkpoint's signature covers: layout 1 (kind, ts, prev) or 2 (with seq, every,
    interval_ms, unsealed_before)."""
    if version == 1:
        return f"ward-log-checkpoint/1\n{record['kind']}\n{record['ts']}\n{prev}\n".encode()
    return (f"ward-log-checkpoint/2\n{record['kind']}\n{record['ts']}\n{record['seq']}\n{record['every']}\n"
            f"{record['interval_ms']}\n{record.get('unsealed_before', 0)}\n{prev}\n").encode()


def sign(key, data):
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def seal_layout(genuine_log):
    """Which layout Ward's own checkpoints are signed in, with the fields they carry beyond layout 1."""
    record = json.loads(raw_lines(genuine_log)[0])
    public = x509.load_der_x509_certificate(base64.b64decode(record["certs"][0])).public_key()
    for version in (2, 1):
        if version == 2 and not all(k in record for k in ("seq", "every", "interval_ms")):
            continue
        try:
            data, signature = seal_input(version, record, record["prev"]), base64.b64decode(record["sig"])
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        extra = {k: record[k] for k in ("every", "interval_ms") if k in record}
        return version, record.get("seq"), extra
    raise AssertionError(f"Ward's checkpoint signature covers bytes seal_input cannot rebuild: {record}")


def forge(path, items, signer, layout):
    """A chained log from 64 zeros: `items` are records (dicts) or ("checkpoint", kind, moment), the
    checkpoints signed with `signer`'s key in Ward's layout; what whoever holds that key can write."""
    version, seq, extra = layout
    chain = [signer.cert.public_bytes(serialization.Encoding.DER)]
    prev, lines = "0" * 64, []
    for item in items:
        if isinstance(item, tuple):
            _, kind, moment = item
            record = {"ts": ts(moment), "event": "checkpoint", "kind": kind}
            if seq is not None:
                record["seq"] = seq
                seq += 1
            record.update(extra)
            record.update(signer=ORDERS, certs=[base64.b64encode(d).decode() for d in chain])
            record["sig"] = base64.b64encode(sign(signer.key, seal_input(version, record, prev))).decode()
        else:
            record = item
        line = json.dumps({**record, "prev": prev}, separators=(",", ":")).encode()
        lines.append(line)
        prev = sha(line)
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("case", ["backdated_old_key", "line_after_its_seal", "checkpoint_times_backwards"])
def test_verify_refuses_checkpoint_times_that_do_not_add_up(tmp_path, web_signed_log, case):
    layout = seal_layout(web_signed_log)
    now = datetime.datetime.now(datetime.timezone.utc)
    root = pki.write(pki.ca("example.org root (old)", not_before=now - datetime.timedelta(days=30)),
                     str(tmp_path), "bundle")
    current = pki.leaf(root, [ORDERS], not_before=now - datetime.timedelta(hours=3),
                       lifetime=datetime.timedelta(hours=4))
    # An SVID that expired ten days ago: its key is no secret any more (old disks, backups).
    old = pki.leaf(root, [ORDERS], not_before=now - datetime.timedelta(days=10), lifetime=datetime.timedelta(hours=1))
    then = now - datetime.timedelta(days=10) + datetime.timedelta(minutes=10)
    second = datetime.timedelta(seconds=1)

    def allow(moment):
        return {"ts": ts(moment), "event": "allow", "conn": 1, "listener": "svc", "peer_addr": "127.0.0.1:5555",
                "peer_id": BATCH, "trust_domain": "example.org", "rule": "web"}

    control = forge(str(tmp_path / "control.log"), [("checkpoint", "genesis", now - 2 * second), allow(now - second),
                                                    ("checkpoint", "close", now)], current, layout)
    out = verify(control, bundle=root.cert_path, require_close=True)
    assert out.returncode == 0, f"a consistent log signed the way Ward signs must verify: {said(out)}"
    forged = {
        # Checkpoints dated when the old key was valid, sealing a line of today.
        "backdated_old_key": ([("checkpoint", "genesis", then), allow(now), ("checkpoint", "close", then + second)],
                              old),
        "line_after_its_seal": ([("checkpoint", "genesis", now - 10 * second), allow(now),
                                 ("checkpoint", "close", now - 5 * second)], current),
        "checkpoint_times_backwards": ([("checkpoint", "genesis", now), allow(now - 7200 * second),
                                        ("checkpoint", "close", now - 3600 * second)], current),
    }
    items, key = forged[case]
    out = verify(forge(str(tmp_path / f"{case}.log"), items, key, layout), bundle=root.cert_path, require_close=True)
    assert out.returncode == 1, f"{case}: {said(out)}"


def test_verify_signer_option(certs, web_signed_log):
    out = verify(web_signed_log, bundle=certs["example_ca"], signer=WEB)
    assert out.returncode == 0, f"--signer naming the log's own signer: {said(out)}"
    out = verify(web_signed_log, bundle=certs["example_ca"], signer=ORDERS)
    assert out.returncode == 1, f"a log signed by {WEB} passes --signer {ORDERS}: {said(out)}"


# ---------------------------------------------------------------- finding 4: rotating sources, slow log readers


@pytest.fixture(scope="module")
def rotating_flood(certs, tmp_path_factory):
    """Ward (2 workers) logging to a pipe read at ~8 KiB/s, flooded with failed handshakes from rotating
    127/8 sources for 20 s, or until Ward drops log lines (its queue is full); then 20 legitimate
    connections. Returns the log lines (bytes), the flood's time span, those connections' local ports
    and the failures Ward counted."""
    folder = tmp_path_factory.mktemp("rotating-flood")
    ward, listen, upstream = prepare(certs, folder, upstream_mode="echo-line")
    text = open(ward.config_path).read().replace("log: connections.log", 'log: "-"')
    with open(ward.config_path, "w") as f:
        f.write(text)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 65536)  # F_SETPIPE_SZ
    write_open, got, slow = True, bytearray(), threading.Event()
    slow.set()

    def reader():  # a log shipper keeping up with about 8 KiB/s, until told to drain
        while chunk := os.read(read_end, 800 if slow.is_set() else 1 << 20):
            got.extend(chunk)
            if slow.is_set():
                time.sleep(0.1)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    flood = None
    try:
        ward.start(stdout=write_end)
        os.close(write_end)
        write_open = False
        admin = Admin(ward)
        flood = start_flood(listen, 60)
        began = time.time()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            metrics = admin.request("GET", "/metrics")[1]
            if metric_sum(metrics, "ward_log_dropped_total"):
                break
            time.sleep(0.5)
        failures = metric_sum(metrics, "ward_handshake_errors_total")
        ended = time.time()
        end(flood)
        ports = []
        for _ in range(20):
            out = exchange(listen, context(certs, "web"), b"hi\n")
            assert out.data == b"echo: hi\n", out.error
            ports.append(out.local_port)
        slow.clear()
        assert ward.stop() == 0
    finally:
        if flood:
            end(flood)
        slow.clear()
        stop_within(ward)
        upstream.close()
        if write_open:
            os.close(write_end)
    thread.join(timeout=30)
    os.close(read_end)
    return bytes(got).splitlines(), (began, ended), ports, failures


def test_rotating_sources_are_capped_per_worker_overall(rotating_flood):
    lines, (began, ended), _, failures = rotating_flood
    # Steady state: from a second after the flood began to its end.
    start, stop = began + 1, ended
    assert stop - start >= 5, f"the flood lasted {ended - began:.1f} s"
    inside = []
    for line in lines:
        record = json.loads(line)
        moment = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
        if start <= moment < stop:
            inside.append((record, len(line) + 1))
    rate = sum(size for _, size in inside) / (stop - start)
    errors = sum(1 for record, _ in inside if record["event"] == "handshake_error")
    # About 170 bytes a line: 2 workers x 200 lines a second is ~66 KiB/s.
    assert rate < 100 * 1024, \
        f"the log grew {rate / 1024:.0f} KiB/s under a flood from rotating sources ({failures:.0f} failures)"
    # 2 workers x 200 lines a second, over every window the span touches.
    assert errors <= 2 * 200 * (stop - start + 2), \
        f"{errors} handshake_error lines in {stop - start:.1f} s from {failures:.0f} failures (cap: 200/s/worker)"
    shared = [record for record, _ in inside if record["event"] == "handshake_error_suppressed"
              and record.get("peer_ip") == "*"]
    assert sum(r["suppressed"] for r in shared) > 0, "no handshake_error_suppressed line with peer_ip \"*\""


def test_allow_and_close_lines_survive_a_flood_and_a_slow_log_reader(rotating_flood):
    lines, _, ports, _ = rotating_flood
    records = [json.loads(line) for line in lines]
    for name in ("allow", "close"):
        seen = {r.get("peer_addr") for r in records if r["event"] == name}
        missing = [p for p in ports if f"127.0.0.1:{p}" not in seen]
        dropped = [r for r in records if r["event"] == "log_dropped"]
        assert not missing, f"{len(missing)} of {len(ports)} {name} lines missing; {dropped[:1]}"


# ---------------------------------------------------------------- finding 5: admin listener out of descriptors


def test_admin_listener_out_of_descriptors_does_not_spin(certs, tmp_path):
    port, option = tcp_admin_option()
    ward, listen, upstream = prepare(certs, tmp_path, admin=option, workers=1)
    ward.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
    held = []
    try:
        # Connections that never say anything hold Ward's descriptors until handshake_timeout (10 s).
        for _ in range(60):
            held.append(socket.create_connection(("127.0.0.1", listen), timeout=5))
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{ward.process.pid}/fd")) < 48:
            assert time.monotonic() < deadline, "Ward never ran out of descriptors"
            time.sleep(0.02)
        cpu, stderr = cpu_ticks(ward.process.pid), os.path.getsize(ward.stderr_path)
        held += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        time.sleep(3)  # the measurement window
        cpu, stderr = cpu_ticks(ward.process.pid) - cpu, os.path.getsize(ward.stderr_path) - stderr
        assert stderr < 100 * 1024, f"stderr grew {stderr} bytes in 3 s while admin accepts failed"
        assert cpu < 100, f"{cpu} CPU ticks in 3 s while admin accepts failed: the control thread spins"
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while (status := Admin(ward, port).request("GET", "/healthz", timeout=2)[0]) != 200:
            assert time.monotonic() < deadline, f"no /healthz after descriptors freed up: {status}"
            time.sleep(0.1)
    finally:
        for s in held:
            s.close()
        stop_within(ward)
        upstream.close()


# ---------------------------------------------------------------- finding 6: admin connection cap


# Holds 70 idle admin connections and opens another whenever Ward closes one. Runs until killed.
HOLDER = r"""
import select, socket, sys
port, socks = int(sys.argv[1]), []
def fill():
    while len(socks) < 70:
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            return
fill()
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [], 0.05)[0]:
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:
            socks.remove(s)
            s.close()
    fill()
"""


def test_idle_admin_clients_cannot_lock_out_a_probe(certs, tmp_path):
    port, option = tcp_admin_option()
    with contextlib.ExitStack() as stack:
        ward, _, upstream = prepare(certs, tmp_path, admin=option)
        stack.callback(upstream.close)
        ward.start()
        stack.callback(stop_within, ward)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True)
        stack.callback(end, holder)
        assert holder.stdout.readline().strip() == "ready"
        admin, statuses = Admin(ward, port), []
        for _ in range(50):  # ~25 s: more than two of the 10 s connection deadlines
            began = time.monotonic()
            try:
                status, _ = admin.request("GET", "/healthz", timeout=3)
            except OSError as error:
                status = repr(error)
            statuses.append(status)
            if sum(s != 200 for s in statuses) > 5:
                break  # 45 of 50 are out of reach
            time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))
        ok = statuses.count(200)
        assert ok >= 45, f"/healthz answered {ok} of {len(statuses)} tries while 70 idle clients kept reconnecting: " \
            f"{statuses}"


# ---------------------------------------------------------------- finding 7: admin naming a regular file


def test_admin_path_naming_a_regular_file_is_refused_and_kept(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    path = os.path.join(ward.folder, "admin.sock")
    precious = "precious: not a socket\n"
    with open(path, "w") as f:
        f.write(precious)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 1 and "not a socket" in out.stdout + out.stderr, said(out)
    try:
        ward.start()
        started = True
    except AssertionError:
        started = False
    finally:
        stop_within(ward)
    text = open(ward.stderr_path).read()
    assert not started, f"ward run replaced {path} with its socket and started"
    assert ward.process.returncode == 1 and "not a socket" in text, text
    assert os.path.isfile(path) and open(path).read() == precious


# ---------------------------------------------------------------- finding 8: an intermediate expiring first


def test_connection_is_revoked_when_an_intermediate_expires(certs, tmp_path):
    with contextlib.ExitStack() as stack:
        ward, listen, upstream = prepare(certs, tmp_path)
        stack.callback(upstream.close)
        ward.start()
        stack.callback(stop_within, ward)
        example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                           os.path.join(certs["dir"], "example.org.bundle.key"))
        now = datetime.datetime.now(datetime.timezone.utc)
        intermediate = pki.ca("example.org short intermediate", issuer=example,
                              not_after=now + datetime.timedelta(seconds=3))
        leaf = pki.write(pki.leaf(intermediate, [WEB], not_before=now - datetime.timedelta(minutes=1),
                                  lifetime=datetime.timedelta(hours=1)), str(tmp_path), "web", chain=[intermediate])
        not_after = intermediate.cert.not_valid_after_utc.timestamp()
        assert leaf.cert.not_valid_after_utc.timestamp() > not_after + 600
        ctx = context(certs)
        ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
        mark = ward.mark()
        stream = stack.enter_context(open_stream(listen, ctx))
        allow = ward.wait_for(mark, event="allow")
        stream.settimeout(max(1.0, not_after + 3 - time.time()))
        try:
            assert stream.recv(1) == b""  # close_notify
        except TimeoutError:
            raise AssertionError("the connection outlived its chain's intermediate by 3 s")
        assert time.time() < not_after + 3.5
        revoke = ward.wait_for(mark, event="revoke", conn=allow["conn"])
        assert revoke["reason"] == "expired", revoke


# ---------------------------------------------------------------- finding 10: file watching


def applied_within(ward, since, seconds=5):
    """The first successful reload after `since` within `seconds`."""
    found = wait_records(ward, since, lambda r: r.get("event") == "reload" and r.get("ok"), seconds)
    return found[0] if found else None


def web_is_denied(ward, listen, certs):
    since = ward.mark()
    out = exchange(listen, context(certs, "web"), b"hi\n")
    assert out.data == b"", "web still gets through: the old rules are in effect"
    ward.wait_for(since, event="deny", peer_addr=f"127.0.0.1:{out.local_port}")


def test_config_folder_swapped_by_a_symlink_is_applied(certs, tmp_path):
    # The layout of a Kubernetes ConfigMap volume: `current` points at one revision, swapped atomically.
    upstream = harness.Upstream("echo-line")
    listen = harness.free_port()
    text = harness.config(certs["dir"], [("svc", listen, upstream.port)])
    text = text.replace("log: connections.log", f"log: {tmp_path}/connections.log")
    text = text.replace("admin: admin.sock", f"admin: {tmp_path}/admin.sock")
    for revision, rules in (("r1", ALLOW_WEB), ("r2", ALLOW_JOB)):
        (tmp_path / revision).mkdir()
        (tmp_path / revision / "ward.yaml").write_text(text)
        (tmp_path / revision / "rules.yaml").write_text(rules)
    os.symlink("r1", tmp_path / "current")
    ward = harness.Ward(str(tmp_path / "current"), text, ALLOW_WEB)
    ward.log_path, ward.stderr_path = str(tmp_path / "connections.log"), str(tmp_path / "ward.stderr")
    ward.start()
    try:
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        since = ward.mark()
        os.symlink("r2", tmp_path / "current.new")
        os.replace(tmp_path / "current.new", tmp_path / "current")
        reload = applied_within(ward, since)
        assert reload, "current -> r2 went unnoticed for 5 s"
        assert reload["trigger"] == "file", reload
        web_is_denied(ward, listen, certs)
    finally:
        stop_within(ward)
        upstream.close()


def test_rules_symlink_target_replaced_is_applied(certs, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "rules.yaml").write_text(ALLOW_WEB)
    ward, listen, upstream = prepare(certs, tmp_path, upstream_mode="echo-line")
    rules = os.path.join(ward.folder, "rules.yaml")
    os.remove(rules)
    os.symlink(shared / "rules.yaml", rules)
    ward.start()
    try:
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        since = ward.mark()
        write_atomically(str(shared / "rules.yaml"), ALLOW_JOB)  # write, then rename over the target
        reload = applied_within(ward, since)
        assert reload, "replacing the target of the rules.yaml symlink went unnoticed for 5 s"
        assert reload["trigger"] == "file", reload
        web_is_denied(ward, listen, certs)
    finally:
        stop_within(ward)
        upstream.close()


def test_rules_change_lost_in_an_inotify_overflow_is_applied(certs, tmp_path):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: overflowing it takes too long")
    ward, listen, upstream = prepare(certs, tmp_path, upstream_mode="echo-line")
    ward.start()
    try:
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        since = ward.mark()
        ward.process.send_signal(signal.SIGSTOP)
        try:
            # One close_write event in the watched folder each, alternating names (the same event twice in a
            # row is merged): more than the queue holds.
            for i in range(limit + 2000):
                os.close(os.open(f"{tmp_path}/scratch{i % 2}", os.O_WRONLY | os.O_CREAT, 0o644))
            write_atomically(os.path.join(ward.folder, "rules.yaml"), ALLOW_JOB)
        finally:
            ward.process.send_signal(signal.SIGCONT)
        reload = applied_within(ward, since)
        assert reload, "a rules change lost in an inotify queue overflow went unnoticed for 5 s after SIGCONT"
        web_is_denied(ward, listen, certs)
    finally:
        ward.process.send_signal(signal.SIGCONT)
        stop_within(ward)
        upstream.close()
        for name in os.listdir(tmp_path):
            if name.startswith("scratch"):
                os.remove(tmp_path / name)


# ---------------------------------------------------------------- finding 11: disk full


def test_log_survives_a_full_disk(certs, tmp_path):
    if os.getuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private tmpfs")
    mount = str(tmp_path / "logfs")
    os.mkdir(mount)
    ward, listen, upstream = prepare(
        certs, tmp_path, upstream_mode="echo-line", extra="log_chain: true\nlog_checkpoint_lines: 20\n")
    text = open(ward.config_path).read().replace("log: connections.log", f"log: {mount}/c.log")
    with open(ward.config_path, "w") as f:
        f.write(text)
    # A 128 KiB tmpfs only Ward's mount namespace sees; the test reaches it through /proc/PID/root.
    ward.start(wrap=lambda args: ["unshare", "-m", "sh", "-c",
                                  f"mount -t tmpfs -o size=128k tmpfs {shlex.quote(mount)} && exec {shlex.join(args)}"])
    inside = f"/proc/{ward.process.pid}/root{mount}"
    ward.log_path = f"{inside}/c.log"
    folder = None
    try:
        folder = os.open(inside, os.O_RDONLY | os.O_DIRECTORY)  # keeps the tmpfs readable after Ward exits
        with open(f"{inside}/filler", "wb") as f:  # leaves about 28 KiB, freed again below
            f.write(b"\0" * 100_000)
        made = 0
        while os.statvfs(inside).f_bavail > 0 and made < 400:
            exchange(listen, context(certs, "web"), b"hi\n")
            made += 1
        for _ in range(20):  # lines that cannot be written
            exchange(listen, context(certs, "web"), b"hi\n")
        os.unlink(f"{inside}/filler")
        for _ in range(10):  # space again (far more than the lines waiting need): traffic goes on
            last = exchange(listen, context(certs, "web"), b"hi\n")
        with contextlib.suppress(AssertionError, json.JSONDecodeError):
            ward.wait_for(0, event="close", peer_addr=f"127.0.0.1:{last.local_port}")
        metrics = Admin(ward).request("GET", "/metrics")[1]
        assert ward.stop() == 0
        with open(os.open("c.log", os.O_RDONLY, dir_fd=folder), "rb") as f:
            data = f.read()
    finally:
        stop_within(ward)
        upstream.close()
        if folder is not None:
            os.close(folder)
    copy = str(tmp_path / "c.log")
    with open(copy, "wb") as f:
        f.write(data)
    bad = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            bad.append((number, line[:60] + b"..." + line[-40:]))
    assert not bad, f"{len(bad)} log lines are not JSON after the disk filled up: {bad[:2]}"
    out = verify(copy)
    assert out.returncode == 0, said(out)
    failures = metric_sum(metrics, "ward_log_write_failures_total")
    assert failures is not None and failures >= 1, "ward_log_write_failures_total missing or 0"


# ---------------------------------------------------------------- finding 12: more hardening warnings


@pytest.mark.parametrize("case", ["world_writable_grandparent", "symlink_into_world_writable_folder",
                                  "same_ca_in_two_trust_domains"])
def test_check_warns(certs, tmp_path, case):
    if os.getuid() != 0 and case != "same_ca_in_two_trust_domains":
        pytest.skip("the warning is for root")
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    text = open(ward.config_path).read()
    if case == "world_writable_grandparent":
        folder = tmp_path / "top"
        (folder / "mid").mkdir(parents=True)
        (folder / "mid" / "rules.yaml").write_text(ALLOW_WEB)
        os.chmod(folder, 0o777)  # no sticky bit: anyone can rename mid and put their own rules there
        text = text.replace("rules: rules.yaml", "rules: top/mid/rules.yaml")
        words = ["world-writable", str(folder)]
    elif case == "symlink_into_world_writable_folder":
        folder = tmp_path / "shared"
        folder.mkdir()
        (folder / "rules.yaml").write_text(ALLOW_WEB)
        os.chmod(folder, 0o777)
        os.remove(tmp_path / "rules.yaml")
        os.symlink(folder / "rules.yaml", tmp_path / "rules.yaml")
        words = ["world-writable", str(folder)]
    else:
        example = open(certs["example_ca"], "rb").read()
        (tmp_path / "td1.pem").write_bytes(example)
        (tmp_path / "td2.pem").write_bytes(open(os.path.join(certs["dir"], "partner.org.bundle.pem"), "rb").read()
                                           + example)
        text = text.replace(f"{certs['dir']}/example.org.bundle.pem", f"{tmp_path}/td1.pem")
        text = text.replace(f"{certs['dir']}/partner.org.bundle.pem", f"{tmp_path}/td2.pem")
        words = ["example.org", "partner.org"]
    with open(ward.config_path, "w") as f:
        f.write(text)
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, said(out)
    assert warning_lines(out.stdout + out.stderr, *words), f"no warning naming {words}: {said(out)}"


# ---------------------------------------------------------------- finding 13: no-op reload spam


def test_no_op_reloads_do_not_flood_the_log(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, upstream_mode="echo-line")
    ward.start()
    try:
        admin, sent = Admin(ward), 0
        deadline = time.monotonic() + 3
        while sent < 5000 and time.monotonic() < deadline:
            assert admin.request("POST", "/reload")[0] == 200
            sent += 1
        # The log is one queue: once a later connection's close line is there, every reload line is.
        out = exchange(listen, context(certs, "web"), b"hi\n")
        ward.wait_for(0, event="close", peer_addr=f"127.0.0.1:{out.local_port}")
        records = ward.lines()
    finally:
        stop_within(ward)
        upstream.close()
    unchanged = [r for r in records if r.get("event") == "reload" and r.get("changed") is False]
    assert sent >= 1000, f"only {sent} reloads sent in 3 s"
    assert len(unchanged) <= 10, f"{len(unchanged)} reload lines with changed: false for {sent} no-op reloads"


# ---------------------------------------------------------------- finding 14: ward logs on a device or FIFO


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_ward_logs_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = "/dev/zero"
    if kind == "fifo":
        path = str(tmp_path / "log.fifo")
        os.mkfifo(path)
    code, text, killed = run_bounded([harness.WARD, "logs", path], seconds=5)
    assert killed is None, f"ward logs {path}: {killed}"
    assert code == 1 and "not a regular file" in text, (code, text[:300])


# ---------------------------------------------------------------- finding 15: bidi controls in names


BIDI = ["\u202e", "\u2066", "\u2069", "\u200f"]


def test_bidi_controls_in_names_are_escaped(certs, tmp_path):
    upstream = harness.Upstream()
    listeners = [('"ord\u202eers"', harness.free_port(), upstream.port), ("plain", harness.free_port(), upstream.port)]
    upstream.close()
    rules = (f"default: deny\nrules:\n"
             f'  - name: "web\u202eevil"\n    action: allow\n    from: [{WEB}]\n    to: [plain]\n'
             f'  - name: "dup\u2066x\u2069"\n    action: allow\n    from: [{WEB}]\n    to: [plain]\n'
             f'  - name: "mark\u200fy"\n    action: allow\n    from: [{WEB}]\n    to: [plain]\n')
    ward = harness.Ward(str(tmp_path), harness.config(certs["dir"], listeners), rules)
    outputs = {
        "check": [harness.WARD, "check", "--config", ward.config_path],
        "explain": [harness.WARD, "explain", "--config", ward.config_path, "--from", WEB, "--to", "plain"],
        "explain-listener": [harness.WARD, "explain", "--config", ward.config_path, "--from", WEB,
                             "--to", "ord\u202eers"],
    }
    for name, args in outputs.items():
        out = subprocess.run(args, capture_output=True, timeout=30)
        text = out.stdout + out.stderr
        raw = [hex(ord(c)) for c in BIDI if c.encode() in text]
        assert not raw, f"ward {name} printed raw bidi controls {raw}: {text!r}"
        if name != "explain-listener":
            assert b"evil" in text, f"ward {name} no longer names the rule: {text!r}"


# ---------------------------------------------------------------- finding 16: checkpoints every N lines


def test_no_run_between_checkpoints_is_longer_than_log_checkpoint_lines(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, upstream_mode="echo-line",
                                     extra="log_chain: true\nlog_checkpoint_lines: 50\nlog_checkpoint_interval: 1h\n")
    ward.start()
    stop, failures = threading.Event(), []

    def client():
        while not stop.is_set():
            if exchange(listen, context(certs, "web"), b"hi\n").data != b"echo: hi\n":
                failures.append(1)

    threads = [threading.Thread(target=client) for _ in range(3)]
    flood = None
    try:
        for t in threads:
            t.start()
        flood = start_flood(listen, 1.5)  # lines arrive in bursts
        flood.wait(timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if flood:
            end(flood)
        stop_within(ward)
        upstream.close()
    lines = raw_lines(ward.log_path)
    runs = runs_between_checkpoints(lines)
    assert len(lines) > 500, f"only {len(lines)} lines: not enough traffic to judge"
    long = [r for r in runs if r > 50]
    assert not long, f"{len(long)} of {len(runs)} runs between checkpoints exceed 50 lines (longest {max(runs)})"
