"""A Ward pair against a HAProxy pair: CPU per new connection (full and resumed) and throughput.

Usage: scripts/bench pair [--ward BIN] [--runs N] [--conns N] [--mebibytes N] [--workers N] ...
(`python3 scripts/bench_pair.py --help` lists every option). --ward is the Ward binary under test
(default .build/release/ward, which `scripts/bench pair` builds unless --ward is given).

Topology, all on 127.0.0.1:

  client (plain TCP) -> A (client side: plain in, mTLS out) -> B (server side: mTLS in, plain out) -> echo

  Ward pair     A: `outbound:` entry `pair` (server_id spiffe://example.org/ns/bench/sa/b);
                B: a listener `svc` with rules allowing spiffe://example.org/**.
  HAProxy pair  A: `server ... ssl crt a ca-file bundle verify required`;
                B: `bind ... ssl crt b ca-file bundle verify required`. HAProxy cannot check
                SPIFFE IDs: its A verifies B's chain only, not B's ID.

Both pairs: ECDSA P-256 SVIDs (serverAuth+clientAuth, one SPIFFE URI SAN) from one example.org
CA, TLS 1.3; HAProxy is set to TLS_AES_128_GCM_SHA256 and the groups --groups on both sides (its
client side through an OpenSSL config: HAProxy 2.6 has no `curves` on server lines). Ward uses its
own choices; the script prints the version and cipher each pair negotiated (from the logs) and
the key shares and cipher suites each A offers (a ClientHello captured by a probe), so a
difference between the pairs is visible.

Method: A and B are pinned to --proxy-cores (default core 0, both), the load generator (this
script, --threads threads) and the echo upstream (bench/echo.c) to --client-cores (default 1).
Ward runs with `workers: --workers`, HAProxy with `nbthread --workers`. CPU is A's plus B's
utime+stime from /proc/PID/stat.

  full      CPU µs per connection through the pair: connect to A, 64-byte echo, close; --conns
            connections after --warmup untimed ones. Ward B `resumption: off`; HAProxy A
            `no-ssl-reuse`, B `no-tls-tickets` and no session cache.
  resumed   the same with resumption: Ward B `resumption: on` (Ward A resumes by itself);
            HAProxy's default per-server session reuse, B on stateless tickets (its default;
            --haproxy-resumption cache: B's session cache instead). The share of connections
            that really resumed is counted from the logs (Ward A: `resumed` on its allow lines; HAProxy:
            ssl_bc_is_resumed / ssl_fc_is_resumed in a log-format); under 90% is a loud warning,
            and so is any resumption in the full case.
  stream    MiB/s of one connection streaming --mebibytes through the pair and the echo and back
            (counted once), and the pair's CPU s per GiB. The same client straight to the echo
            gives the load generator's own ceiling, printed beside it.

Every start first checks that an echo passes through the pair, that A refuses a B it must not
trust (Ward: a server_id B does not have; HAProxy: a ca-file B's chain is not from), and that B
refuses a client of another trust domain, so no figure comes from a broken setup. Each run
measures the pairs in turn (the order alternates between runs); the table shows medians.
"""
import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from benchproc import cpu_seconds, sh, spawn, stop, stop_all  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("ward", "haproxy")
B_ID = "spiffe://example.org/ns/bench/sa/b"
A_ID = "spiffe://example.org/ns/bench/sa/a"
PAYLOAD = b"p" * 64
TARGETS = {"full": 0.7, "resumed": 0.4, "stream": 0.9}  # stream: Ward MiB/s at least 0.9x HAProxy's
GROUP_NAMES = {0x17: "P-256", 0x18: "P-384", 0x19: "P-521", 0x1D: "X25519", 0x1E: "X448",
               0x100: "ffdhe2048", 0x101: "ffdhe3072", 0x102: "ffdhe4096"}
SUITE_NAMES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
               0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0x1304: "TLS_AES_128_CCM_SHA256"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process, what, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{what} is not listening on {port}")
            time.sleep(0.05)


# --- the client side: plain TCP through A -----------------------------------------------------

def echo_once(port, timeout=10):
    """One connection: 64 bytes out, the same 64 back, close. True if the echo came back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return echoed(s)
    except OSError:
        return False


def echoed(s):
    """Sends PAYLOAD on `s` and reads it back: True if the same bytes came back."""
    s.sendall(PAYLOAD)
    got = b""
    while len(got) < len(PAYLOAD):
        chunk = s.recv(len(PAYLOAD) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == PAYLOAD


def connection_load(port, count, threads):
    """`count` connections (echo_once) from `threads` threads; returns (seconds, failures)."""
    counter = itertools.count()
    failures = [0] * threads

    def worker(index):
        while next(counter) < count:
            if not echo_once(port):
                failures[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.monotonic() - start, sum(failures)


def stream(port, mebibytes, on_done=None):
    """One connection streaming `mebibytes` through the echo and reading it all back; returns
    seconds, and calls on_done() the moment the last byte is back (before the close)."""
    total = mebibytes * 1024 * 1024
    chunk = memoryview(b"s" * (256 * 1024))
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    error = []

    def writer():
        try:
            left = total
            while left:
                n = min(left, len(chunk))
                s.sendall(chunk[:n])
                left -= n
        except OSError as e:
            error.append(e)

    buffer = bytearray(1024 * 1024)
    start = time.monotonic()
    thread = threading.Thread(target=writer)
    thread.start()
    got = 0
    try:
        while got < total:
            n = s.recv_into(buffer)
            if n == 0:
                break
            got += n
        elapsed = time.monotonic() - start
        if on_done:
            on_done()
    finally:
        thread.join()
        s.close()
    if got != total or error:
        sys.exit(f"stream through port {port}: {got} of {total} bytes came back {error or ''}")
    return elapsed


def tls_echo(port, cert, key, bundle):
    """Straight to B with a TLS client certificate: True if B echoes 64 bytes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(bundle)
    context.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw) as s:
                return echoed(s)
    except (OSError, ssl.SSLError):
        return False


class HelloProbe:
    """A TCP listener that reads one ClientHello and closes: what A offers (key shares, groups,
    cipher suites, versions)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.result = None
        self.thread = threading.Thread(target=self.accept)
        self.thread.start()

    def accept(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.result = parse_client_hello(data)
            except (OSError, ValueError, IndexError) as e:
                self.result = {"error": str(e)}

    def close(self):
        self.thread.join(timeout=15)
        self.listener.close()
        return self.result


def parse_client_hello(data):
    if len(data) < 9 or data[0] != 22 or data[5] != 1:
        raise ValueError("not a TLS ClientHello")
    body = data[9:5 + int.from_bytes(data[3:5], "big")]
    at = 2 + 32  # legacy version, random
    at += 1 + body[at]  # session id
    suites_length = int.from_bytes(body[at:at + 2], "big")
    suites = [int.from_bytes(body[i:i + 2], "big") for i in range(at + 2, at + 2 + suites_length, 2)]
    at += 2 + suites_length
    at += 1 + body[at]  # compression methods
    end = at + 2 + int.from_bytes(body[at:at + 2], "big")
    at += 2
    result = {"suites": [SUITE_NAMES.get(s, f"0x{s:04x}") for s in suites if s in SUITE_NAMES],
              "key_shares": [], "groups": [], "versions": []}
    while at + 4 <= end:
        kind, length = int.from_bytes(body[at:at + 2], "big"), int.from_bytes(body[at + 2:at + 4], "big")
        ext = body[at + 4:at + 4 + length]
        at += 4 + length
        if kind == 10:  # supported_groups
            result["groups"] = [GROUP_NAMES.get(int.from_bytes(ext[i:i + 2], "big"), "?")
                                for i in range(2, 2 + int.from_bytes(ext[:2], "big"), 2)]
        elif kind == 51:  # key_share
            i = 2
            while i + 4 <= 2 + int.from_bytes(ext[:2], "big"):
                group = int.from_bytes(ext[i:i + 2], "big")
                result["key_shares"].append(GROUP_NAMES.get(group, f"0x{group:04x}"))
                i += 4 + int.from_bytes(ext[i + 2:i + 4], "big")
        elif kind == 43:  # supported_versions
            names = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2"}
            result["versions"] = [names.get(int.from_bytes(ext[i:i + 2], "big"), "?")
                                  for i in range(1, 1 + ext[0], 2)]
    return result


def describe_hello(hello):
    if not hello or "error" in hello:
        return f"(no ClientHello captured: {hello and hello.get('error')})"
    return (f"key share {'+'.join(hello['key_shares']) or '-'}, groups {':'.join(hello['groups'])}, "
            f"suites {':'.join(hello['suites'])}, versions {':'.join(hello['versions'])}")


# --- logs -------------------------------------------------------------------------------------

def read_events(path, offset, kind):
    """Connection events written to `path` past `offset`: dicts with event, resumed, version, cipher."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        if kind == "ward":
            try:
                e = json.loads(line)
            except ValueError:
                continue
            events.append({"event": e.get("event"), "resumed": e.get("resumed"),
                           "version": e.get("tls_version"), "cipher": e.get("cipher")})
        elif line.startswith("pair "):  # HAProxy: one line per session, at its end
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            for event in ("allow", "close"):
                events.append({"event": event, "resumed": fields.get("resumed") == "1",
                               "version": fields.get("version"), "cipher": fields.get("cipher")})
    return events


def count(events, event):
    return sum(1 for e in events if e["event"] == event)


# --- the pairs --------------------------------------------------------------------------------

class Pair:
    """A and B of one kind, started with one mode (full or resumed), checked, ready to measure."""

    def __init__(self, bench, kind, mode):
        self.bench, self.kind, self.mode = bench, kind, mode
        self.work = os.path.join(bench.work, f"{kind}-{mode}-{next(bench.serial)}")
        os.makedirs(self.work)
        self.port_a, self.port_b, self.port_wrong = free_port(), free_port(), free_port()
        self.port_probe_listen = free_port()
        self.probe = HelloProbe()
        self.log_a, self.log_b = os.path.join(self.work, "a.log"), os.path.join(self.work, "b.log")
        self.processes = []
        try:
            if kind == "ward":
                self.start_ward()
            else:
                self.start_haproxy()
            self.check()
        except BaseException:
            self.close()
            raise

    @property
    def pids(self):
        return [p.pid for p in self.processes]

    def cpu(self):
        return sum(self.cpu_each())

    def cpu_each(self):
        """[B, A]: the order they were started in."""
        return [cpu_seconds(pid) for pid in self.pids]

    # --- Ward
    def start_ward(self):
        self.processes.append(self.start_ward_b())
        self.processes.append(self.start_ward_a())

    def start_ward_b(self):
        p, w = self.bench.pki, self.bench.args.workers
        rules = os.path.join(self.work, "rules.yaml")
        open(rules, "w").write("default: deny\nrules:\n"
                               "  - {name: bench, action: allow, from: [\"spiffe://example.org/**\"], to: [svc]}\n")
        config_b = os.path.join(self.work, "b.yaml")
        open(config_b, "w").write(f"""identity: {{cert: {p}/b.pem, key: {p}/b.key}}
trust_domains: {{example.org: {p}/example.org.bundle.pem}}
listeners:
  - {{name: svc, listen: "127.0.0.1:{self.port_b}", upstream: "127.0.0.1:{self.bench.upstream}"}}
rules: {rules}
log: {self.log_b}
admin: {self.work}/b.sock
workers: {w}
resumption: {"on" if self.mode == "resumed" else "off"}
""")
        return self.start_ward_process(config_b, "b")

    def start_ward_a(self):
        p, w = self.bench.pki, self.bench.args.workers
        config_a = os.path.join(self.work, "a.yaml")
        open(config_a, "w").write(f"""identity: {{cert: {p}/a.pem, key: {p}/a.key}}
trust_domains: {{example.org: {p}/example.org.bundle.pem}}
outbound:
  - name: pair
    listen: "127.0.0.1:{self.port_a}"
    target: "127.0.0.1:{self.port_b}"
    server_id: [{B_ID}]
  - name: wrong
    listen: "127.0.0.1:{self.port_wrong}"
    target: "127.0.0.1:{self.port_b}"
    server_id: [spiffe://example.org/ns/bench/sa/not-b]
  - name: probe
    listen: "127.0.0.1:{self.port_probe_listen}"
    target: "127.0.0.1:{self.probe.port}"
    server_id: [{B_ID}]
log: {self.log_a}
admin: {self.work}/a.sock
workers: {w}
""")
        return self.start_ward_process(config_a, "a")

    def start_ward_process(self, config, name):
        err_path = os.path.join(self.work, f"{name}.stderr")
        with open(err_path, "w") as err:
            process = spawn(["taskset", "-c", self.bench.args.proxy_cores, self.bench.args.ward, "run",
                             "--config", config], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 15
        while "ready:" not in open(err_path).read():
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                sys.exit(f"ward {name} ({self.bench.args.ward}) did not start:\n{open(err_path).read()}")
            time.sleep(0.05)
        return process

    # --- HAProxy
    def start_haproxy(self):
        p, args = self.bench.pki, self.bench.args
        full = self.mode == "full"
        # Resumed: TLS 1.3 tickets, HAProxy's default, or (--haproxy-resumption cache) B's
        # session cache, its tickets naming a cached session.
        no_tickets = full or args.haproxy_resumption == "cache"
        tls = "ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256"
        common = f"""defaults
  mode tcp
  option dontlognull
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  log stdout format raw local0
"""
        config_b = os.path.join(self.work, "b.cfg")
        open(config_b, "w").write(f"""global
  nbthread {args.workers}
{"  tune.ssl.cachesize 0" if full else ""}
{common}
frontend pair
  bind 127.0.0.1:{self.port_b} ssl crt {p}/b.combined.pem ca-file {p}/example.org.bundle.pem verify required {tls} curves {args.groups}{" no-tls-tickets" if no_tickets else ""}
  log-format "pair resumed=%[ssl_fc_is_resumed] version=%[ssl_fc_protocol] cipher=%[ssl_fc_cipher]"
  default_backend echo
backend echo
  server echo 127.0.0.1:{self.bench.upstream}
""")
        server = f"ssl crt {p}/a.combined.pem verify required {tls}" + (" no-ssl-reuse" if full else "")
        config_a = os.path.join(self.work, "a.cfg")
        open(config_a, "w").write(f"""global
  nbthread {args.workers}
{common}
frontend pair
  bind 127.0.0.1:{self.port_a}
  log-format "pair resumed=%[ssl_bc_is_resumed] version=%[ssl_bc_protocol] cipher=%[ssl_bc_cipher]"
  default_backend pair
backend pair
  server b 127.0.0.1:{self.port_b} {server} ca-file {p}/example.org.bundle.pem
frontend wrong
  bind 127.0.0.1:{self.port_wrong}
  no log
  default_backend wrong
backend wrong
  server b 127.0.0.1:{self.port_b} {server} ca-file {p}/partner.org.bundle.pem
frontend probe
  bind 127.0.0.1:{self.port_probe_listen}
  no log
  default_backend probe
backend probe
  server probe 127.0.0.1:{self.probe.port} {server} ca-file {p}/example.org.bundle.pem
""")
        # HAProxy 2.6 sets no groups on server lines: A's client side takes them from OpenSSL's
        # system default, through its own OpenSSL config.
        openssl_conf = os.path.join(self.work, "openssl-a.cnf")
        open(openssl_conf, "w").write(f"""openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = tls
[tls]
Groups = {args.groups}
""")
        for name, config, port in (("b", config_b, self.port_b), ("a", config_a, self.port_a)):
            out = open(os.path.join(self.work, f"{name}.log"), "w")
            err = open(os.path.join(self.work, f"{name}.stderr"), "w")
            env = dict(os.environ, OPENSSL_CONF=openssl_conf) if name == "a" else None
            process = spawn(["taskset", "-c", args.proxy_cores, "haproxy", "-f", config], stdout=out, stderr=err,
                            env=env)
            out.close()
            err.close()
            self.processes.append(process)
            wait_listening(port, process, f"haproxy {name}")

    # --- checks and measurements
    def check(self):
        p = self.bench.pki
        results = {
            "echo through the pair": echo_once(self.port_a),
            "A refuses a B it must not trust": not echo_once(self.port_wrong),
            "B echoes for A's SVID": tls_echo(self.port_b, f"{p}/a.pem", f"{p}/a.key", f"{p}/example.org.bundle.pem"),
            "B refuses another trust domain's client": not tls_echo(self.port_b, f"{p}/billing.pem", f"{p}/billing.key",
                                                                    f"{p}/example.org.bundle.pem"),
        }
        echo_once(self.port_probe_listen, timeout=5)
        self.hello = self.probe.close()
        failed = [name for name, ok in results.items() if not ok]
        if failed:
            sys.exit(f"{self.kind} pair ({self.mode}): validity check failed: {', '.join(failed)}; "
                     f"logs and configs in {self.work}")

    def settle(self, expected_a, expected_b, offsets, seconds=15):
        """Waits until A and B logged the close of `expected_*` connections past `offsets`."""
        deadline = time.monotonic() + seconds
        while True:
            a = read_events(self.log_a, offsets[0], self.kind)
            b = read_events(self.log_b, offsets[1], self.kind)
            if count(a, "close") >= expected_a and count(b, "close") >= expected_b:
                return a, b
            if time.monotonic() > deadline:
                print(f"warning: {self.kind} pair ({self.mode}): after {seconds} s, A logged {count(a, 'close')} and "
                      f"B {count(b, 'close')} closes of {expected_a} connections", flush=True)
                return a, b
            time.sleep(0.05)

    def offsets(self):
        return [os.path.getsize(path) if os.path.exists(path) else 0 for path in (self.log_a, self.log_b)]

    def connections(self, conns, warmup, threads):
        """CPU µs per connection over `conns` connections, after `warmup` untimed ones."""
        time.sleep(0.2)  # the checks' log lines
        offsets = self.offsets()
        _, failures = connection_load(self.port_a, warmup, threads)
        self.settle(warmup - failures, warmup - failures, offsets)
        time.sleep(0.1)
        offsets = self.offsets()
        before = self.cpu_each()
        seconds, failures = connection_load(self.port_a, conns, threads)
        a, b = self.settle(conns - failures, conns - failures, offsets)
        used_b, used_a = [after - start for after, start in zip(self.cpu_each(), before)]
        used = used_a + used_b
        if failures:
            sys.exit(f"{self.kind} pair ({self.mode}): {failures} of {conns} connections failed; logs in {self.work}")
        allowed_a = [e for e in a if e["event"] == "allow"]
        allowed_b = [e for e in b if e["event"] == "allow"]
        if len(allowed_a) != conns or len(allowed_b) != conns:
            print(f"warning: {self.kind} pair ({self.mode}): logged allow lines A {len(allowed_a)}, "
                  f"B {len(allowed_b)}, for {conns} connections", flush=True)
        resumed_b = [e for e in allowed_b if e["resumed"] is not None]
        return {
            "cpu_us": used / conns * 1e6,
            "cpu_a_us": used_a / conns * 1e6,
            "cpu_b_us": used_b / conns * 1e6,
            "conns_per_s": conns / seconds,
            "connections": conns,
            "resumed_a": sum(1 for e in allowed_a if e["resumed"]),
            "resumed_b": sum(1 for e in resumed_b if e["resumed"]) if resumed_b else None,
            "allowed_a": len(allowed_a),
            "tls": sorted({f"{e['version']} {e['cipher']}" for e in allowed_a + allowed_b if e["version"]}),
        }

    def throughput(self, mebibytes):
        before = self.cpu()
        after = []
        seconds = stream(self.port_a, mebibytes, on_done=lambda: after.append(self.cpu()))
        return {"mib_per_s": mebibytes / seconds, "cpu_s_per_gib": (after[0] - before) / (mebibytes / 1024)}

    def close(self):
        for process in reversed(self.processes):
            stop(process)
        if getattr(self, "probe", None) and self.probe.thread.is_alive():
            self.probe.listener.close()
            self.probe.thread.join(timeout=5)


class Bench:
    def __init__(self, args):
        self.args = args
        self.serial = itertools.count(1)
        self.work = tempfile.mkdtemp(prefix="ward-pair-")
        self.bin = os.path.join(REPO, ".build-bench")
        os.makedirs(self.bin, exist_ok=True)
        echo_bin = os.path.join(self.bin, "echo")
        sh("gcc", "-O2", "-o", echo_bin, os.path.join(REPO, "bench", "echo.c"))
        self.pki = os.path.join(self.work, "pki")
        sh(os.path.join(REPO, "scripts", "gen-dev-pki"), self.pki)
        self.svid("a", A_ID)
        self.svid("b", B_ID)
        for name in ("a", "b"):
            with open(os.path.join(self.pki, f"{name}.combined.pem"), "w") as out:
                out.write(open(os.path.join(self.pki, f"{name}.pem")).read()
                          + open(os.path.join(self.pki, f"{name}.key")).read())
        self.echo = spawn(["taskset", "-c", args.client_cores, echo_bin, "0"], stdout=subprocess.PIPE, text=True)
        self.upstream = int(self.echo.stdout.readline())

    def svid(self, name, spiffe_id):
        """An ECDSA P-256 SVID from the example.org dev CA, as scripts/gen-dev-pki makes them."""
        p = self.pki
        sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"{p}/{name}.key", "-out", f"{p}/{name}.csr", "-subj", "/O=SPIFFE")
        open(f"{p}/{name}.ext", "w").write(
            f"subjectAltName=URI:{spiffe_id}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
        sh("openssl", "x509", "-req", "-in", f"{p}/{name}.csr", "-CA", f"{p}/example.org-ca.pem",
           "-CAkey", f"{p}/example.org-ca.key", "-set_serial", "0x" + os.urandom(8).hex(), "-days", "1",
           "-extfile", f"{p}/{name}.ext", "-out", f"{p}/{name}.pem")
        os.remove(f"{p}/{name}.csr")
        os.remove(f"{p}/{name}.ext")
        os.chmod(f"{p}/{name}.pem", 0o644)

    def close(self):
        stop(self.echo)
        if self.args.keep:
            print(f"work folder kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def ceiling(self):
        """The load generator's own stream rate, straight to the echo."""
        return self.args.mebibytes / stream(self.upstream, self.args.mebibytes)

    def measure(self, kind, mode):
        pair = Pair(self, kind, mode)
        try:
            result = pair.connections(self.args.conns, self.args.warmup, self.args.threads)
            if mode == "resumed" and self.args.mebibytes:
                result.update(pair.throughput(self.args.mebibytes))
            result["hello"] = pair.hello
            return result
        finally:
            pair.close()


# --- results ----------------------------------------------------------------------------------

def haproxy_label():
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    version = out.split("version ", 1)[1].split("-")[0].rsplit(".", 1)[0] if "version " in out else ""
    return f"HAProxy {version} pair".replace("  ", " ")


def median(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def resumed_share(sample):
    return sample["resumed_a"] / sample["connections"]


def tables(args, kinds, results, ceiling, names):
    rows = [("full handshake CPU/conn (µs)", "full", "cpu_us", "{:.0f}", "≤ 0.70", lambda r: r <= TARGETS["full"]),
            ("resumed CPU/conn (µs)", "resumed", "cpu_us", "{:.0f}", "≤ 0.40", lambda r: r <= TARGETS["resumed"])]
    if args.mebibytes:
        rows.append(("stream throughput (MiB/s)", "resumed", "mib_per_s", "{:.0f}", "≥ 0.90",
                     lambda r: r >= TARGETS["stream"]))
    both = len(kinds) == 2
    lines = ["| figure | " + " | ".join(names[k] for k in KINDS) + " | Ward / HAProxy | target | pass/fail |",
             "|---|---:|---:|---:|---:|---|"]
    verdicts = {}
    for label, mode, key, fmt, target, ok in rows:
        values = {k: median(results[k][mode], key) if k in kinds else None for k in KINDS}
        cells = [fmt.format(values[k]) if values[k] is not None else "—" for k in KINDS]
        if both and values["haproxy"]:
            ratio = values["ward"] / values["haproxy"]
            verdict = "pass" if ok(ratio) else "FAIL"
            cells += [f"{ratio:.2f}", target, verdict]
        else:
            verdict = None
            cells += ["—", target, "—"]
        verdicts[label] = verdict
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    # Beside the targets: what makes the figures trustworthy, and what they rest on.
    extra = [("full: A's CPU/conn (µs)", "full", "cpu_a_us", "{:.0f}"),
             ("full: B's CPU/conn (µs)", "full", "cpu_b_us", "{:.0f}"),
             ("resumed: A's CPU/conn (µs)", "resumed", "cpu_a_us", "{:.0f}"),
             ("resumed: B's CPU/conn (µs)", "resumed", "cpu_b_us", "{:.0f}"),
             ("connections/s, full (A and B sharing --proxy-cores)", "full", "conns_per_s", "{:.0f}"),
             ("connections/s, resumed", "resumed", "conns_per_s", "{:.0f}")]
    if args.mebibytes:
        extra.append(("stream: pair CPU s per GiB", "resumed", "cpu_s_per_gib", "{:.2f}"))
    lines += ["", "| also measured | " + " | ".join(names[k] for k in KINDS) + " | Ward / HAProxy |",
              "|---|---:|---:|---:|"]
    for label, mode, key, fmt in extra:
        values = {k: median(results[k][mode], key) if k in kinds else None for k in KINDS}
        ratio = f"{values['ward'] / values['haproxy']:.2f}" if both and values["haproxy"] else "—"
        lines.append(f"| {label} | " + " | ".join(fmt.format(values[k]) if values[k] is not None else "—"
                                                   for k in KINDS) + f" | {ratio} |")
    for mode in ("full", "resumed"):
        cells = []
        for k in KINDS:
            if k not in kinds:
                cells.append("—")
                continue
            cell = ", ".join(f"{s['resumed_a']}/{s['connections']}" for s in results[k][mode])
            if any(s["resumed_b"] is not None for s in results[k][mode]):
                cell += " (B: " + ", ".join(f"{s['resumed_b']}" for s in results[k][mode]) + ")"
            cells.append(cell)
        lines.append(f"| resumed/connections per run, {mode} (A's log; B's where it logs it) | " + " | ".join(cells)
                     + " | |")
    lines.append("| negotiated (logs) | " + " | ".join(
        "<br>".join(sorted({t for mode in results[k] for s in results[k][mode] for t in s["tls"]})) or "?"
        if k in kinds else "—" for k in KINDS) + " | |")
    lines.append("| A's ClientHello (probe) | " + " | ".join(
        describe_hello(next((s["hello"] for s in results[k]["full"]), None)) if k in kinds else "—"
        for k in KINDS) + " | |")
    if args.mebibytes:
        lines.append(f"| load generator's stream ceiling, straight to the echo (MiB/s) | {ceiling:.0f} | | |")

    notes = [f"Medians of {args.runs} run(s), the pairs in turn within each run (order alternating); "
             f"{args.conns} connections ({args.warmup} untimed first) from {args.threads} client threads; "
             f"Ward workers {args.workers}, HAProxy nbthread {args.workers}; A and B on core(s) {args.proxy_cores}, "
             f"client and echo on core(s) {args.client_cores}. CPU = A + B utime+stime from /proc/PID/stat.",
             "HAProxy's A verifies B's chain against the CA (verify required ca-file) but cannot check B's "
             "SPIFFE ID; Ward's A checks server_id. Both B sides require and verify a client certificate."]
    warnings = []
    for k in kinds:
        for s in results[k]["resumed"]:
            if resumed_share(s) < 0.9:
                warnings.append(f"**WARNING**: {names[k]}, resumed case: only {100 * resumed_share(s):.0f}% of "
                                "connections resumed in a run: its CPU/conn is not a resumed figure.")
        for s in results[k]["full"]:
            if s["resumed_a"]:
                warnings.append(f"**WARNING**: {names[k]}, full case: {s['resumed_a']} of {s['connections']} "
                                "connections resumed: its CPU/conn is not a full-handshake figure.")
    if both:
        hellos = {k: next((s["hello"] for s in results[k]["full"]), None) or {} for k in kinds}
        if hellos["ward"].get("key_shares") != hellos["haproxy"].get("key_shares"):
            warnings.append("**WARNING**: the two A sides offer different key shares (see the probe row): the "
                            "pairs do not run the same key exchange (--groups sets HAProxy's).")
        tls = {k: {t for mode in results[k] for s in results[k][mode] for t in s["tls"]} for k in kinds}
        if tls["ward"] != tls["haproxy"]:
            warnings.append("**WARNING**: the pairs negotiated different versions or ciphers (see the row above).")
    if args.mebibytes and kinds:
        best = max(median(results[k]["resumed"], "mib_per_s") for k in kinds)
        if best > 0.7 * ceiling:
            warnings.append(f"**WARNING**: a pair streamed {best:.0f} MiB/s, over 70% of what the load generator "
                            f"reaches straight to the echo ({ceiling:.0f}): the stream figures may be the load "
                            "generator's limit, not the pair's.")
    return lines + [""] + notes + [""] + [line for w in warnings for line in (w, "")] + [f"Ward: {args.ward}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ward", default=os.path.join(REPO, ".build", "release", "ward"),
                        help="the Ward binary under test (default .build/release/ward)")
    parser.add_argument("--runs", type=int, default=3, help="runs; each measures every pair in turn (default 3)")
    parser.add_argument("--conns", type=int, default=3000, help="timed connections per measurement (default 3000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed connections first (default 100)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--mebibytes", type=int, default=1024,
                        help="MiB streamed for the throughput (default 1024; 0 skips it)")
    parser.add_argument("--workers", type=int, default=1, help="Ward workers and HAProxy nbthread (default 1)")
    parser.add_argument("--groups", default="X25519:P-256:P-384",
                        help="key exchange groups of both HAProxies (default X25519:P-256:P-384, Ward's own list)")
    parser.add_argument("--haproxy-resumption", choices=("tickets", "cache"), default="tickets",
                        help="HAProxy B's resumption: stateless tickets (default, HAProxy's default) or its "
                             "session cache (no-tls-tickets)")
    parser.add_argument("--proxy-cores", default="0", help="cores of A and B (taskset -c; default 0)")
    parser.add_argument("--client-cores", default="1", help="cores of the client and the echo (default 1)")
    parser.add_argument("--pairs", default="ward,haproxy", help="pairs to measure (default ward,haproxy)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    args = parser.parse_args()
    args.ward = os.path.abspath(args.ward)
    kinds = [k for k in KINDS if k in args.pairs.split(",")]
    if not kinds:
        sys.exit("--pairs: ward, haproxy or both")
    if "ward" in kinds and not os.access(args.ward, os.X_OK):
        sys.exit(f"not an executable: {args.ward}")
    if "haproxy" in kinds and not shutil.which("haproxy"):
        sys.exit("haproxy missing (scripts/bench pair installs it)")
    os.sched_setaffinity(0, {int(c) for c in args.client_cores.split(",")})
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit("stopped by signal"))
    names = {"ward": "Ward pair", "haproxy": haproxy_label()}
    print(f"ward: {args.ward}" if "ward" in kinds else "ward: not measured", flush=True)
    bench = None
    try:
        bench = Bench(args)
        ceiling = bench.ceiling() if args.mebibytes else 0
        if args.mebibytes:
            print(f"load generator straight to the echo: {ceiling:.0f} MiB/s", flush=True)
        results = {k: {"full": [], "resumed": []} for k in kinds}
        for run in range(args.runs):
            order = kinds if run % 2 == 0 else list(reversed(kinds))
            for mode in ("full", "resumed"):
                for kind in order:
                    r = bench.measure(kind, mode)
                    results[kind][mode].append(r)
                    stream_text = (f", stream {r['mib_per_s']:.0f} MiB/s, {r['cpu_s_per_gib']:.2f} CPU s/GiB"
                                   if "mib_per_s" in r else "")
                    print(f"run {run + 1} {kind} {mode}: {r['cpu_us']:.0f} µs/conn (A {r['cpu_a_us']:.0f}, "
                          f"B {r['cpu_b_us']:.0f}), {r['conns_per_s']:.0f} conns/s, "
                          f"resumed {r['resumed_a']}/{r['connections']}{stream_text}", flush=True)
        markdown = "\n".join(tables(args, kinds, results, ceiling, names))
        print("\n" + markdown)
        os.makedirs(args.out, exist_ok=True)
        open(os.path.join(args.out, "pair.md"), "w").write(markdown + "\n")
        json.dump({"ward": args.ward, "haproxy": names["haproxy"], "ceiling_mib_per_s": ceiling,
                   "args": vars(args), "runs": results}, open(os.path.join(args.out, "pair.json"), "w"), indent=1)
    finally:
        stop_all()
        if bench:
            bench.close()


if __name__ == "__main__":
    main()
