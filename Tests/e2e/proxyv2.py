"""An independent PROXY protocol v2 parser, written from HAProxy's specification (not from Ward's
encoder), and an upstream that uses it. Shared by test_proxy_protocol.py, test_outbound.py and the
network-namespace upstream of test_multihost.py (netproxyecho.py)."""
import os
import socket
import struct
import subprocess
import threading
import time

import harness

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
SPIFFE_TLV = 0xE0


def read_exactly(conn, count):
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {count} bytes")
        data += chunk
    return data


def parse_tlvs(data):
    tlvs = []
    while data:
        assert len(data) >= 3, f"truncated TLV: {data!r}"
        kind, length = data[0], struct.unpack("!H", data[1:3])[0]
        assert len(data) >= 3 + length, f"TLV 0x{kind:02x} claims {length} bytes, {len(data) - 3} left"
        tlvs.append((kind, data[3:3 + length]))
        data = data[3 + length:]
    return tlvs


def read_header(conn):
    """Parses one PROXY v2 header; returns (source, destination, tlvs)."""
    head = read_exactly(conn, 16)
    assert head[:12] == SIGNATURE, head
    assert head[12] == 0x21, f"version/command 0x{head[12]:02x}"
    family, length = head[13], struct.unpack("!H", head[14:16])[0]
    body = read_exactly(conn, length)
    if family == 0x11:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    elif family == 0x21:
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        rest = body[36:]
    else:
        raise AssertionError(f"family 0x{family:02x}")
    return (src, sport), (dst, dport), parse_tlvs(rest)


class ProxyUpstream:
    """Reads the header, records it, then echoes one line (one connection at a time)."""

    def __init__(self, host="127.0.0.1", port=0):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, port))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.headers = []
        self.errors = []
        threading.Thread(target=self.serve, daemon=True).start()

    def reply(self, header, line):
        """What goes back to the caller for one `line` read after `header`."""
        return b"echo: " + line

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                try:
                    header = read_header(conn)
                    self.headers.append(header)
                    line = b""
                    while not line.endswith(b"\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        line += chunk
                    conn.sendall(self.reply(header, line))
                except (AssertionError, EOFError, OSError) as error:
                    self.errors.append(repr(error))

    def close(self):
        self.server.close()


def start_haproxy(folder, listen, backend_port, send_proxy=False):
    """HAProxy reading PROXY headers (`accept-proxy`) on `listen` in front of `backend_port` (with
    `send_proxy`, passing one on as v2); returns the process once it listens."""
    cfg = os.path.join(folder, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 10s
  timeout server 10s
frontend from_ward
  bind 127.0.0.1:{listen} accept-proxy
  default_backend service
backend service
  server s1 127.0.0.1:{backend_port}{" send-proxy-v2" if send_proxy else ""}
""")
    haproxy = subprocess.Popen(["haproxy", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + harness.DEADLINE
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            return haproxy
        except OSError:
            if haproxy.poll() is not None:
                raise AssertionError(f"haproxy exited: {haproxy.stderr.read()}")
            if time.monotonic() > deadline:
                haproxy.kill()
                raise AssertionError("haproxy never listened")
            time.sleep(0.05)
