"""An HTTPS webhook receiver for scripts/interop.sh, written as an application would write one
with Python's standard library: it checks every request's X-Volley-Signature itself (HMAC-SHA256
of `t.body` under the shared secret, compared in constant time, t within five minutes), and
appends each event of a good request to a JSONL file.

    python3 webhook_receiver.py PORT CERT KEY SECRET_FILE OUT SECONDS

Answers 503 to its first request (volley must try again), then 200 to signed requests and 401
to anything else. Runs for SECONDS (or until SIGTERM), then prints one line:
`requests N good N bad N events N`.
"""
import hashlib
import hmac
import http.server
import json
import signal
import ssl
import sys
import threading
import time

port, cert, key, secret_file, out, seconds = sys.argv[1:7]
secret = open(secret_file).readline().strip().encode()
counts = {"requests": 0, "good": 0, "bad": 0, "events": 0}
lock = threading.Lock()


def verify(header, body):
    pairs = [p.split("=", 1) for p in header.split(",") if "=" in p]
    t = next((v for k, v in pairs if k == "t"), "")
    if not t.isdigit() or abs(time.time() - int(t)) > 300:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in pairs if k == "v1")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            counts["requests"] += 1
            first = counts["requests"] == 1
            if first:
                status = 503
            elif verify(self.headers.get("X-Volley-Signature", ""), body):
                status = 200
                counts["good"] += 1
                events = json.loads(body)["events"]
                counts["events"] += len(events)
                with open(out, "a") as f:
                    for e in events:
                        f.write(json.dumps(e) + "\n")
            else:
                status = 401
                counts["bad"] += 1
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait(float(seconds))
server.shutdown()
print(" ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
