"""A plaintext app run inside a network namespace by test_multihost.py: sends "ping\n" to Ward's
outbound port and prints what came back. Usage: netapp.py HOST PORT (exit 0 if anything came back)"""
import socket
import sys

try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
        conn.sendall(b"ping\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
except OSError as error:
    print(f"refused: {error}")
    sys.exit(1)
print(data.decode(errors="replace").strip() or "refused: closed")
sys.exit(0 if data else 1)
