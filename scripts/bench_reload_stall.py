"""Reload stall: how long a reload holds up traffic on open connections, new Ward against a baseline.

Run by `scripts/bench reload-stall [--ward BIN] [--baseline BIN] [--conns 1000,6000]`. For each
binary (the baseline first, if given) and each N, with `workers: 1`:

  - Ward is pinned to core 0 with taskset; everything else (the epoll echo upstream bench/echo.c,
    the clients, this script) to core 1, as in bench_proxy.py;
  - N idle allowed mTLS connections are opened (bench/loadgen.c `idle`, several in parallel) and
    held open for the whole run;
  - one active client (this script's `pinger` mode, its own process) sends 64 bytes through Ward
    every 1 ms on its own allowed connection and records every round trip (closed loop: a stall
    of D ms is one sample of D ms);
  - then, each in turn:
      quiet   no reloads for a few seconds: the noise floor;
      noop    20 `POST /reload` with nothing changed on disk;
      rules   20 reloads toggling between two rules files that both allow every open connection
              (the generation moves, nothing is revoked);
      bundle  20 reloads toggling the trust bundle between the CA and the CA plus one unrelated
              CA: every open connection's chain must be re-verified;
      burst   rules-change reloads at 20/s for 5 s, then until the echo recovers.
    Reloads of noop/rules/bundle are spaced by --interval seconds and never start before the
    previous one's effect has ended (the last 50 round trips under 10 ms, Ward's CPU back to its
    quiet rate), so each reload is seen on its own.

Figures per scenario and N:
  max / p99   of the echo round trips overlapping the scenario's window (first reload to settled);
  slowed      the sum of round trips over 5 ms, per reload: how much echo time the reload cost,
              whether as one long stall or as many slowed round trips;
  reload cmd  median wall time of `POST /reload` on the admin socket (returns after publication);
  CPU         Ward's CPU (all threads, /proc/PID/task/*/schedstat) per reload, from --cpu-reloads
              more reloads of the same kind with the active client paused; for the burst, the CPU
              beyond the quiet rate with the client running, over its reloads.
It checks that no connection was revoked or closed, that the pinger never failed and which
reloads published a generation (from the log), so no figure comes from a broken setup. Prints
one Markdown table; the old Ward is the baseline.

Everything runs on loopback; every process this script starts is stopped on exit, failure included.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from benchproc import cpu_seconds, raise_nofile, sh, spawn, stop, stop_all  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = struct.Struct("dd")  # start (CLOCK_MONOTONIC seconds), round trip (seconds)
WARD_CORE, LOAD_CORE = "0", "1"
SLOW_MS = 5.0  # a round trip over this counts as slowed down


# --- the active client --------------------------------------------------------------------------

def pinger(port, pki, out_path, seconds):
    """One allowed connection; 64 bytes every 1 ms, each round trip appended to `out_path`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(f"{pki}/example.org.bundle.pem")
    ctx.load_cert_chain(f"{pki}/web.pem", f"{pki}/web.key")
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    payload = b"p" * 64
    end = time.monotonic() + seconds
    tick = time.monotonic()
    while time.monotonic() < end:
        start = time.monotonic()
        tls.sendall(payload)
        got = 0
        while got < 64:
            chunk = tls.recv(64 - got)
            if not chunk:
                sys.exit("pinger: connection closed by ward")
            got += len(chunk)
        os.write(out, SAMPLE.pack(start, time.monotonic() - start))
        tick += 0.001
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()


class Samples:
    """Reads the pinger's samples as it appends them."""

    def __init__(self, path):
        self.path, self.offset, self.items = path, 0, []

    def refresh(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = len(data) - len(data) % SAMPLE.size
        self.items += SAMPLE.iter_unpack(data[:whole])
        self.offset += whole
        return self.items

    def window(self, start, end):
        """Round trips (ms) of the samples overlapping [start, end]."""
        return [rtt * 1000 for t, rtt in self.refresh() if t <= end and t + rtt >= start]

    def settled(self, after, count=50, limit_ms=10.0):
        """True once `count` round trips that started after `after` all took under `limit_ms`."""
        recent = [rtt for t, rtt in self.refresh()[-count:] if t >= after]
        return len(recent) == count and max(recent) * 1000 < limit_ms


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# --- Ward ---------------------------------------------------------------------------------------

RULES = [
    "default: deny\nrules:\n"
    "  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n",
    "default: deny\nrules:\n"
    "  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"
    "  - {name: extra, action: allow, from: [spiffe://example.org/ns/other/sa/extra], to: [svc]}\n",
]


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def post_reload(sock_path):
    """`POST /reload` on the admin socket; returns (wall ms, response body)."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(sock_path)
        s.sendall(b"POST /reload HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    elapsed = (time.monotonic() - started) * 1000
    head, _, body = response.decode().partition("\r\n\r\n")
    if head.split()[1:2] != ["200"]:
        raise SystemExit(f"reload refused: {head.splitlines()[0]} {body}")
    return elapsed, body


class Run:
    """One Ward binary with N idle connections and the pinger."""

    def __init__(self, bench, binary, label, conns):
        self.bench, self.binary, self.label, self.conns = bench, binary, label, conns
        self.work = tempfile.mkdtemp(prefix=f"rs-{label}-{conns}-", dir=bench.work)
        self.rules_path = os.path.join(self.work, "rules.yaml")
        self.bundle_path = os.path.join(self.work, "bundle.pem")
        self.sock = os.path.join(self.work, "admin.sock")
        self.log = os.path.join(self.work, "connections.log")
        self.toggle = {"rules": 0, "bundle": 0}
        write_atomically(self.rules_path, RULES[0])
        write_atomically(self.bundle_path, bench.bundles[0])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        pki = bench.pki
        # Only keys both the old and the new Ward know.
        config = os.path.join(self.work, "ward.yaml")
        with open(config, "w") as f:
            f.write(f"""identity: {{cert: {pki}/ward.pem, key: {pki}/ward.key}}
trust_domains: {{example.org: bundle.pem}}
listeners: [{{name: svc, listen: "127.0.0.1:{self.port}", upstream: "127.0.0.1:{bench.upstream}"}}]
rules: rules.yaml
log: connections.log
admin: admin.sock
workers: 1
""")
        self.stderr_path = os.path.join(self.work, "ward.stderr")
        self.ward = spawn(["taskset", "-c", WARD_CORE, binary, "run", "--config", config],
                          stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "w"))
        deadline = time.monotonic() + 30
        while "ready:" not in open(self.stderr_path).read():
            if self.ward.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{label}: ward did not start: {open(self.stderr_path).read()}")
            time.sleep(0.05)
        self.open_idle()
        self.samples_path = os.path.join(self.work, "samples.bin")
        open(self.samples_path, "wb").close()
        self.samples = Samples(self.samples_path)
        self.pinger = spawn([sys.executable, os.path.abspath(__file__), "pinger", str(self.port), pki,
                             self.samples_path, "900"])
        deadline = time.monotonic() + 15
        while len(self.samples.refresh()) < 500:
            if self.pinger.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{label}: the pinger did not get its echoes")
            time.sleep(0.05)

    def open_idle(self):
        """N idle allowed connections, opened by `bench.parallel` loadgen processes at once."""
        started = time.monotonic()
        self.idle = []
        parts = self.bench.args.parallel
        for i in range(parts):
            count = self.conns // parts + (1 if i < self.conns % parts else 0)
            self.idle.append(spawn([self.bench.loadgen, "idle", "127.0.0.1", str(self.port), *self.bench.client,
                                    str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for process in self.idle:
            line = process.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"{self.label}: opening idle connections failed (ulimit -n? {line!r})")
        print(f"  {self.label}: {self.conns} idle connections open in {time.monotonic() - started:.1f} s",
              flush=True)

    def change(self, kind):
        if kind == "rules":
            self.toggle["rules"] ^= 1
            write_atomically(self.rules_path, RULES[self.toggle["rules"]])
        elif kind == "bundle":
            self.toggle["bundle"] ^= 1
            write_atomically(self.bundle_path, self.bench.bundles[self.toggle["bundle"]])

    def wait_settled(self, after, bound=30.0):
        """Until the echo is fast again after `after` and Ward's CPU is back to the quiet rate
        (a sliced re-check may still be running without stalling anything)."""
        deadline = time.monotonic() + bound
        while not self.samples.settled(after) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.wait_cpu_idle(getattr(self, "quiet_cpu_rate", 0) + 0.1, deadline)

    def wait_cpu_idle(self, rate, deadline):
        """Until Ward used less than `rate` of a core over 100 ms (or the deadline passed)."""
        cpu, at = cpu_seconds(self.ward.pid), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now_cpu, now = cpu_seconds(self.ward.pid), time.monotonic()
            if (now_cpu - cpu) / (now - at) < rate:
                return
            cpu, at = now_cpu, now

    def quiet(self, seconds):
        start, cpu = time.monotonic(), cpu_seconds(self.ward.pid)
        time.sleep(seconds)
        end = time.monotonic()
        self.quiet_cpu_rate = (cpu_seconds(self.ward.pid) - cpu) / (end - start)
        return self.result("quiet", start, end, [], 0, 0)

    def series(self, kind, reloads, interval):
        """`reloads` reloads of one kind, each after the previous one's stall ended."""
        generation = self.generation()
        self.wait_settled(time.monotonic())
        start = time.monotonic()
        commands = []
        for _ in range(reloads):
            began = time.monotonic()
            self.change(kind)
            commands.append(post_reload(self.sock)[0])
            time.sleep(max(0.0, began + interval - time.monotonic()))
            self.wait_settled(began)
        end = time.monotonic()
        row = self.result(kind, start, end, commands, self.generation() - generation, reloads)
        row["cpu_per_reload_ms"] = self.cpu_per_reload(kind, self.bench.args.cpu_reloads)
        return row

    def cpu_per_reload(self, kind, reloads):
        """Ward's CPU per reload of `kind`, measured with the pinger paused, so the only work is
        the reload (the build on the control thread and the worker's re-check)."""
        if reloads <= 0:
            return float("nan")
        os.kill(self.pinger.pid, signal.SIGSTOP)
        try:
            used = 0.0
            for _ in range(reloads):
                self.wait_cpu_idle(0.02, time.monotonic() + 30)
                before, began = cpu_seconds(self.ward.pid), time.monotonic()
                self.change(kind)
                post_reload(self.sock)
                # At least past the file watcher's 200 ms debounce: its look at the files counts too.
                time.sleep(max(0.0, began + 0.3 - time.monotonic()))
                self.wait_cpu_idle(0.02, time.monotonic() + 30)
                used += cpu_seconds(self.ward.pid) - before
            return used / reloads * 1000
        finally:
            os.kill(self.pinger.pid, signal.SIGCONT)

    def burst(self, rate, seconds):
        generation = self.generation()
        self.wait_settled(time.monotonic())
        start, cpu = time.monotonic(), cpu_seconds(self.ward.pid)
        commands, n = [], 0
        while time.monotonic() < start + seconds:
            self.change("rules")
            commands.append(post_reload(self.sock)[0])
            n += 1
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
        last = time.monotonic()
        self.wait_settled(last)
        end = time.monotonic()
        used = cpu_seconds(self.ward.pid) - cpu - self.quiet_cpu_rate * (end - start)
        row = self.result("burst", start, end, commands, self.generation() - generation, n)
        row["recovery_s"] = end - last
        # With the pinger running: Ward's CPU beyond its quiet rate (noisier than the series').
        row["cpu_per_reload_ms"] = used / n * 1000
        return row

    def generation(self):
        # A no-op reload of the new Ward reports the running generation and publishes nothing;
        # the old one publishes on every admin reload. The log's reload lines say which.
        generation = 1  # the start-up generation, which has no reload line
        for line in open(self.log):
            if '"event":"reload"' in line:
                record = json.loads(line)
                if record.get("ok"):
                    generation = max(generation, record.get("generation", 0))
        return generation

    def result(self, kind, start, end, commands, published, reloads):
        time.sleep(0.05)  # the round trip in flight at `end` completes
        rtts = self.samples.window(start, end)
        slow = sum(r for r in rtts if r > SLOW_MS)
        return {
            "kind": kind, "n": self.conns, "samples": len(rtts), "max": max(rtts), "p99": percentile(rtts, 0.99),
            "p50": percentile(rtts, 0.5), "reloads": reloads, "published": published,
            "slow_per_reload_ms": slow / reloads if reloads else slow / (end - start),
            "cmd_median": statistics.median(commands) if commands else 0.0, "cmd_max": max(commands, default=0.0),
            "duration": end - start,
        }

    def finish(self):
        """Checks that nothing was revoked or closed and the pinger still runs; stops everything."""
        problems = []
        if self.pinger.poll() is not None:
            problems.append(f"the pinger exited ({self.pinger.returncode})")
        if self.ward.poll() is not None:
            problems.append(f"ward exited ({self.ward.returncode})")
        events = [line for line in open(self.log) if '"event":"revoke"' in line or '"event":"close"' in line]
        if events:
            problems.append(f"{len(events)} revoke/close lines, first: {events[0].strip()}")
        for process in self.idle:
            process.stdin.close()
        for process in [self.pinger, *self.idle, self.ward]:
            stop(process)
        if problems:
            raise SystemExit(f"{self.label} N={self.conns}: " + "; ".join(problems))


# --- the bench ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="ward-bench-stall-")
        build = os.path.join(REPO, ".build-bench")
        os.makedirs(build, exist_ok=True)
        self.loadgen = os.path.join(build, "loadgen")
        echo = os.path.join(build, "echo")
        sh("gcc", "-O2", "-o", self.loadgen, os.path.join(REPO, "bench", "loadgen.c"), "-lssl", "-lcrypto",
           "-lpthread")
        sh("gcc", "-O2", "-o", echo, os.path.join(REPO, "bench", "echo.c"))
        self.pki = os.path.join(self.work, "pki")
        sh(os.path.join(REPO, "scripts", "gen-dev-pki"), self.pki)
        # An unrelated CA: appended to the bundle, it changes the trust domain's bundle digest
        # without revoking anyone.
        sh("openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", os.path.join(self.pki, "extra-ca.key"), "-out", os.path.join(self.pki, "extra-ca.pem"),
           "-days", "30", "-subj", "/O=example.org/CN=unrelated extra root",
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        ca = open(os.path.join(self.pki, "example.org-ca.pem")).read()
        self.bundles = [ca, ca + open(os.path.join(self.pki, "extra-ca.pem")).read()]
        self.client = [f"{self.pki}/web.pem", f"{self.pki}/web.key", f"{self.pki}/example.org.bundle.pem"]
        self.echo = spawn(["taskset", "-c", LOAD_CORE, echo, "0"], stdout=subprocess.PIPE, text=True)
        self.upstream = int(self.echo.stdout.readline())

    def measure(self, binary, label, conns):
        run = Run(self, binary, label, conns)
        try:
            rows = [run.quiet(self.args.quiet)]
            for kind in ("noop", "rules", "bundle"):
                rows.append(run.series(kind, self.args.reloads, self.args.interval))
                print(f"  {label} N={conns} {kind}: max {rows[-1]['max']:.1f} ms, p99 {rows[-1]['p99']:.2f} ms, "
                      f"reload {rows[-1]['cmd_median']:.1f} ms, published {rows[-1]['published']}", flush=True)
            rows.append(run.burst(self.args.burst_rate, self.args.burst_seconds))
            print(f"  {label} N={conns} burst: max {rows[-1]['max']:.1f} ms, {rows[-1]['reloads']} reloads, "
                  f"recovered {rows[-1]['recovery_s']:.2f} s after the last", flush=True)
        finally:
            run.finish()
        return rows


SCENARIOS = {
    "quiet": "quiet (no reload)",
    "noop": "no-op reload",
    "rules": "rules change",
    "bundle": "bundle change",
    "burst": "burst (rules reloads at {rate:g}/s for {seconds:g} s)",
}


def table(results, labels, args):
    """One row per scenario and N; old and new side by side when there is a baseline."""
    both = len(labels) == 2
    if both:
        head = ["scenario", "N", "old max / p99 ms", "new max / p99 ms", "max old/new", "p99 old/new",
                f"slowed old / new ms per reload", "reload cmd old / new ms", "CPU per reload old / new ms"]
    else:
        head = ["scenario", "N", "max / p99 ms", f"slowed ms per reload", "reload cmd ms (median / max)",
                "CPU per reload ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for conns in sorted({r["n"] for r in results[labels[0]]}):
        for kind in SCENARIOS:
            rows = [next(r for r in results[label] if r["n"] == conns and r["kind"] == kind) for label in labels]
            cells = [SCENARIOS[kind].format(rate=args.burst_rate, seconds=args.burst_seconds), f"{conns:,}"]
            cells += [f"{r['max']:.1f} / {r['p99']:.1f}" for r in rows]
            if both:
                old, new = rows
                cells += [f"{old['max'] / new['max']:.1f}x", f"{old['p99'] / new['p99']:.1f}x"]
            if kind == "quiet":
                cells += [""] * (3 if both else 3)
            else:
                cells.append(" / ".join(f"{r['slow_per_reload_ms']:.0f}" for r in rows))
                cells.append(" / ".join(f"{r['cmd_median']:.1f}" for r in rows) if both
                             else f"{rows[0]['cmd_median']:.1f} / {rows[0]['cmd_max']:.1f}")
                cells.append(" / ".join(f"{r['cpu_per_reload_ms']:.0f}" for r in rows))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "pinger":
        pinger(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ward", default=os.path.join(REPO, ".build", "release", "ward"),
                        help="the Ward binary under test (default .build/release/ward)")
    parser.add_argument("--baseline", help="an older Ward binary to compare against (none by default)")
    parser.add_argument("--conns", default="1000,6000", help="idle connections held open, e.g. 1000,6000")
    parser.add_argument("--reloads", type=int, default=20, help="reloads per scenario")
    parser.add_argument("--interval", type=float, default=0.5, help="least seconds between reloads of a series")
    parser.add_argument("--burst-rate", type=float, default=20)
    parser.add_argument("--burst-seconds", type=float, default=5)
    parser.add_argument("--quiet", type=float, default=3, help="seconds of the no-reload window")
    parser.add_argument("--cpu-reloads", type=int, default=5,
                        help="extra reloads per scenario, with the active client paused, for CPU per reload")
    parser.add_argument("--parallel", type=int, default=4, help="loadgen processes opening the idle connections")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, round-trip samples)")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        sys.exit("needs 2 cores: Ward on core 0, the load on core 1")
    raise_nofile()
    needed = 2 * max(int(n) for n in args.conns.split(",")) + 200
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        sys.exit(f"RLIMIT_NOFILE hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} < {needed}")
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(f"stopped by signal"))
    started = time.monotonic()
    bench = None
    try:
        bench = Bench(args)
        binaries = ([("old", args.baseline)] if args.baseline else []) + [("new", args.ward)]
        results = {label: [] for label, _ in binaries}
        for conns in [int(n) for n in args.conns.split(",")]:
            for label, binary in binaries:
                results[label] += bench.measure(binary, label, conns)
        labels = [label for label, _ in binaries]
        print()
        print(f"ward: {args.ward}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
        print(f"workers 1, Ward on core {WARD_CORE}, load on core {LOAD_CORE}; {args.reloads} reloads per scenario; "
              f"echo every 1 ms; total {time.monotonic() - started:.0f} s")
        print()
        print(table(results, labels, args))
        print()
        print("published (generations per scenario): " + "; ".join(
            f"{label} N={r['n']} {r['kind']}: {r['published']}/{r['reloads']}"
            for label in labels for r in results[label] if r["kind"] != "quiet"))
    finally:
        stop_all()
        if bench and not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        elif bench:
            print(f"work folder: {bench.work}")


if __name__ == "__main__":
    main()
