"""Real WebSocket messages against docs/schemas (run by scripts/schemathesis).

Holds one conversation with the running server over a real socket (a small RFC 6455 client,
stdlib only: masked client frames, pings answered), publishes one event of every type in the
schemas through POST /api/events, and checks that every frame sent validates against
client-message.json and every frame received against server-message.json and the schema of its own
type, and that the server answered every command as CONTRACT.md section 3 says.

Usage: schemathesis-ws.py DOCS_DIR HOST:PORT PUBLISH_KEY TOKEN
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

import jsonschema_rs

DOCS, ADDR, KEY, TOKEN = sys.argv[1:5]
HOST, PORT = ADDR.rsplit(":", 1)
SCHEMAS = os.path.join(DOCS, "schemas")


def validator(key):
    path = os.path.abspath(os.path.join(SCHEMAS, key + ".json"))
    with open(path) as f:
        return jsonschema_rs.validator_for(json.load(f), base_uri="file://" + path, validate_formats=True)


CLIENT = validator("client-message")
SERVER = validator("server-message")
INDEX = json.load(open(os.path.join(SCHEMAS, "index.json")))
OWN = {}
for group in ("server", "event"):
    for entry in INDEX["groups"][group]:
        name = entry["file"][len(group) + 1 : -len(".json")]
        OWN[name] = validator(f"{group}/{name}")
EVENT_TYPES = [e["file"][len("payload/") : -len(".json")] for e in INDEX["groups"]["payload"]]
problems = []


def problem(text):
    problems.append(text)
    print(f"schemathesis-ws: {text}", file=sys.stderr)


class Socket:
    def __init__(self):
        self.sock = socket.create_connection((HOST, int(PORT)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /api/ws HTTP/1.1\r\nHost: {ADDR}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("schemathesis-ws: the server closed during the upgrade")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            raise SystemExit(f"schemathesis-ws: no upgrade: {head[:200]!r}")

    def _frame(self, opcode, data):
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def send(self, message, valid=True):
        if CLIENT.is_valid(message) != valid:
            problem(f"client frame {message}: the schema says {'invalid' if valid else 'valid'}")
        self._frame(0x1, json.dumps(message).encode())

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, deadline):
        """The next text frame as JSON (pings answered), or None at the deadline."""
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                b0, b1 = self._read(2)
            except (socket.timeout, TimeoutError):
                return None
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            data = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._frame(0xA, data)
            elif opcode == 0x8:
                raise EOFError(f"closed: {data[:2].hex()}")
            elif opcode == 0x1:
                return json.loads(data)

    def expect(self, kind, **fields):
        """The next frame; it must be a `kind` with `fields`."""
        m = self.recv(time.monotonic() + 5)
        if m is None:
            problem(f"no answer, expected {kind}")
            return {}
        check(m)
        if m.get("type") != kind or any(m.get(k) != v for k, v in fields.items()):
            problem(f"expected {kind} {fields}, got {m}")
        return m


received = {}


def check(m):
    t = m.get("type")
    received[t] = received.get(t, 0) + 1
    if not SERVER.is_valid(m):
        problem(f"server frame {m}: not valid against server-message.json")
    own = OWN.get(t)
    if own is None or not own.is_valid(m):
        problem(f"server frame {m}: not valid against the schema of its type")


def sample(name, prop):
    """A value for a required payload field, from its schema."""
    if "$ref" in prop:
        return "2026-11-25T20:40:16.123Z"
    if "enum" in prop:
        return prop["enum"][-1]
    if "not" in prop:
        return {"any": ["value"]}
    t = prop.get("type")
    if t == "string":
        return f"{name}-1"
    if t == "number":
        return (prop.get("minimum", 0) + prop.get("maximum", 100)) / 2
    if t == "object":
        return {"field": 1}
    if t == "array":
        return [1, "two"]
    raise SystemExit(f"schemathesis-ws: no sample for {name}: {prop}")


def publish(body):
    req = urllib.request.Request(
        f"http://{ADDR}/api/events",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        problem(f"a publish valid against the schemas was refused: {e.code} {e.read()[:200]!r}: {body}")


ws = Socket()
ws.send({"type": "auth", "token": TOKEN, "ref": "a"})
ws.expect("connected")
ws.send({"type": "ping", "ref": 1})
ws.expect("pong", ref=1)
ws.send({"type": "subscribe", "channelId": "task:t_1", "ref": 2})
ws.expect("subscribed", channelId="task:t_1", ref=2)
ws.send({"type": "subscribe", "channelId": "org:o_1", "since": {"offset": 0, "epoch": "e_gone"}, "ref": 3})
ws.expect("subscribed", channelId="org:o_1", recovered=False, ref=3)
ws.send({"type": "subscribe", "channelId": "nope", "ref": 4})
ws.expect("error", code="invalid_channel", ref=4)
ws.send({"type": "subscribe", "channelId": "org:o_2", "ref": 5})
ws.expect("error", code="forbidden", ref=5)
ws.send({"type": "refresh", "token": "not.a.token", "ref": 6})
ws.expect("error", code="invalid_token", ref=6)
ws.send({"type": "refresh", "token": TOKEN, "ref": 7})
ws.expect("refreshed", ref=7)
ws.send({"type": "dance", "ref": 8}, valid=False)
ws.expect("error", code="bad_request", ref=8)

# One event of every type in the schemas, on both channels; every other one without a timestamp.
for i, t in enumerate(EVENT_TYPES):
    schema = json.load(open(os.path.join(SCHEMAS, f"payload/{t}.json")))
    payload = {f: sample(f, schema["properties"][f]) for f in schema["required"]}
    if i % 2 == 0:
        payload["timestamp"] = "2026-11-25T20:40:16.123+02:00"
    publish({"orgId": "o_1", "type": t, "payload": payload, "channels": ["task:t_1", "org:o_1"]})
want = 2 * len(EVENT_TYPES)
deadline = time.monotonic() + 10
events = 0
while events < want:
    m = ws.recv(deadline)
    if m is None:
        problem(f"{events} of {want} events arrived")
        break
    check(m)
    events += m.get("type") in EVENT_TYPES
ws.send({"type": "unsubscribe", "channelId": "task:t_1", "ref": 9})
ws.expect("unsubscribed", channelId="task:t_1", ref=9)

kinds = sorted(received)
print(f"schemathesis-ws: {sum(received.values())} server frames of {len(kinds)} types checked against the schemas", file=sys.stderr)
sys.exit(1 if problems else 0)
