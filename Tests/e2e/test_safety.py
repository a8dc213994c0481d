"""Issue 11, end to end: weak peer crypto, the admin endpoint's limits and origin checks, rules files
that are not regular files, watches after a reload moves files, hardening warnings, handshake-error
rate limiting, smaller faults, revocation at certificate expiry, and revocation racing accepts."""
import contextlib
import datetime
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
from harness import run_ward, write_atomically
import pki
from clients import context, exchange

WEB = "spiffe://example.org/ns/prod/sa/web"
ALLOW_WEB = f"default: deny\nrules:\n  - name: web\n    action: allow\n    from: [{WEB}]\n    to: [svc]\n"
ALLOW_PROD = "default: deny\nrules:\n  - name: prod\n    action: allow\n    from: [spiffe://example.org/ns/prod/**]\n" \
    "    to: [svc]\n"


# ---------------------------------------------------------------- helpers


def prepare(certs, tmp_path, extra="", rules=ALLOW_WEB, upstream_mode="hold", admin=None, workers=None,
            pki_dir=None):
    """A Ward (not started) with one listener `svc` in front of a fresh upstream."""
    upstream = harness.Upstream(upstream_mode)
    listen = harness.free_port()
    text = harness.config(pki_dir or certs["dir"], [("svc", listen, upstream.port)], extra)
    if admin:
        text = text.replace("admin: admin.sock", f"admin: {admin}")
    if workers:
        text = text.replace("workers: 2", f"workers: {workers}")
    return harness.Ward(str(tmp_path), text, rules), listen, upstream


def stop_within(ward, seconds=5):
    """SIGTERM; True if Ward exited within `seconds`. A hung Ward is killed, never left behind."""
    if not ward.process or ward.process.poll() is not None:
        return True
    ward.process.send_signal(signal.SIGTERM)
    try:
        ward.process.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        ward.process.kill()
        ward.process.wait()
        return False


@contextlib.contextmanager
def running(certs, tmp_path, **options):
    ward, listen, upstream = prepare(certs, tmp_path, **options)
    ward.start()
    try:
        yield ward, listen, upstream
    finally:
        stop_within(ward)
        upstream.close()


def run_bounded(args, seconds=5, rss_cap_mib=256):
    """Runs a command for at most `seconds` and `rss_cap_mib` of RSS; kills it past either.
    Returns (returncode or None if killed, stdout+stderr, why it was killed or None)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline, killed = time.monotonic() + seconds, None
        while process.poll() is None:
            if time.monotonic() > deadline:
                killed = f"still running after {seconds}s"
            else:
                try:
                    if rss_kib(process.pid) > rss_cap_mib * 1024:
                        killed = f"RSS over {rss_cap_mib} MiB"
                except (FileNotFoundError, IndexError, ProcessLookupError):
                    pass
            if killed:
                process.kill()
                process.wait()
                break
            time.sleep(0.02)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return (None if killed else process.returncode), text, killed


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([line for line in f if line.startswith("VmRSS:")][0].split()[1])


def open_stream(port, ctx):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw)
    tls.sendall(b"ping")
    assert tls.recv(4) == b"ping"
    return tls


def wait_records(ward, since, predicate, seconds=harness.DEADLINE):
    """Log records after `since` matching `predicate`, once there is at least one (or [] at the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [r for r in ward.lines(since) if predicate(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def wait_generation(ward, since, generation, seconds=harness.DEADLINE):
    found = wait_records(ward, since, lambda r: r.get("event") == "reload" and r.get("generation") == generation
                         and r.get("ok"), seconds)
    assert found, f"no reload to generation {generation}; saw {ward.lines(since)}"
    return found[0]


def wait_rules(ward, since, count):
    """The first applied reload after `since` with `count` rules (whichever trigger got there first)."""
    found = wait_records(ward, since, lambda r: r.get("event") == "reload" and r.get("ok") and r.get("rules") == count)
    assert found, f"no reload to {count} rule(s); saw {[r for r in ward.lines(since) if r.get('event') == 'reload']}"
    return found[0]


class Admin:
    """The admin endpoint of a Ward: its Unix socket, or a loopback TCP port."""

    def __init__(self, ward, port=None):
        self.ward, self.port = ward, port
        self.host = f"127.0.0.1:{port}" if port else "localhost"

    def connect(self, timeout=10):
        if self.port:
            return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                s.connect(os.path.join(self.ward.folder, "admin.sock"))
                return s
            except BlockingIOError:  # the listen backlog is full: Ward has not accepted yet
                if time.monotonic() > deadline:
                    s.close()
                    raise
                time.sleep(0.005)

    def request(self, method, path, headers=None, timeout=10):
        """One request; (status, body). status is None when Ward closed without answering."""
        headers = {"Host": self.host, **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += "Content-Length: 0\r\nConnection: close\r\n\r\n"
        with self.connect(timeout) as s:
            try:
                s.sendall(head.encode())
            except OSError:
                return None, ""
            return read_response(s)

    def generation(self):
        status, body = self.request("GET", "/healthz")
        assert status in (200, 503), (status, body)
        return json.loads(body)["generation"]


def read_response(s):
    """(status, body) of the response on `s`; (None, "") if Ward closed or reset without one.
    Reads to the end of the body (Content-Length) or to EOF, whichever comes first."""
    data = b""
    try:
        while True:
            head, found, body = data.partition(b"\r\n\r\n")
            if found:
                lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0]):
                    break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    if not data.startswith(b"HTTP/1."):
        return None, ""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def tcp_admin_option():
    port = harness.free_port()
    return port, f"127.0.0.1:{port}"


# ---------------------------------------------------------------- item 3: weak peer crypto


def weak_context(path):
    """A client that can present a weak certificate at all (OpenSSL's level 2 refuses to load it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(path + ".pem", path + ".key")
    return ctx


@pytest.fixture(scope="module")
def weak(certs, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("weak"))
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    pki.write(pki.leaf(example, [WEB], key_kind="rsa", rsa_bits=1024), folder, "rsa1024")
    pki.write(pki.resign_sha1(pki.leaf(example, [WEB]), example), folder, "sha1_leaf")
    intermediate = pki.resign_sha1(pki.ca("example.org sha1 intermediate", issuer=example), example)
    pki.write(pki.leaf(intermediate, [WEB]), folder, "sha1_intermediate", chain=[intermediate])
    with running(certs, tmp_path_factory.mktemp("weak-ward"), upstream_mode="echo-line") as (ward, listen, _):
        yield ward, listen, folder


@pytest.mark.parametrize("name,words", [
    ("rsa1024", ("key", "1024", "rsa")),
    ("sha1_leaf", ("sha1", "sha-1", "digest")),
    ("sha1_intermediate", ("sha1", "sha-1", "digest")),
])
def test_weak_peer_crypto_is_refused(weak, name, words):
    # Security level 2 for the peer's chain: RSA < 2048 bits and SHA-1 signatures are refused.
    ward, listen, folder = weak
    mark = ward.mark()
    out = exchange(listen, weak_context(os.path.join(folder, name)), b"ping\n")
    assert out.data == b"", f"{name} was let through"
    record = ward.wait_for(mark, event="handshake_error", peer_addr=f"127.0.0.1:{out.local_port}")
    assert record["reason"] == "weak_crypto", record
    assert any(w in record.get("detail", "").lower() for w in words), record


def test_security_level_is_configurable_upward_only(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    base = open(ward.config_path).read()
    for level, ok in [(3, True), (2, True), (1, False), (0, False)]:
        with open(ward.config_path, "w") as f:
            f.write(base + f"security_level: {level}\n")
        out = run_ward("check", "--config", ward.config_path)
        assert (out.returncode == 0) == ok, (level, out.stdout + out.stderr)
        if not ok:
            assert out.returncode == 1 and "security_level" in out.stdout + out.stderr


# ---------------------------------------------------------------- item 5: a second Ward's admin socket


def test_second_ward_on_the_same_admin_socket_leaves_the_first_alone(certs, tmp_path):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with running(certs, tmp_path / "first") as (first, _, _):
        socket_path = os.path.join(first.folder, "admin.sock")
        second, _, upstream = prepare(certs, tmp_path / "second", admin=socket_path)
        upstream.close()
        out = run_ward("run", "--config", second.config_path, timeout=15)
        assert out.returncode == 1, out.stderr
        # The loser must not unlink the winner's socket: the first stays reachable.
        assert os.path.exists(socket_path), "the second Ward deleted the first one's admin socket"
        reload = run_ward("reload", "--config", first.config_path)
        assert reload.returncode == 0, reload.stderr


# ---------------------------------------------------------------- item 6: admin limits and origin checks


@pytest.fixture(params=["unix", "tcp"])
def admin(request, certs, tmp_path):
    port, option = tcp_admin_option() if request.param == "tcp" else (None, None)
    with running(certs, tmp_path, admin=option) as (ward, listen, _):
        yield Admin(ward, port), listen


def test_admin_body_over_64k_is_refused_without_buffering(admin):
    target, _ = admin
    target.generation()  # warm-up: the endpoint's first-request allocations are not the body's
    pid = target.ward.process.pid
    before = rss_kib(pid)
    declared, chunk, sent = 200 * 2**20, b"x" * 65536, 0
    with target.connect() as s:
        s.sendall(f"POST /reload HTTP/1.1\r\nHost: {target.host}\r\nContent-Length: {declared}\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        try:
            while sent < 32 * 2**20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # Ward closed on us: what a limit looks like
        time.sleep(0.2)  # let Ward drain its socket, if it still reads
        growth = rss_kib(pid) - before
        assert growth < 16 * 1024, f"RSS grew {growth} KiB while {sent} body bytes were sent"
        s.settimeout(5)
        try:
            status, _ = read_response(s)
        except TimeoutError:
            raise AssertionError(f"no answer and no close after {sent} bytes of an oversized body")
        assert status in (None, 413), status


def test_admin_headers_over_8k_are_refused(admin):
    target, _ = admin
    with target.connect(timeout=5) as s:
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {target.host}\r\nX-Filler: {'a' * 16384}\r\n"
                  "Connection: close\r\n\r\n".encode())
        status, _ = read_response(s)
    assert status is None or 400 <= status < 500, f"16 KiB of headers answered {status}"


def test_admin_half_sent_request_is_closed(certs, tmp_path):
    with running(certs, tmp_path) as (ward, _, _):
        target = Admin(ward)
        with target.connect(timeout=16) as s:
            started = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # ... and never the blank line
            try:
                read_response(s)
            except TimeoutError:
                raise AssertionError("a stalled admin request was held open over 15 s")
            assert time.monotonic() - started < 15


def test_500_idle_admin_connections_are_capped_and_time_out(certs, tmp_path):
    with running(certs, tmp_path) as (ward, listen, _):
        target = Admin(ward)
        selector, idle, refused = selectors.DefaultSelector(), [], 0
        try:
            for _ in range(500):
                try:
                    s = target.connect(timeout=2)
                except OSError:
                    refused += 1
                    continue
                s.setblocking(False)
                selector.register(s, selectors.EVENT_READ)
                idle.append(s)
            started = time.monotonic()

            def drain(until):
                """Reads EOFs until `until`; returns how many admin sockets are still open."""
                while selector.get_map() and time.monotonic() < until:
                    for key, _ in selector.select(timeout=0.1):
                        try:
                            data = key.fileobj.recv(4096)
                        except OSError:
                            data = b""
                        if not data:
                            selector.unregister(key.fileobj)
                return len(selector.get_map())

            # Over the cap (64), connections are closed at once, not queued for the idle timeout.
            still_open = drain(time.monotonic() + 2)
            assert still_open <= 64, f"{still_open} idle admin connections held open (refused at connect: {refused})"
            # The data plane is untouched: a legitimate client connects and echoes.
            open_stream(listen, context(certs, "web")).close()
            # The idle ones time out (admin request timeout 10 s), then the endpoint serves again.
            still_open = drain(started + 15)
            assert still_open == 0, f"{still_open} idle admin connections still open after 15 s"
            status, body = target.request("GET", "/healthz", timeout=5)
            assert status == 200, body
        finally:
            for s in idle:
                s.close()


def test_cross_origin_reload_is_refused(certs, tmp_path):
    port, option = tcp_admin_option()
    with running(certs, tmp_path, admin=option) as (ward, _, _):
        target = Admin(ward, port)
        generation = target.generation()
        mark = ward.mark()
        # A browser page elsewhere can POST to a loopback port; its Origin gives it away.
        status, body = target.request("POST", "/reload", {"Origin": "http://evil.example"})
        assert status == 403, (status, body)
        assert target.generation() == generation
        assert not [r for r in ward.lines(mark) if r.get("event") == "reload"]


def test_tcp_admin_refuses_a_foreign_host_header(certs, tmp_path):
    port, option = tcp_admin_option()
    with running(certs, tmp_path, admin=option) as (ward, _, _):
        target = Admin(ward, port)
        generation = target.generation()
        # DNS rebinding: a name the attacker controls resolves to 127.0.0.1; Host still names it.
        for method, path in [("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/reload")]:
            status, body = target.request(method, path, {"Host": f"evil.example:{port}"})
            assert status == 403, (method, path, status, body)
        assert target.generation() == generation
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            assert target.request("GET", "/healthz", {"Host": host})[0] == 200, host
        out = run_ward("reload", "--admin", f"127.0.0.1:{port}")
        assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- item 7: admin host names


def in_private_hosts(tmp_path, args):
    """`args` run in a private mount namespace whose /etc/hosts maps 127.evil.example elsewhere."""
    if os.getuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private /etc/hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n192.0.2.7 127.evil.example\n")
    quoted = " ".join(f"'{a}'" for a in args)
    return ["unshare", "-m", "sh", "-c", f"mount --bind {hosts} /etc/hosts && exec {quoted}"]


def test_admin_host_name_is_judged_by_its_resolved_address(certs, tmp_path):
    port = harness.free_port()
    ward, _, upstream = prepare(certs, tmp_path, admin=f"127.evil.example:{port}")
    upstream.close()
    out = subprocess.run(in_private_hosts(tmp_path, [harness.WARD, "check", "--config", ward.config_path]),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "not a loopback address" in out.stdout + out.stderr, out.stdout + out.stderr
    code, text, killed = run_bounded(in_private_hosts(tmp_path, [harness.WARD, "run", "--config", ward.config_path]),
                                     seconds=10)
    assert code == 1 and "not a loopback address" in text, (killed, text)
    # A name that does resolve to loopback is still fine.
    text = open(ward.config_path).read().replace(f"127.evil.example:{port}", f"localhost:{port}")
    with open(ward.config_path, "w") as f:
        f.write(text)
    out = subprocess.run(in_private_hosts(tmp_path, [harness.WARD, "check", "--config", ward.config_path]),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- item 8: rules that are not regular files


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_rules_that_are_not_a_regular_file_are_refused(certs, tmp_path, kind):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    if kind == "fifo":
        rules = os.path.join(ward.folder, "rules.yaml")
        os.remove(rules)
        os.mkfifo(rules)  # opening it blocks until a writer comes
    else:
        text = open(ward.config_path).read().replace("rules: rules.yaml", "rules: /dev/zero")  # never ends
        with open(ward.config_path, "w") as f:
            f.write(text)
    for command in ("check", "run"):
        code, text, killed = run_bounded([harness.WARD, command, "--config", ward.config_path], seconds=5)
        assert killed is None, f"ward {command}: {killed}"
        assert code == 1 and "not a regular file" in text, (command, text)


def test_rules_replaced_by_a_fifo_fail_the_reload_only(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    ward.start()
    try:
        mark = ward.mark()
        fifo = os.path.join(ward.folder, "rules.fifo")
        os.mkfifo(fifo)
        os.replace(fifo, os.path.join(ward.folder, "rules.yaml"))
        ward.process.send_signal(signal.SIGHUP)
        failed = wait_records(ward, mark, lambda r: r.get("event") == "reload" and r.get("ok") is False, seconds=5)
        assert failed, "no failed reload logged: the control thread is stuck on the FIFO"
        assert "not a regular file" in failed[0]["error"], failed[0]
        status, _ = Admin(ward).request("GET", "/healthz", timeout=5)
        assert status is not None
        assert stop_within(ward, 5), "SIGTERM did not stop Ward within 5 s"
    finally:
        stop_within(ward, 1)
        upstream.close()


def padded_rules(size):
    text = ALLOW_WEB
    return text + "#" + "x" * (size - len(text) - 2) + "\n"


def test_max_file_size_is_configurable(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path, rules=padded_rules(4096))
    upstream.close()
    base = open(ward.config_path).read()
    rules = os.path.join(ward.folder, "rules.yaml")
    with open(ward.config_path, "w") as f:
        f.write(base + "max_file_size: 1048576\n")
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(ward.config_path, "w") as f:
        f.write(base + "max_file_size: 1024\n")
    for command in ("check", "run"):
        code, text, killed = run_bounded([harness.WARD, command, "--config", ward.config_path], seconds=10)
        assert code == 1, (command, killed, text)
        assert any(rules in line and "max_file_size" in line for line in text.splitlines()), (command, text)


def test_rules_over_the_default_max_file_size_are_refused(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    rules = os.path.join(ward.folder, "rules.yaml")
    os.truncate(rules, 64 * 2**20 + 1)  # sparse: one byte over the 64 MiB default
    code, text, killed = run_bounded([harness.WARD, "check", "--config", ward.config_path], seconds=5)
    assert code == 1, (killed, text)
    assert any(rules in line and "max_file_size" in line for line in text.splitlines()), text


# ---------------------------------------------------------------- item 9: watches follow moved files


@pytest.mark.parametrize("trigger", ["sighup", "admin"])
def test_watch_follows_rules_moved_by_a_reload(certs, tmp_path, trigger):
    folders = {name: tmp_path / name for name in ("a", "b")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "rules.yaml").write_text(ALLOW_WEB)
    ward, _, upstream = prepare(certs, tmp_path)
    text = open(ward.config_path).read()
    with open(ward.config_path, "w") as f:
        f.write(text.replace("rules: rules.yaml", f"rules: {folders['a']}/rules.yaml"))
    ward.start()
    try:
        mark = ward.mark()
        # Move rules: to folder b, and reload at once (before the config watch's 200 ms debounce).
        write_atomically(ward.config_path, text.replace("rules: rules.yaml", f"rules: {folders['b']}/rules.yaml"))
        if trigger == "sighup":
            ward.process.send_signal(signal.SIGHUP)
        else:
            out = run_ward("reload", "--config", ward.config_path)
            assert out.returncode == 0, out.stderr
        wait_generation(ward, mark, 2)
        # No line marks the config edit's own (no-op) file reload: wait out its 200 ms debounce, or that
        # reload would pick up the edit below and hide a stale watch.
        time.sleep(0.5)
        mark = ward.mark()
        write_atomically(str(folders["b"] / "rules.yaml"), ALLOW_PROD)
        found = wait_records(ward, mark, lambda r: r.get("event") == "reload", seconds=5)
        assert found, f"editing {folders['b']}/rules.yaml after a {trigger} reload went unnoticed"
        assert found[0]["ok"] and found[0]["trigger"] == "file" and found[0]["generation"] == 3, found
    finally:
        stop_within(ward)
        upstream.close()


# ---------------------------------------------------------------- item 11: hardening


def warning_lines(text, *words):
    return [line for line in text.splitlines()
            if "warning" in line.lower() and all(w in line for w in words)]


@pytest.mark.parametrize("what", ["rules", "bundle"])
def test_world_writable_files_warn_root(certs, tmp_path, what):
    if os.getuid() != 0:
        pytest.skip("the warning is for root")
    pki_dir = str(tmp_path / "pki")
    shutil.copytree(certs["dir"], pki_dir)
    ward, _, upstream = prepare(certs, tmp_path, pki_dir=pki_dir)
    path = os.path.join(ward.folder, "rules.yaml") if what == "rules" else f"{pki_dir}/example.org.bundle.pem"
    os.chmod(path, 0o666)
    try:
        out = run_ward("check", "--config", ward.config_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert warning_lines(out.stdout + out.stderr, "world-writable", path), out.stdout + out.stderr
        ward.start()  # still starts
        assert warning_lines(open(ward.stderr_path).read(), "world-writable", path), open(ward.stderr_path).read()
    finally:
        stop_within(ward)
        upstream.close()


def test_bundle_holding_another_trust_domains_ca_warns(certs, tmp_path):
    pki_dir = str(tmp_path / "pki")
    shutil.copytree(certs["dir"], pki_dir)
    foreign = pki.ca("partner.org CA", uris=["spiffe://partner.org"])
    with open(f"{pki_dir}/example.org.bundle.pem", "ab") as f:
        f.write(foreign.cert.public_bytes(pki.serialization.Encoding.PEM))
    ward, _, upstream = prepare(certs, tmp_path, pki_dir=pki_dir)
    upstream.close()
    out = run_ward("check", "--config", ward.config_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert warning_lines(out.stdout + out.stderr, "example.org", "partner.org"), out.stdout + out.stderr


def test_handshake_errors_are_rate_limited_per_source(certs, tmp_path):
    with running(certs, tmp_path, upstream_mode="echo-line") as (ward, listen, _):
        mark = ward.mark()
        attempts, per_thread = 2000, 250
        failures, allowed = [], []
        stop = threading.Event()

        def hammer():
            for _ in range(per_thread):
                try:
                    s = socket.create_connection(("127.0.0.1", listen), timeout=10)
                except OSError as error:
                    failures.append(repr(error))
                    continue
                with s, contextlib.suppress(OSError):  # Ward may reset: it did not read all we sent
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # plain text: a failed handshake
                    while s.recv(4096):
                        pass

        def legitimate():
            ctx = context(certs, "web")
            while not stop.is_set():
                out = exchange(listen, ctx, b"hi\n")
                if out.data != b"echo: hi\n":
                    failures.append(f"legitimate client: {out.error}")
                allowed.append(out.local_port)

        threads = [threading.Thread(target=hammer) for _ in range(attempts // per_thread)]
        legit = threading.Thread(target=legitimate)
        for t in threads + [legit]:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stop.set()
        legit.join(timeout=30)
        assert not failures, failures[:3]
        assert allowed

        def counts():
            records = ward.lines(mark)
            logged = len([r for r in records if r.get("event") == "handshake_error"])
            summaries = [r for r in records if r.get("event") == "handshake_error_suppressed"]
            return logged, summaries, records

        # Summaries may come a little later: wait until the books balance (or the deadline).
        deadline = time.monotonic() + harness.DEADLINE
        while True:
            logged, summaries, records = counts()
            suppressed = sum(r["suppressed"] for r in summaries if r.get("peer_ip") == "127.0.0.1")
            if logged + suppressed >= attempts or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert logged <= 250, f"{logged} handshake_error lines for one source hammering {attempts} times"
        assert summaries and all(isinstance(r["suppressed"], int) for r in summaries), summaries
        assert logged + suppressed == attempts, (logged, suppressed)
        # Allowed connections are never rate-limited: every allow and close is there.
        for event in ("allow", "close"):
            seen = {r["peer_addr"] for r in records if r.get("event") == event}
            missing = [p for p in allowed if f"127.0.0.1:{p}" not in seen]
            assert not missing, f"{len(missing)} of {len(allowed)} {event} lines missing"


# ---------------------------------------------------------------- item 12: smaller faults


def test_reload_changing_user_is_refused(certs, tmp_path):
    with running(certs, tmp_path) as (ward, _, _):
        mark = ward.mark()
        with open(ward.config_path, "a") as f:
            f.write("user: nobody\n")
        out = run_ward("reload", "--config", ward.config_path)
        assert out.returncode == 1 and "restart required" in out.stderr, out.stdout + out.stderr
        failed = ward.wait_for(mark, event="reload", ok=False)
        assert "restart required" in failed["error"]
        assert not [r for r in ward.lines(mark) if r.get("event") == "reload" and r.get("ok")]


def test_failed_log_reopen_is_reported_and_the_old_file_kept(certs, tmp_path):
    ward, listen, upstream = prepare(certs, tmp_path, upstream_mode="echo-line")
    os.mkdir(os.path.join(ward.folder, "logs"))
    text = open(ward.config_path).read().replace("log: connections.log", "log: logs/connections.log")
    with open(ward.config_path, "w") as f:
        f.write(text)
    ward.log_path = os.path.join(ward.folder, "logs", "connections.log")
    ward.start()
    try:
        assert exchange(listen, context(certs, "web"), b"hi\n").data == b"echo: hi\n"
        rotated = ward.log_path + ".1"
        os.rename(ward.log_path, rotated)
        os.mkdir(ward.log_path)  # the log path is now a folder: reopening it must fail (even for root)
        stderr_before = os.path.getsize(ward.stderr_path)
        ward.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while True:
            with open(ward.stderr_path) as f:
                f.seek(stderr_before)
                said = f.read()
            if "log" in said.lower() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "log" in said.lower(), f"a failed log reopen printed nothing on stderr: {said!r}"
        admin = Admin(ward)
        status, body = admin.request("GET", "/healthz")
        assert status == 503, body
        assert any("log" in reason for reason in json.loads(body)["reasons"]), body
        assert "ward_log_reopen_failures_total 1\n" in admin.request("GET", "/metrics")[1]
        # Lines keep landing in the file still open.
        out = exchange(listen, context(certs, "web"), b"hi\n")
        assert out.data == b"echo: hi\n"
        deadline = time.monotonic() + 5
        while f"127.0.0.1:{out.local_port}" not in open(rotated).read():
            assert time.monotonic() < deadline, "lines after the failed reopen were lost"
            time.sleep(0.05)
    finally:
        stop_within(ward)
        upstream.close()


def test_explain_reports_a_trust_domain_without_a_bundle(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    out = run_ward("explain", "--config", ward.config_path, "--from", "spiffe://nobundle.example/x", "--to", "svc")
    assert "unknown_trust_domain" in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.returncode == 1, out.returncode


def test_config_errors_print_non_ascii_as_utf8(certs, tmp_path):
    rules = "rules:\n  - {name: a, action: allow, from: [spiffe://example.org/caf\u00e9], to: [svc]}\n"
    ward, _, upstream = prepare(certs, tmp_path, rules=rules)
    upstream.close()
    for command in ("check", "run"):
        out = subprocess.run([harness.WARD, command, "--config", ward.config_path], capture_output=True, timeout=30)
        text = out.stdout + out.stderr
        assert out.returncode == 1 and b"caf\xc3\xa9" in text, text
        assert b"\xc3\x83" not in text, f"ward {command} printed Latin-1 mojibake: {text!r}"


def test_ward_logs_escapes_control_bytes_from_the_log(tmp_path):
    path = str(tmp_path / "evil.log")
    record = {"ts": "2026-11-22T00:00:00.000Z", "event": "allow", "conn": 1, "listener": "svc",
              "peer_addr": "127.0.0.1:1", "peer_id": "spiffe://example.org/\x1b[31mEVIL\x1b[0m", "rule": "a"}
    with open(path, "w") as f:
        f.write(json.dumps(record) + "\n")
    # stdout is a pipe: ward logs adds no colour of its own, so any ESC came from the data.
    out = subprocess.run([harness.WARD, "logs", path], capture_output=True, timeout=30)
    assert out.returncode == 0 and b"EVIL" in out.stdout, out
    assert b"\x1b" not in out.stdout, out.stdout


def test_explain_escapes_control_bytes_it_echoes(certs, tmp_path):
    ward, _, upstream = prepare(certs, tmp_path)
    upstream.close()
    out = subprocess.run([harness.WARD, "explain", "--config", ward.config_path, "--from",
                          "spiffe://example.org/\x1b[31mEVIL", "--to", "svc"], capture_output=True, timeout=30)
    assert out.returncode == 1
    assert b"\x1b" not in out.stdout + out.stderr, out.stdout + out.stderr


# ---------------------------------------------------------------- continuous validation


def expiring_svid(certs, folder, seconds):
    """A web SVID valid from a minute ago until `seconds` from now."""
    example = pki.load(os.path.join(certs["dir"], "example.org.bundle.pem"),
                       os.path.join(certs["dir"], "example.org.bundle.key"))
    now = datetime.datetime.now(datetime.timezone.utc)
    issued = pki.leaf(example, [WEB], not_before=now - datetime.timedelta(seconds=60),
                      lifetime=datetime.timedelta(seconds=60 + seconds))
    issued = pki.write(issued, str(folder), "expiring")
    ctx = context(certs)
    ctx.load_cert_chain(issued.cert_path, issued.key_path)
    return ctx, issued.cert.not_valid_after_utc.timestamp()


def test_connection_is_revoked_when_the_peer_svid_expires(certs, tmp_path):
    with running(certs, tmp_path) as (ward, listen, _):
        mark = ward.mark()
        ctx, not_after = expiring_svid(certs, tmp_path, 4)
        stream = open_stream(listen, ctx)
        allow = ward.wait_for(mark, event="allow")
        stream.settimeout(max(1.0, not_after + 4 - time.time()))
        try:
            assert stream.recv(1) == b""  # close_notify
        except TimeoutError:
            raise AssertionError("the connection outlived its peer's SVID by 4 s")
        assert time.time() < not_after + 4
        revoke = ward.wait_for(mark, event="revoke", conn=allow["conn"])
        assert revoke["reason"] == "expired" and revoke["close_cause"] == "revoked", revoke
        assert ward.wait_for(mark, event="close", conn=allow["conn"])["close_cause"] == "revoked"
        stream.close()


def test_peer_expiry_keep_leaves_the_connection_open(certs, tmp_path):
    with running(certs, tmp_path, extra="peer_expiry: keep\n") as (ward, listen, _):
        mark = ward.mark()
        ctx, not_after = expiring_svid(certs, tmp_path, 2)
        stream = open_stream(listen, ctx)
        time.sleep(max(0.0, not_after + 1.5 - time.time()))  # past notAfter; no event marks "nothing happened"
        stream.sendall(b"still")
        assert stream.recv(5) == b"still"
        assert not [r for r in ward.lines(mark) if r.get("event") == "revoke"]
        stream.close()


# ---------------------------------------------------------------- item 2: revocation racing accepts

ALLOW_BOTH = ALLOW_WEB + "  - name: job\n    action: allow\n    from: [spiffe://example.org/ns/prod/job/nightly]\n" \
    "    to: [svc]\n"
ALLOW_JOB = "default: deny\nrules:\n  - name: job\n    action: allow\n" \
    "    from: [spiffe://example.org/ns/prod/job/nightly]\n    to: [svc]\n"


BURST = r"""
import socket, ssl, sys, threading
port, cert, key, ca, mode = int(sys.argv[1]), *sys.argv[2:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
go = threading.Event()

def control():
    for line in sys.stdin:  # "go" starts connecting, "pause" stops; EOF ends the process
        go.set() if line.strip() == "go" else go.clear()
    sys.exit()

threading.Thread(target=control, daemon=True).start()
print("ready", flush=True)
while go.wait():
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            if mode == "junk":  # the most accepts per second: plain text, refused at once
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            else:  # an allowed peer
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"j")
                    tls.recv(1)
    except OSError:
        pass
"""


class Burst:
    """Processes that connect in a tight loop while told to (their own processes: no GIL shared with the test)."""

    def __init__(self, port, cert, ca, modes):
        self.processes = [subprocess.Popen([sys.executable, "-c", BURST, str(port), cert.cert_path, cert.key_path,
                                            ca, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                          for mode in modes]
        for p in self.processes:
            assert p.stdout.readline().strip() == "ready"

    def tell(self, word):
        for p in self.processes:
            p.stdin.write(word + "\n")
            p.stdin.flush()

    def stop(self):
        for p in self.processes:
            p.kill()
            p.wait()


def test_revocation_is_not_skipped_when_accepts_race_the_reload(certs, tmp_path):
    with running(certs, tmp_path, rules=ALLOW_BOTH, workers=1) as (ward, listen, _):
        rules_path = os.path.join(ward.folder, "rules.yaml")
        web_ctx = context(certs, "web")
        # New connections during each reload: plain-text ones (the most accepts a second) and allowed peers.
        burst = Burst(listen, certs["prod_job"], certs["example_ca"], ["junk", "junk", "tls"])
        try:
            for trial in range(10):
                if trial:
                    mark = ward.mark()
                    write_atomically(rules_path, ALLOW_BOTH)
                    ward.process.send_signal(signal.SIGHUP)
                    wait_rules(ward, mark, 2)
                mark = ward.mark()
                with ThreadPoolExecutor(20) as pool:  # each echo costs a few tens of ms: open them side by side
                    streams = list(pool.map(lambda _: open_stream(listen, web_ctx), range(20)))
                ports = {f"127.0.0.1:{s.getsockname()[1]}" for s in streams}
                burst.tell("go")
                try:
                    time.sleep(0.05)  # the burst under way before the reload publishes
                    write_atomically(rules_path, ALLOW_JOB)
                    ward.process.send_signal(signal.SIGHUP)
                    wait_rules(ward, mark, 1)
                finally:
                    burst.tell("pause")
                survivors, flowing = closed_within(streams, 3)
                deadline = time.monotonic() + (0 if survivors else 3)  # revoke lines may trail the closes a little
                while True:
                    revoked = {r["peer_addr"] for r in ward.lines(mark) if r.get("event") == "revoke"}
                    if ports <= revoked or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert not survivors and ports <= revoked, (
                    f"trial {trial}: {survivors} of 20 denied connections still open ({flowing} still echo), "
                    f"{len(ports - revoked)} without a revoke line")
        finally:
            burst.stop()


def closed_within(streams, seconds):
    """Waits for every stream to end; closes them all. Returns (how many did not, how many of those still echo)."""
    deadline = time.monotonic() + seconds
    survivors = []
    for s in streams:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if s.recv(1) != b"":
                survivors.append(s)
        except TimeoutError:
            survivors.append(s)
        except OSError:
            pass
    flowing = 0
    for s in survivors:  # not merely slow: a revoked connection still carrying data
        with contextlib.suppress(OSError):
            s.sendall(b"x")
            flowing += s.recv(1) == b"x"
    for s in streams:
        s.close()
    return len(survivors), flowing
