"""A domain's HTTPS side of MTA-STS and TLS reporting for scripts/interop.sh, written with Python's
standard library: it serves the MTA-STS policy (RFC 8461 §3.3: `GET /.well-known/mta-sts.txt`,
`text/plain`) and takes TLS reports POSTed to /report (RFC 8460 §5.4), each checked as a
report's receiver would (`application/tlsrpt+gzip`, gzip of RFC 8460 JSON with the fields
§4.4 requires) and written to OUT_DIR/N.json.

    python3 tls_policy_server.py PORT CERT KEY POLICY_FILE OUT_DIR SECONDS

Answers 400 to a report it cannot read. Runs for SECONDS (or until SIGTERM).
"""
import gzip
import http.server
import json
import os
import signal
import ssl
import sys
import threading

port, cert, key, policy_file, out_dir, seconds = sys.argv[1:7]
policy = open(policy_file, "rb").read()
lock = threading.Lock()
received = 0


def check(report):
    for field in ("organization-name", "date-range", "contact-info", "report-id", "policies"):
        assert field in report, f"no {field}"
    for p in report["policies"]:
        assert p["policy"]["policy-type"] in ("sts", "tlsa", "no-policy-found"), p
        assert p["policy"]["policy-domain"], p
        summary = p["summary"]
        failed = sum(d["failed-session-count"] for d in p.get("failure-details", []))
        assert failed == summary["total-failure-session-count"], p


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(policy)))
        self.end_headers()
        self.wfile.write(policy)

    def do_POST(self):
        global received
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            assert self.path == "/report", self.path
            assert self.headers.get("Content-Type") == "application/tlsrpt+gzip", self.headers.get("Content-Type")
            report = json.loads(gzip.decompress(body))
            check(report)
        except Exception as e:  # noqa: BLE001 - any flaw is the sender's: say it, refuse it
            print(f"refused a report: {e!r}", flush=True)
            self.send_error(400)
            return
        with lock:
            received += 1
            with open(os.path.join(out_dir, f"{received}.json"), "w") as f:
                json.dump(report, f)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


os.makedirs(out_dir, exist_ok=True)
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
timer = threading.Timer(float(seconds), server.shutdown)
timer.daemon = True
timer.start()
server.serve_forever()
