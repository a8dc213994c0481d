"""Real processes on loopback: the built ward binary, upstream servers, and log tailing."""
import json
import os
import socket
import socketserver
import subprocess
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARD = os.environ.get("WARD_BIN", os.path.join(REPO, ".build", "debug", "ward"))
DEADLINE = float(os.environ.get("WARD_TEST_DEADLINE", "15"))


_handed_out = set()


def free_port():
    """A loopback port nothing listens on now, and never one this process handed out before:
    a test often takes several before binding any, and two equal ones would be two sockets on
    one address, which Ward refuses."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class Upstream:
    """A TCP upstream on loopback that counts the connections it accepts.

    mode "echo-line": reply `echo: LINE` to the first line, then close.
    mode "until-eof": read to EOF, then reply `got N bytes sha256=HEX` and close.
    mode "hold": keep the connection open and echo everything.
    """

    def __init__(self, mode="echo-line"):
        outer = self
        self.accepted = 0
        self.lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with outer.lock:
                    outer.accepted += 1
                conn = self.request
                if mode == "echo-line":
                    data = b""
                    while b"\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(b"echo: " + data)
                elif mode == "until-eof":
                    import hashlib
                    digest, total = hashlib.sha256(), 0
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        digest.update(chunk)
                        total += len(chunk)
                    conn.sendall(f"got {total} bytes sha256={digest.hexdigest()}\n".encode())
                else:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        conn.sendall(chunk)

        self.server, self.port = serve(socketserver.ThreadingTCPServer, Handler)

    def close(self):
        stop(self.server)


def serve(server_class, handler):
    """Starts a threaded loopback server on a free port; returns it and the port."""
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def stop(server):
    server.shutdown()
    server.server_close()


class Ward:
    """Runs `ward run` with a generated config; waits for its readiness line."""

    def __init__(self, folder, config_text, rules_text):
        self.folder = folder
        self.config_path = os.path.join(folder, "ward.yaml")
        self.log_path = os.path.join(folder, "connections.log")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        if rules_text is not None:  # None: a config without `rules:` (outbound only)
            with open(os.path.join(folder, "rules.yaml"), "w") as f:
                f.write(rules_text)
        self.stderr_path = os.path.join(folder, "ward.stderr")
        self.process = None

    def start(self, stdout=subprocess.DEVNULL, preexec_fn=None, wrap=None):
        """`stdout` receives `log: "-"`; `preexec_fn` runs in the child (e.g. a lower RLIMIT_NOFILE);
        `wrap` turns the ward command line into another (e.g. one run inside `unshare`)."""
        self.stderr = open(self.stderr_path, "w")
        args = [WARD, "run", "--config", self.config_path]
        self.process = subprocess.Popen(
            wrap(args) if wrap else args, stdout=stdout, stderr=self.stderr, preexec_fn=preexec_fn)
        self.wait_for_stderr("ready:")
        return self

    def wait_for_stderr(self, text):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with open(self.stderr_path) as f:
                content = f.read()
            if text in content:
                return content
            if self.process.poll() is not None:
                raise AssertionError(f"ward exited {self.process.returncode}: {content}")
            time.sleep(0.02)
        raise AssertionError(f"ward never printed {text!r}: {content}")

    def stop(self, sig=15):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("ward did not stop on SIGTERM")
        return self.process.returncode

    def mark(self):
        """A position in the log; `wait_for` looks only at lines after it."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def lines(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.decode().splitlines() if line]

    def wait_for(self, since, **fields):
        """The first log record after `since` whose fields equal `fields`."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for record in self.lines(since):
                if all(record.get(k) == v for k, v in fields.items()):
                    return record
            time.sleep(0.02)
        raise AssertionError(f"no log line with {fields}; saw {self.lines(since)}")


def address(value):
    """A port number means 127.0.0.1:PORT; anything else is used as written (HOST:PORT)."""
    return f"127.0.0.1:{value}" if isinstance(value, int) else value


def config(pki_dir, listeners, extra="", *, identity="ward", outbound=(), rules=True):
    """A ward.yaml. `listeners` holds (name, listen port, upstream port) and, optionally, a fourth
    item: a dict of more keys for that listener (e.g. {"proxy_protocol": "v2"}). `identity` names
    the SVID in `pki_dir` (NAME.pem, NAME.key). `outbound` holds dicts with name, listen, target,
    server_id (a list) and optionally server_name and allow_remote; listen and target are ports on
    127.0.0.1 or HOST:PORT strings. With outbound entries and no listeners the `listeners:` key is
    left out; `rules=False` leaves out `rules:`. The defaults give the config the tests always used."""
    lines = [
        "identity:",
        f"  cert: {pki_dir}/{identity}.pem",
        f"  key: {pki_dir}/{identity}.key",
        "trust_domains:",
        f"  example.org: {pki_dir}/example.org.bundle.pem",
        f"  partner.org: {pki_dir}/partner.org.bundle.pem",
    ]
    if listeners or not outbound:
        lines.append("listeners:")
    for name, listen, upstream, *more in listeners:
        lines += [f"  - name: {name}", f"    listen: 127.0.0.1:{listen}", f"    upstream: 127.0.0.1:{upstream}"]
        lines += [f"    {key}: {value}" for key, value in (more[0] if more else {}).items()]
    if outbound:
        lines.append("outbound:")
    for entry in outbound:
        lines += [f"  - name: {entry['name']}", f"    listen: {address(entry['listen'])}",
                  f"    target: {address(entry['target'])}", f"    server_id: [{', '.join(entry['server_id'])}]"]
        for key in ("server_name", "allow_remote"):
            if key in entry:
                value = entry[key]
                lines.append(f"    {key}: {str(value).lower() if isinstance(value, bool) else value}")
    if rules:
        lines.append("rules: rules.yaml")
    lines += ["log: connections.log", "workers: 2", "admin: admin.sock"]
    return "\n".join(lines) + "\n" + extra


def run_ward(*args, timeout=30):
    """One `ward` command (check, reload, explain, ...): its CompletedProcess, output as text."""
    return subprocess.run([WARD, *args], capture_output=True, text=True, timeout=timeout)


def reload_ward(ward, expect_ok=True):
    """`ward reload` against a running Ward; asserts it applied (or, with expect_ok=False, refused)."""
    out = run_ward("reload", "--config", ward.config_path, timeout=60)
    assert (out.returncode == 0) == expect_ok, out.stdout + out.stderr
    return out


def write_atomically(path, data):
    """What editors do: write a new file (text or bytes), then rename it over the old one."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)
