"""A one-connection stand-in for the metadata service, for QEMU's
user-mode network (`guestfwd=...-cmd:python3 imds_responder.py MODE`):
reads one HTTP request on stdin, answers on stdout.

MODE v2: tokens required (token "tok-123"); v1: no tokens (PUT refused).
Instance id and user-data come from GUMTREE_TEST_INSTANCE_ID and
GUMTREE_TEST_USER_DATA.
"""

import os
import sys

mode = sys.argv[1]
line = sys.stdin.buffer.readline().decode()
headers = {}
while True:
    h = sys.stdin.buffer.readline().decode().strip()
    if not h:
        break
    k, v = h.split(":", 1)
    headers[k.lower()] = v.strip()
method, path, _ = line.split()


def reply(code, body=b""):
    sys.stdout.buffer.write(f"HTTP/1.0 {code} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    sys.stdout.flush()


if method == "PUT":
    if mode == "v2" and path == "/latest/api/token":
        reply(200, b"tok-123")
    else:
        reply(405)
elif mode == "v2" and headers.get("x-aws-ec2-metadata-token") != "tok-123":
    reply(401)
elif path == "/latest/meta-data/instance-id":
    reply(200, os.environ["GUMTREE_TEST_INSTANCE_ID"].encode())
elif path == "/latest/user-data":
    reply(200, os.environ["GUMTREE_TEST_USER_DATA"].encode())
else:
    reply(404)
