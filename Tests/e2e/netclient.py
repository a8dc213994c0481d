"""A TLS client run inside a network namespace by test_multihost.py: prints what came back.

Usage: netclient.py HOST PORT CERT KEY CA   (exit 0 if the echo came back, 1 if refused)
"""
import socket
import ssl
import sys

host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"ping\n")
        data = tls.recv(64)
except (ssl.SSLError, OSError) as error:
    print(f"refused: {error}")
    sys.exit(1)
print(data.decode(errors="replace").strip() or "refused: closed")
sys.exit(0 if data else 1)
