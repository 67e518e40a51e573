"""Webhook receiver for the dispatchbox compose playground.

Logs one JSON line per POST: the Standard Webhooks headers, whether the signature is
valid for WEBHOOK_SECRET, the answer it gave and the body. It answers 204, except for a
RECEIVER_FAILURE_RATE share of requests that get a 503 so that retries can be watched.
A real consumer would also reject bad signatures and old timestamps, and dedupe on
webhook-id; this one only reports them, so nothing ends up dead because of the demo.

Standard library only. GET /health answers 200 (the container's health check).

Environment: RECEIVER_PORT (8000), WEBHOOK_SECRET (whsec_..., optional; several may be
given separated by spaces or commas), RECEIVER_FAILURE_RATE (0.0-1.0, default 0).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("RECEIVER_PORT", "8000"))
FAILURE_RATE = float(os.environ.get("RECEIVER_FAILURE_RATE", "0") or 0)
SECRETS = [
    base64.b64decode(secret.removeprefix("whsec_"))
    for secret in os.environ.get("WEBHOOK_SECRET", "").replace(",", " ").split()
]
# Signatures older or newer than this are reported as stale (replay protection).
TOLERANCE_SECONDS = 5 * 60


def signature_status(headers, body):
    """'valid', 'unsigned' (no secret configured) or what is wrong."""
    if not SECRETS:
        return "unsigned"
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not timestamp:
        return "invalid: webhook-id or webhook-timestamp missing"
    try:
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            return "invalid: timestamp outside the tolerance"
    except ValueError:
        return "invalid: webhook-timestamp is not a number"
    signed = f"{msg_id}.{timestamp}.".encode() + body
    given = [s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")]
    for key in SECRETS:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, g) for g in given):
            return "valid"
    return "invalid: no signature matches"


class Handler(BaseHTTPRequestHandler):
    server_version = "dispatchbox-playground-receiver"

    def do_GET(self):
        if self.path == "/health":
            self._answer(200, b'{"status":"ok"}')
        else:
            self._answer(404, b'{"error":"not found"}')

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        status = 503 if random.random() < FAILURE_RATE else 204
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        record = {
            "path": self.path,
            "webhook-id": self.headers.get("webhook-id"),
            "webhook-timestamp": self.headers.get("webhook-timestamp"),
            "signature": signature_status(self.headers, body),
            "answer": status,
            "body": parsed,
        }
        print(json.dumps(record, separators=(",", ":")), flush=True)
        if status == 503:
            # Honoured by the relay as the minimum delay before the next attempt.
            self._answer(503, b'{"error":"simulated failure"}', {"Retry-After": "2"})
        else:
            self._answer(204, b"")

    def _answer(self, status, body, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format, *args):
        # The JSON line above is the log; skip http.server's access line.
        pass


def main():
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    print(
        f"receiver: listening on :{PORT}, signatures "
        f"{'checked' if SECRETS else 'not checked'}, failure rate {FAILURE_RATE}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
