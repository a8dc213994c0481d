"""The demo's orders service behind `proxy_protocol: v2`: it reads the PROXY v2 header Ward sends
first, takes the caller's SPIFFE ID from TLV 0xE0, and greets the caller by it over HTTP/1.0.

usage: whoami_service.py PORT"""
import socket
import struct
import sys
import threading

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def read_exactly(conn, count):
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed inside the PROXY header")
        data += chunk
    return data


def caller_id(conn):
    head = read_exactly(conn, 16)
    if head[:12] != SIGNATURE or head[12] != 0x21:
        raise ValueError("no PROXY v2 header")
    body = read_exactly(conn, struct.unpack("!H", head[14:16])[0])
    offset = {0x11: 12, 0x21: 36}.get(head[13], 0)  # skip the addresses
    while offset + 3 <= len(body):
        kind, length = body[offset], struct.unpack("!H", body[offset + 1:offset + 3])[0]
        if kind == 0xE0:
            return body[offset + 3:offset + 3 + length].decode()
        offset += 3 + length
    return None


def serve(conn):
    with conn:
        try:
            who = caller_id(conn)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
        except (ValueError, ConnectionError, UnicodeDecodeError):
            return
        body = f"hello {who}, from the orders service\n".encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def main():
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
