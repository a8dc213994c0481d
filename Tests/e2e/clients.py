"""TLS clients: Python's ssl module, with the local port known so log lines can be matched."""
import socket
import ssl
from dataclasses import dataclass


@dataclass
class Outcome:
    local_port: int
    data: bytes
    error: str | None


def context(certs, name=None, **options):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certs["example_ca"])
    if name:
        ctx.load_cert_chain(certs[name].cert_path, certs[name].key_path)
    for key, value in options.items():
        setattr(ctx, key, value)
    return ctx


def exchange(port, ctx, payload=b"ping\n", timeout=10):
    """Connects, sends `payload`, reads until EOF; reports what came back and any TLS error."""
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))  # the port is known even if the connect itself is refused
    raw.settimeout(timeout)
    local_port = raw.getsockname()[1]
    data, error = b"", None
    try:
        raw.connect(("127.0.0.1", port))
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(payload)
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (ssl.SSLError, OSError) as e:
        error = str(e)
    finally:
        raw.close()
    return Outcome(local_port, data, error)


def half_close_exchange(port, ctx, payload, timeout=10):
    """Sends `payload`, then close_notify (TLS half-close), then reads the whole response.

    Drives TLS over memory BIOs so the write side can close while reading goes on.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)

    def flush():
        pending = outgoing.read()
        if pending:
            raw.sendall(pending)

    def pump():
        chunk = raw.recv(65536)
        if chunk:
            incoming.write(chunk)
        else:
            incoming.write_eof()
        return bool(chunk)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            pump()
    flush()
    tls.write(payload)
    flush()
    try:
        tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    flush()
    response = b""
    while True:
        try:
            response += tls.read(65536)
        except ssl.SSLWantReadError:
            if not pump():
                break
        except ssl.SSLZeroReturnError:
            break
    raw.close()
    return response


def memory_bio_client(port, ctx):
    """A TLS client over memory BIOs on a plain socket, handshake done: the caller sees every byte
    and every TLS end condition. Returns (socket, SSLObject, incoming BIO, outgoing BIO)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            chunk = sock.recv(65536)
            assert chunk, "EOF during the handshake"
            incoming.write(chunk)
    return sock, tls, incoming, outgoing
