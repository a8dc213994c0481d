"""A TLS protocol fuzzer for Ward: case generators, a scriptable client and a batch runner.

Shared by Tests/e2e/test_tls_fuzz.py (a fixed CI subset) and `scripts/fuzz tls SECONDS` (random
cases for as long as asked; run this file directly).

The client is Python's ssl over memory BIOs: OpenSSL does the handshake maths at C speed, and its
key log hands us the traffic secrets. (tlslite-ng 0.8 costs ~30 ms a handshake in pure Python, too
slow for thousands of cases on two cores, and sends OpenSSL 3.0 a compressed Certificate it never
offered to take.) With them every record the client would send can be
decrypted, rewritten, re-ordered or followed by anything we like, sealed under the keys of that
moment: plaintext before the keys change, the handshake keys in TLS 1.3, the application keys
after Finished. The server's records are left to the ssl object, so it still reads Ward's answers.
Each case is a Plan; a Runner runs plans in parallel batches and, after each batch, checks that
Ward is alive, still echoes for a legitimate client and wrote only JSON lines; when not, it
restarts Ward and replays the batch one case at a time to name the case that did it.
"""
import atexit
import concurrent.futures
import hashlib
import hmac
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CCS, ALERT, HANDSHAKE, APPDATA = 20, 21, 22, 23
CERTIFICATE, CERTIFICATE_VERIFY, FINISHED, KEY_UPDATE = 11, 15, 20, 24
TLS12 = b"\x03\x03"
LEVELS = (1, 2, 3)  # warning, fatal, and one that does not exist
STAGES = ("after_hello", "after_server_flight", "after_certificate", "after_finished", "after_established")
MAX_RECORD = 2**14 + 256  # the largest TLSCiphertext fragment; anything longer is record_overflow
TIMEOUT = 5  # Ward's handshake (1 s) and idle (2 s) timeouts end every connection before this

# The suites a Python client can get from Ward's ECDSA identity: AEAD, key length, IV length (4 is
# TLS 1.2's implicit GCM salt + explicit nonce), hash for HKDF / the TLS 1.2 PRF.
SUITES = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, 12, hashlib.sha256),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, 12, hashlib.sha384),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, 12, hashlib.sha256),
    "ECDHE-ECDSA-AES128-GCM-SHA256": (AESGCM, 16, 4, hashlib.sha256),
    "ECDHE-ECDSA-AES256-GCM-SHA384": (AESGCM, 32, 4, hashlib.sha384),
    "ECDHE-ECDSA-CHACHA20-POLY1305": (ChaCha20Poly1305, 32, 12, hashlib.sha256),
}


# --- wire formats -----------------------------------------------------------------------------

def record(ctype, payload, version=TLS12):
    return bytes([ctype]) + version + struct.pack(">H", len(payload)) + payload


def handshake(htype, body):
    return bytes([htype]) + len(body).to_bytes(3, "big") + body


def split_records(data):
    """Complete records as (type, version, body); a trailing partial record is dropped."""
    out = []
    while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
        n = int.from_bytes(data[3:5], "big")
        out.append((data[0], data[1:3], data[5:5 + n]))
        data = data[5 + n:]
    return out


def split_messages(data):
    out = []
    while len(data) >= 4:
        n = 4 + int.from_bytes(data[1:4], "big")
        out.append(data[:n])
        data = data[n:]
    return out


# --- key schedule and record protection (RFC 8446 7.1/5.2, RFC 5246 5/6.2.3.3, RFC 5288) -----

def hkdf_expand_label(secret, label, length, hash_, context=b""):
    label = b"tls13 " + label
    info = struct.pack(">HB", length, len(label)) + label + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_).digest()
        out, i = out + block, i + 1
    return out[:length]


def prf12(secret, label, seed, length, hash_):
    seed, a, out = label + seed, label + seed, b""
    while len(out) < length:
        a = hmac.new(secret, a, hash_).digest()
        out += hmac.new(secret, a + seed, hash_).digest()
    return out[:length]


class Keys:
    """One direction's protection: AEAD, IV, sequence number. Seals and opens whole records."""

    def __init__(self, suite, key, iv, tls13):
        aead, _, _, self.hash = SUITES[suite]
        self.suite, self.aead, self.iv, self.tls13, self.seq = suite, aead(key), iv, tls13, 0

    @classmethod
    def tls13_from(cls, suite, secret):
        _, key_len, _, hash_ = SUITES[suite]
        return cls(suite, hkdf_expand_label(secret, b"key", key_len, hash_),
                   hkdf_expand_label(secret, b"iv", 12, hash_), True)

    def next_generation(self, secret):
        """The keys after a KeyUpdate (RFC 8446 7.2), and the secret they came from."""
        secret = hkdf_expand_label(secret, b"traffic upd", self.hash().digest_size, self.hash)
        return Keys.tls13_from(self.suite, secret), secret

    def _nonce(self, seq, explicit):
        if len(self.iv) == 4:
            return self.iv + explicit
        return bytes(a ^ b for a, b in zip(self.iv, bytes(4) + seq))

    def seal(self, ctype, payload, version=TLS12):
        seq, self.seq = self.seq.to_bytes(8, "big"), self.seq + 1
        if self.tls13:
            header = bytes([APPDATA]) + version + struct.pack(">H", len(payload) + 17)
            return header + self.aead.encrypt(self._nonce(seq, b""), payload + bytes([ctype]), header)
        explicit = seq if len(self.iv) == 4 else b""
        aad = seq + bytes([ctype]) + version + struct.pack(">H", len(payload))
        return record(ctype, explicit + self.aead.encrypt(self._nonce(seq, explicit), payload, aad), version)

    def open(self, ctype, version, body):
        seq, self.seq = self.seq.to_bytes(8, "big"), self.seq + 1
        if self.tls13:
            header = bytes([ctype]) + version + struct.pack(">H", len(body))
            inner = self.aead.decrypt(self._nonce(seq, b""), body, header).rstrip(b"\0")
            return inner[-1], inner[:-1]
        explicit, body = (body[:8], body[8:]) if len(self.iv) == 4 else (b"", body)
        aad = seq + bytes([ctype]) + version + struct.pack(">H", len(body) - 16)
        return ctype, self.aead.decrypt(self._nonce(seq, explicit), body, aad)


# --- the scriptable client ----------------------------------------------------------------------

@dataclass
class Plan:
    """One case: a real handshake from Python's ssl, with what to add or change at each stage."""
    name: str
    version: str = "1.3"  # the only version the client offers
    before: bytes = b""  # raw bytes before the ClientHello
    hello: Callable | None = None  # ClientHello record -> the bytes to send instead
    inject: dict = field(default_factory=dict)  # stage -> [bytes, or callable(session) -> bytes]
    flight: Callable | None = None  # (session, messages) -> messages: the client's second flight
    fragment: Callable | None = None  # one flight message -> the record payloads to carry it
    raw: bool = False  # send before + hello + after_hello, half-close, read to EOF; no handshake
    expect: str | None = None  # "echo": forwarded; "allowed": logged as allow; "refused": handshake_error


_local = threading.local()


def client_context(certs, version):
    """One context per thread and version, each with its own key log, so lines never interleave."""
    key = f"ctx{version}"
    if not hasattr(_local, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(certs["example_ca"])
        ctx.load_cert_chain(certs["web"].cert_path, certs["web"].key_path)
        ctx.minimum_version = ctx.maximum_version = (
            ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2)
        fd, path = tempfile.mkstemp(prefix="ward-keylog-")
        os.close(fd)
        atexit.register(os.unlink, path)
        ctx.keylog_filename = path
        setattr(_local, key, (ctx, path, [0]))
    return getattr(_local, key)


class Session:
    """One connection to Ward driven by a Plan. run() returns an outcome such as "echoed" or "closed"."""

    def __init__(self, certs, port, version, source="127.0.0.1"):
        self.certs, self.version, self.tls13 = certs, version, version == "1.3"
        ctx, self.keylog, self.keylog_offset = client_context(certs, version)
        self.sock = socket.socket()
        self.sock.bind((source, 0))
        self.sock.settimeout(TIMEOUT)
        self.deadline = time.monotonic() + 3 * TIMEOUT
        self.peer = f"{source}:{self.sock.getsockname()[1]}"
        self.port = port
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing)
        self.sent = []  # (stage, bytes): what the failure message shows
        self.keys = None  # how the client protects what it sends now; None while in plaintext
        self.server_bytes = b""

    def recv(self):
        """The next bytes from Ward; b"" at EOF. Every read loop ends by the session's deadline."""
        if time.monotonic() > self.deadline:
            raise socket.timeout
        return self.sock.recv(65536)

    def send(self, label, data):
        if data:
            self.sent.append((label, data))
            self.sock.sendall(data)

    def protect(self, ctype, payload):
        """A record as the client would send it at this point: plaintext or sealed."""
        return self.keys.seal(ctype, payload) if self.keys else record(ctype, payload)

    def inject(self, plan, stage):
        for item in plan.inject.get(stage, ()):
            self.send(stage, item(self) if callable(item) else item)

    def run(self, plan):
        try:
            self.sock.connect(("127.0.0.1", self.port))
            return self._run(plan)
        except socket.timeout:
            return "timeout"
        except OSError as error:
            return f"closed ({error.strerror or error})"
        finally:
            self.sock.close()

    def _run(self, plan):
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:  # it has written its ClientHello and waits for Ward
            pass
        self.hello_record = self.outgoing.read()
        self.send("before", plan.before)
        self.send("hello", plan.hello(self.hello_record) if plan.hello else self.hello_record)
        self.inject(plan, "after_hello")
        if plan.raw:
            self.sock.shutdown(socket.SHUT_WR)
            while self.recv():
                pass
            return "closed"
        refused = self.read_server_flight()
        if refused:
            return refused
        messages = self.client_flight()
        self.send_flight(plan.flight(self, messages) if plan.flight else messages, plan)
        outcome = self.probe()
        if outcome == "echoed" and plan.inject.get("after_established"):
            self.inject(plan, "after_established")
            outcome = self.probe()
        return outcome

    def read_server_flight(self):
        """Feeds Ward's flight to the ssl object until it writes its second flight (not sent yet)."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:
                return f"closed ({error.reason})"
            if self.outgoing.pending:  # TLS 1.2 still wants Ward's Finished: not done, but written
                return None
            data = self.recv()
            if not data:
                return "closed"
            self.server_bytes += data
            self.incoming.write(data)

    def secrets(self):
        with open(self.keylog) as f:
            f.seek(self.keylog_offset[0])
            text = f.read()
        self.keylog_offset[0] += len(text)
        client_random = self.hello_record[11:43].hex()
        return {label: bytes.fromhex(secret) for label, rnd, secret in
                (line.split() for line in text.splitlines() if line.count(" ") == 2) if rnd == client_random}

    def client_flight(self):
        """The client's second flight as handshake messages; keys set up and checked by decrypting it."""
        flight, secrets = self.outgoing.read(), self.secrets()
        self.suite = self.tls.cipher()[0]
        self.ccs, stream = False, b""
        if self.tls13:
            self.app_secret = secrets["CLIENT_TRAFFIC_SECRET_0"]
            self.handshake_secret = secrets["CLIENT_HANDSHAKE_TRAFFIC_SECRET"]
            self.handshake_keys = lambda: Keys.tls13_from(self.suite, self.handshake_secret)
            self.server_handshake_secret = secrets["SERVER_HANDSHAKE_TRAFFIC_SECRET"]
            check = self.handshake_keys()
        else:
            self.master = secrets["CLIENT_RANDOM"]
            check = self.tls12_keys()
        for ctype, version, body in split_records(flight):
            if ctype == CCS:
                self.ccs = True
            elif self.tls13 or self.ccs:
                # Decrypting what OpenSSL sealed proves our key schedule matches Ward's.
                _, payload = check.open(ctype, version, body)
                stream += payload
            else:
                stream += body
        return split_messages(stream)

    def tls12_keys(self):
        aead, key_len, iv_len, hash_ = SUITES[self.suite]
        server_hello = split_messages(split_records(self.server_bytes)[0][2])[0]
        block = prf12(self.master, b"key expansion", server_hello[6:38] + self.hello_record[11:43],
                      2 * (key_len + iv_len), hash_)
        return Keys(self.suite, block[:key_len], block[2 * key_len:2 * key_len + iv_len], False)

    def send_flight(self, messages, plan):
        if self.tls13:
            if self.ccs:
                self.send("flight", record(CCS, b"\x01"))
            self.keys = self.handshake_keys()
        self.inject(plan, "after_server_flight")
        for message in messages:
            if not self.tls13 and message[:1] == bytes([FINISHED]):
                self.send("flight", record(CCS, b"\x01"))
                self.keys = self.tls12_keys()
            for payload in plan.fragment(message) if plan.fragment else [message]:
                self.send("flight", self.protect(HANDSHAKE, payload))
            if message[:1] == bytes([CERTIFICATE]):
                self.inject(plan, "after_certificate")
        if self.tls13:
            self.keys = Keys.tls13_from(self.suite, self.app_secret)
        self.inject(plan, "after_finished")

    def probe(self):
        """Sends one line of application data: "echoed" if it comes back, else how Ward ended it."""
        self.send("probe", self.protect(APPDATA, b"ping\n"))
        got = b""
        while got != b"ping\n":
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    return "closed (EOF)"
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return "closed (close_notify)"
            except ssl.SSLError as error:
                return f"closed ({error.reason})"
            data = self.recv()
            if not data:
                return "closed"
            self.incoming.write(data)
        return "echoed"

    def key_updates(self, count, requested=1):
        """`count` KeyUpdate messages, each sealed under the keys the one before retired."""
        out = b""
        for _ in range(count):
            out += self.keys.seal(HANDSHAKE, handshake(KEY_UPDATE, bytes([requested])))
            self.keys, self.app_secret = self.keys.next_generation(self.app_secret)
        return out

    def transcript(self, client_messages):
        """Every handshake message so far, for a CertificateVerify of our own making."""
        stream = self.hello_record[5:]
        server_keys = Keys.tls13_from(self.suite, self.server_handshake_secret) if self.tls13 else None
        for ctype, version, body in split_records(self.server_bytes):
            if ctype == HANDSHAKE:
                stream += body
            elif ctype == APPDATA and server_keys:
                stream += server_keys.open(ctype, version, body)[1]
        return stream + b"".join(client_messages)

    def finished(self, client_messages):
        """The client's Finished over the transcript as rewritten (RFC 8446 4.4.4, RFC 5246 7.4.9)."""
        hash_ = SUITES[self.suite][3]
        digest = hash_(self.transcript(client_messages)).digest()
        if self.tls13:
            key = hkdf_expand_label(self.handshake_secret, b"finished", hash_().digest_size, hash_)
            return handshake(FINISHED, hmac.new(key, digest, hash_).digest())
        return handshake(FINISHED, prf12(self.master, b"client finished", digest, 12, hash_))


# --- case generators ----------------------------------------------------------------------------

def alert(level, desc):
    return bytes([level, desc])


def plain(ctype, payload, version=TLS12):
    return record(ctype, payload, version)


def as_client(ctype, payload):
    """Sealed under the client's current keys, or plaintext where it has none yet."""
    return lambda s: s.protect(ctype, payload)


def protection(stage, version, sealed=True):
    if not sealed or stage == "after_hello" or (version == "1.2" and stage in STAGES[1:3]):
        return "plaintext"
    return "encrypted"


def alert_plan(stage, version, level, desc, sealed=True):
    how = protection(stage, version, sealed)
    if how == "plaintext":
        item = plain(ALERT, alert(level, desc))
        detail = item.hex(" ")
    else:
        item = as_client(ALERT, alert(level, desc))
        detail = f"{alert(level, desc).hex(' ')} sealed as a TLS {version} alert record"
    return Plan(f"TLS {version} {stage}: {how} alert level={level} desc={desc} ({detail})", version,
                inject={stage: [item]})


def alert_plans(stage, version, levels=LEVELS, descs=range(256), sealed=True):
    """Every alert level x description at one stage; plaintext where the client has no keys yet."""
    return [alert_plan(stage, version, level, desc, sealed) for level in levels for desc in descs]


def set_bytes(data, offset, value):
    return data[:offset] + value + data[offset + len(value):]


def one_byte_records(hello):
    return b"".join(record(HANDSHAKE, hello[i:i + 1]) for i in range(5, len(hello)))


def record_layer_plans():
    """Truncated, oversized, fragmented, zero-length, unknown-type and misversioned records."""
    plans = []
    for version in ("1.2", "1.3"):
        v = f"TLS {version}"
        for cut in (1, 3, 5, 6, 9, 40, -1):
            plans.append(Plan(f"{v} ClientHello truncated to [:{cut}], then EOF", version,
                              hello=lambda h, c=cut: h[:c], raw=True))
        plans += [
            Plan(f"{v} record header claims 2 bytes, 1 sent, then EOF", version,
                 inject={"after_hello": [b"\x15\x03\x03\x00\x02\x02"]}, raw=True),
            Plan(f"{v} ClientHello in 1-byte records", version, hello=one_byte_records, expect="echo"),
            Plan(f"{v} ClientHello in 1-byte TCP segments", version, hello=lambda h: h[:1],
                 inject={"after_hello": [lambda s: trickle(s, s.hello_record[1:])]}, expect="echo"),
            Plan(f"{v} client flight in 1-byte records", version,
                 fragment=lambda m: [m[i:i + 1] for i in range(len(m))], expect="echo"),
            Plan(f"{v} alert in two 1-byte records after ClientHello", version,
                 inject={"after_hello": [plain(ALERT, b"\x02"), plain(ALERT, b"\xff")]}),
            Plan(f"{v} encrypted alert in two 1-byte records after the handshake", version,
                 inject={"after_established": [as_client(ALERT, b"\x02"), as_client(ALERT, b"\xff")]}),
            Plan(f"{v} 100 CCS records after ClientHello", version,
                 inject={"after_hello": [plain(CCS, b"\x01") * 100]}),
            Plan(f"{v} CCS before ClientHello", version, before=plain(CCS, b"\x01")),
            Plan(f"{v} CCS with payload 02", version, inject={"after_hello": [plain(CCS, b"\x02")]}),
            Plan(f"{v} CCS with payload 01 01", version, inject={"after_hello": [plain(CCS, b"\x01\x01")]}),
            Plan(f"{v} plaintext CCS after the handshake", version,
                 inject={"after_established": [plain(CCS, b"\x01")]}),
            Plan(f"{v} encrypted CCS after the handshake", version,
                 inject={"after_established": [as_client(CCS, b"\x01")]}),
            Plan(f"{v} 100 empty handshake records before ClientHello", version, before=plain(HANDSHAKE, b"") * 100),
            Plan(f"{v} 1000 empty encrypted app-data records", version,
                 inject={"after_established": [lambda s: b"".join(s.protect(APPDATA, b"") for _ in range(1000))]}),
            Plan(f"{v} oversized encrypted record (2^14+1 plaintext)", version,
                 inject={"after_established": [as_client(APPDATA, b"x" * (2**14 + 1))]}),
            Plan(f"{v} plaintext record of 0xffff bytes after the handshake", version,
                 inject={"after_established": [plain(APPDATA, b"x" * 0xffff)]}),
        ]
        for ctype in (HANDSHAKE, APPDATA, ALERT, CCS):
            plans.append(Plan(f"{v} empty record of type {ctype} after ClientHello", version,
                              inject={"after_hello": [plain(ctype, b"")]}))
            plans.append(Plan(f"{v} record of type {ctype}, length {MAX_RECORD + 1}, before ClientHello", version,
                              before=plain(ctype, b"\x00" * (MAX_RECORD + 1)), raw=True))
        for ctype in (0, 1, 19, 24, 25, 26, 99, 255):
            plans.append(Plan(f"{v} unknown content type {ctype} before ClientHello", version,
                              before=plain(ctype, b"\x00\x01"), raw=True))
            plans.append(Plan(f"{v} unknown content type {ctype} after ClientHello", version,
                              inject={"after_hello": [plain(ctype, b"\x00\x01")]}))
            plans.append(Plan(f"{v} encrypted unknown content type {ctype} after the handshake", version,
                              inject={"after_established": [as_client(ctype, b"\x00\x01")]}))
        for rv in map(bytes.fromhex, ("0000", "0100", "0200", "0300", "0305", "0403", "fefd", "ffff")):
            plans.append(Plan(f"{v} ClientHello record version {rv.hex()}", version,
                              hello=lambda h, r=rv: set_bytes(h, 1, r)))
            plans.append(Plan(f"{v} ClientHello legacy_version {rv.hex()}", version,
                              hello=lambda h, r=rv: set_bytes(h, 9, r)))
            plans.append(Plan(f"{v} encrypted record with version {rv.hex()} after the handshake", version,
                              inject={"after_established": [lambda s, r=rv: s.keys.seal(APPDATA, b"ping\n", r)]}))
        plans.append(Plan(f"{v} ClientHello handshake length 0xffffff", version,
                          hello=lambda h: set_bytes(h, 6, b"\xff\xff\xff")))
        plans.append(Plan(f"{v} ClientHello record length 0xffff, then EOF", version,
                          hello=lambda h: set_bytes(h, 3, b"\xff\xff"), raw=True))
    return plans


def trickle(session, data):
    """Sends `data` one byte per TCP segment; returns nothing more to send."""
    session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        session.send("trickle", data[i:i + 1])
    return b""


def reorder(first_type):
    """Moves the message of `first_type` to the front of the client's flight."""
    return lambda s, ms: [m for m in ms if m[0] == first_type] + [m for m in ms if m[0] != first_type]


def out_of_order_plans():
    plans = []
    for version in ("1.2", "1.3"):
        v = f"TLS {version}"
        plans += [
            Plan(f"{v} Finished before ClientHello", version,
                 before=plain(HANDSHAKE, handshake(FINISHED, bytes(32))), raw=True),
            Plan(f"{v} Certificate before ClientHello", version,
                 before=plain(HANDSHAKE, handshake(CERTIFICATE, bytes(3 if version == "1.2" else 4)))),
            Plan(f"{v} two ClientHellos", version, inject={"after_hello": [lambda s: s.hello_record]}),
            Plan(f"{v} ServerHello from the client", version,
                 inject={"after_hello": [lambda s: set_bytes(s.hello_record, 5, b"\x02")]}),
            Plan(f"{v} Finished first in the client flight", version, flight=reorder(FINISHED)),
            Plan(f"{v} CertificateVerify first in the client flight", version, flight=reorder(CERTIFICATE_VERIFY)),
            Plan(f"{v} Certificate twice", version, flight=lambda s, ms: ms[:1] + ms),
            Plan(f"{v} no Certificate", version, flight=lambda s, ms: ms[1:]),
            Plan(f"{v} no Finished", version, flight=lambda s, ms: ms[:-1]),
            Plan(f"{v} ClientHello after the handshake", version,
                 inject={"after_established": [lambda s: s.protect(HANDSHAKE, s.hello_record[5:])]}),
            Plan(f"{v} Certificate after the handshake", version,
                 inject={"after_established": [lambda s: s.protect(HANDSHAKE, handshake(CERTIFICATE, bytes(4)))]}),
            Plan(f"{v} Finished after the handshake", version,
                 inject={"after_established": [as_client(HANDSHAKE, handshake(FINISHED, bytes(32)))]}),
            Plan(f"{v} KeyUpdate inside the handshake", version,
                 inject={"after_certificate": [as_client(HANDSHAKE, handshake(KEY_UPDATE, b"\x00"))]}),
        ]
    return plans


def replace_cv(make_signature):
    """Rewrites the client's CertificateVerify: scheme ecdsa_secp256r1_sha256, a signature we choose."""
    def rewrite(session, messages):
        out = []
        for m in messages:
            if m[0] == CERTIFICATE_VERIFY:
                sig = make_signature(session, m[8:], out)
                m = handshake(CERTIFICATE_VERIFY, b"\x04\x03" + struct.pack(">H", len(sig)) + sig)
            elif m[0] == FINISHED:  # so that only the signature is wrong
                m = session.finished(out)
            out.append(m)
        return out
    return rewrite


def signature_by(key_of):
    """A well-formed signature over the real transcript, by the key `key_of(session)` returns."""
    def sign(session, _, earlier):
        data = session.transcript(earlier)
        if session.tls13:
            digest = hashlib.new(SUITES[session.suite][3]().name, data).digest()
            data = b" " * 64 + b"TLS 1.3, client CertificateVerify\0" + digest
        return key_of(session).sign(data, ec.ECDSA(hashes.SHA256()))
    return sign


def bad_certificate_verify_plans():
    flips = {
        "last signature bit flipped": lambda s, sig, _: sig[:-1] + bytes([sig[-1] ^ 1]),
        "DER header bit flipped": lambda s, sig, _: bytes([sig[0] ^ 0x40]) + sig[1:],
        "signature by a different key": signature_by(lambda s: ec.generate_private_key(ec.SECP256R1())),
        "empty signature": lambda s, sig, _: b"",
    }
    plans = []
    for version in ("1.2", "1.3"):
        for what, make in flips.items():
            plans.append(Plan(f"TLS {version} CertificateVerify: {what}", version, flight=replace_cv(make),
                              expect="refused"))
        plans.append(Plan(f"TLS {version} CertificateVerify: scheme rsa_pss_rsae_sha256 with the ECDSA signature",
                          version, expect="refused", flight=lambda s, ms: [
                              set_bytes(m, 4, b"\x08\x04") if m[0] == CERTIFICATE_VERIFY else m for m in ms]))
        # The control: re-signed by the certificate's own key it must pass, or the cases above prove
        # nothing. (In TLS 1.2 our ssl object then rejects Ward's Finished, so the log is the witness.)
        plans.append(Plan(f"TLS {version} CertificateVerify: re-signed by the right key", version,
                          flight=replace_cv(signature_by(lambda s: s.certs["web"].key)), expect="allowed"))
    return plans


def flood_plans():
    return [
        Plan("TLS 1.2 renegotiation flood: 200 encrypted ClientHellos", "1.2",
             inject={"after_established": [lambda s: s.protect(HANDSHAKE, s.hello_record[5:])] * 200}),
        Plan("TLS 1.3 one KeyUpdate (update_requested), then data", "1.3",
             inject={"after_established": [lambda s: s.key_updates(1)]}, expect="echo"),
        Plan("TLS 1.3 KeyUpdate flood: 1000 update_requested", "1.3",
             inject={"after_established": [lambda s: s.key_updates(1000)]}),
        Plan("TLS 1.3 KeyUpdate flood: 1000 update_not_requested", "1.3",
             inject={"after_established": [lambda s: s.key_updates(1000, requested=0)]}),
        Plan("TLS 1.3 KeyUpdate with a bad request value (2)", "1.3",
             inject={"after_established": [lambda s: s.key_updates(1, requested=2)]}),
    ]


def fixed_plans():
    """Every fixed case: the catalogue both CI and the long run draw from."""
    plans = record_layer_plans() + out_of_order_plans() + bad_certificate_verify_plans() + flood_plans()
    for stage in STAGES:
        for version in ("1.2", "1.3"):
            plans += alert_plans(stage, version)
            if version == "1.3" and stage in STAGES[1:3]:
                plans += alert_plans(stage, version, sealed=False)
    return plans


# --- random mutations of real flights, for the long run -----------------------------------------

def mutate(data, rng):
    """A bit flip, a changed length field, a truncation, an extension or a random byte."""
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 or len(data) < 6:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data) * 8) if data else 0
            if data:
                data[i // 8] ^= 1 << (i % 8)
    elif kind == 1:  # a length field: the handshake header's 3 bytes, or any 2 bytes inside
        i = 1 if rng.random() < 0.5 else rng.randrange(4, len(data) - 1)
        width = 3 if i == 1 else 2
        old = int.from_bytes(data[i:i + width], "big")
        new = rng.choice([0, 1, old - 1, old + 1, old * 2, 2 ** (8 * width) - 1]) % 2 ** (8 * width)
        data[i:i + width] = new.to_bytes(width, "big")
    elif kind == 2:
        del data[rng.randrange(len(data)):]
    elif kind == 3:
        data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 64))
    else:
        data[rng.randrange(len(data))] = rng.choice([0, 0xff, 0x7f, 0x80, rng.randrange(256)])
    return bytes(data)


def split_randomly(payload, rng):
    """Cuts one handshake message into records of random sizes."""
    cuts = sorted(rng.sample(range(1, len(payload)), min(len(payload) - 1, rng.randint(1, 8))))
    return [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]


def random_plan(rng, fixed):
    """A fixed case, or a real handshake with one of its flights mutated."""
    choice = rng.randrange(6)
    version = rng.choice(("1.2", "1.3"))
    seed = rng.getrandbits(32)
    name = f"TLS {version} random #{seed}: "
    mrng = lambda: random.Random(seed)  # the same mutation on a replay
    if choice == 0:
        return rng.choice(fixed)
    if choice == 1:
        return Plan(name + "ClientHello mutated", version, hello=lambda h: record_mutate(h, mrng()))
    if choice == 2:
        def flight(s, ms):
            r = mrng()
            i = r.randrange(len(ms))
            return ms[:i] + [mutate(ms[i], r)] + ms[i + 1:]
        return Plan(name + "client flight message mutated", version, flight=flight)
    if choice == 3:
        return Plan(name + "client flight split into random records", version,
                    fragment=lambda m: split_randomly(m, random.Random(seed + len(m))) if len(m) > 1 else [m],
                    expect="echo")
    if choice == 4:
        return alert_plan(rng.choice(STAGES), version, rng.choice(LEVELS + (0, 255)), rng.randrange(256),
                          sealed=rng.random() < 0.8)
    # A sealed record whose ciphertext is then mutated: the record layer's own failure paths.
    stage = rng.choice(STAGES[3:] if version == "1.2" else STAGES[1:])
    return Plan(name + f"{stage}: sealed record mutated", version,
                inject={stage: [lambda s: mutate(s.protect(mrng().choice([APPDATA, ALERT]), b"ping\n"), mrng())]})


def record_mutate(hello, rng):
    """The ClientHello with its record header, or its body, mutated."""
    if rng.random() < 0.3:
        return mutate(hello[:5], rng) + hello[5:]
    body = mutate(hello[5:], rng)
    return record(HANDSHAKE, body) if rng.random() < 0.7 else hello[:5] + body


# --- the target and the runner ------------------------------------------------------------------

class Target:
    """A Ward with one echo listener, restarted when a case kills it; checks its health."""

    def __init__(self, certs, folder):
        self.certs, self.restarts = certs, 0
        self.upstream = harness.Upstream("hold")
        self.port = harness.free_port()
        extra = "handshake_timeout: 1s\nidle_timeout: 2s\n"
        rules = "rules:\n  - {name: web, action: allow, from: [spiffe://example.org/ns/prod/sa/web], to: [svc]}\n"
        self.ward = harness.Ward(folder, harness.config(certs["dir"], [("svc", self.port, self.upstream.port)], extra),
                                 rules).start()
        self.log_offset = 0

    def restart(self):
        self.restarts += 1
        self.ward.stderr.close()
        self.ward.start()
        self.log_offset = self.ward.mark()  # a crash may leave half a line: not the next case's fault

    def health(self):
        """None, or what is wrong: Ward dead, the legitimate client refused, a log line not JSON."""
        if self.ward.process.poll() is not None:
            return self.exited()
        problem = self.check_log()
        if problem:
            return problem
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.certs["example_ca"])
        ctx.load_cert_chain(self.certs["web"].cert_path, self.certs["web"].key_path)
        try:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)) as tls:
                tls.sendall(b"legit\n")
                got = b""
                while len(got) < 6 and (chunk := tls.recv(64)):
                    got += chunk
        except (OSError, ssl.SSLError) as error:
            got = repr(error)
        if got == b"legit\n":
            return None
        try:  # a crashing Ward drops connections while Swift's backtracer still runs: wait for it
            self.ward.process.wait(timeout=3)
            return self.exited()
        except subprocess.TimeoutExpired:
            return f"the legitimate client got {got}"

    def exited(self):
        fatal = [line for line in open(self.ward.stderr_path) if "error" in line.lower()][:1]
        return f"ward exited with {self.ward.process.returncode}: {''.join(fatal).strip()}"

    def check_log(self):
        with open(self.ward.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            try:
                json.loads(line)
            except ValueError:
                return f"log line is not JSON: {line[:300]!r}"
        self.log_offset += len(complete)
        return None

    def logged(self, session, event):
        """The log records of `session`'s connection, once one is `event` (or after a bounded wait)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            records = [r for r in self.ward.lines(session.mark) if r.get("peer_addr") == session.peer]
            if any(r["event"] == event for r in records) or time.monotonic() > deadline:
                return records
            time.sleep(0.02)

    def close(self):
        code = self.ward.stop()
        self.upstream.close()
        return code


class Runner:
    """Runs plans in parallel batches against a Target and collects failures, each naming its case."""

    def __init__(self, target, threads=8, batch=64, max_failures=3):
        self.target, self.batch, self.max_failures = target, batch, max_failures
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        self.cases, self.outcomes, self.lock = 0, {}, threading.Lock()

    def one(self, plan):
        # Ward logs at most 20 handshake_error lines per source and second: the few cases whose
        # line we look for come from an address of their own, away from the fuzzing flood.
        source = "127.0.0.2" if plan.expect == "refused" else "127.0.0.1"
        session = Session(self.target.certs, self.target.port, plan.version, source)
        session.mark = self.target.ward.mark()  # ports are reused: only later lines are this session's
        try:
            outcome = session.run(plan)
        except Exception as error:  # noqa: BLE001 - a bug of ours (or a very odd Ward): a failure too
            outcome = f"fuzzer error ({error!r})"
        with self.lock:
            self.cases += 1
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return session, outcome

    def verdict(self, plan, session, outcome):
        """None, or why this case failed on its own (whatever Ward's health)."""
        if outcome.startswith("fuzzer error"):
            return outcome
        if outcome == "timeout":
            return "Ward neither answered nor closed within its handshake/idle timeouts"
        if plan.expect == "echo" and outcome != "echoed":
            return f"a valid exchange was refused: {outcome}"
        if plan.expect == "allowed":
            events = [r["event"] for r in self.target.logged(session, "allow")]
            if "allow" not in events:
                return f"must be allowed; outcome {outcome}, logged {events}"
        if plan.expect == "refused":
            events = [r["event"] for r in self.target.logged(session, "handshake_error")]
            if outcome == "echoed" or "allow" in events or "handshake_error" not in events:
                return f"must be refused and logged as handshake_error; outcome {outcome}, logged {events}"
        return None

    def run(self, plans):
        failures = []
        for start in range(0, len(plans), self.batch):
            chunk = plans[start:start + self.batch]
            results = list(self.pool.map(self.one, chunk))
            if self.target.health():  # Ward broke: the batch's outcomes mean nothing, find the culprit
                failures += self.replay(chunk)
            else:
                failures += [describe(p, s, why) for p, (s, o) in zip(chunk, results) if (why := self.verdict(p, s, o))]
            if len(failures) >= self.max_failures:
                break
        return failures

    def replay(self, chunk):
        """Restarts Ward and reruns the batch one case at a time, checking Ward after each."""
        self.target.restart()
        found, culprit = [], False
        for plan in chunk:
            session, outcome = self.one(plan)
            problem = self.target.health()
            if problem:
                culprit = True
                self.target.restart()
            else:
                problem = self.verdict(plan, session, outcome)
            if problem:
                found.append(describe(plan, session, problem))
                if len(found) >= self.max_failures:
                    break
        if not culprit:
            found.append(f"[batch {chunk[0].name} .. {chunk[-1].name}] broke Ward, but no single case of it does")
        return found


def describe(plan, session, problem):
    """The failure, the case's name and the bytes it sent that a plain handshake would not have."""
    plain_stages = {"probe"} | ({"hello"} if not plan.hello else set()) | (
        {"flight"} if not (plan.flight or plan.fragment) else set())
    sent = "; ".join(f"{stage}: {data[:48].hex(' ')}{' ..' if len(data) > 48 else ''} ({len(data)} bytes)"
                     for stage, data in session.sent if stage not in plain_stages)
    return f"[{plan.name}] {problem}\n    from {session.peer}, sent: {sent or 'see the case name'}"


# --- `scripts/fuzz tls SECONDS` -------------------------------------------------------------------

def main(seconds):
    import pki
    folder = tempfile.mkdtemp(prefix="ward-tlsfuzz-")
    example, partner = pki.ca("example.org root"), pki.ca("partner.org root")
    pki.write(example, folder, "example.org.bundle")
    pki.write(partner, folder, "partner.org.bundle")
    certs = {"dir": folder, "example_ca": os.path.join(folder, "example.org.bundle.pem"),
             "web": pki.write(pki.leaf(example, ["spiffe://example.org/ns/prod/sa/web"]), folder, "web")}
    pki.write(pki.leaf(example, ["spiffe://example.org/ns/prod/sa/orders"], ips=["127.0.0.1"]), folder, "ward")
    target = Target(certs, folder)
    runner = Runner(target, max_failures=20)
    seed = int(os.environ.get("SEED", time.time_ns() % 2**32))
    rng, fixed = random.Random(seed), fixed_plans()
    failures, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline and len(failures) < runner.max_failures:
        failures += runner.run([random_plan(rng, fixed) for _ in range(runner.batch)])
    code = target.close()
    for failure in failures:
        print(failure)
    print("outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(runner.outcomes.items())))
    print(f"tls: {runner.cases} cases run, {target.restarts} ward restarts needed, {len(failures)} failures "
          f"(seed {seed}, ward exit {code}, log and PKI in {folder})")
    return 1 if failures or target.restarts else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
