"""A deploy-notification receiver for the tests (run in an IPv4-only namespace): appends each POST as a
JSON line (event, signature, raw body, parsed body) to a file. Usage: notify_receiver.py PORT FILE"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
        with open(sys.argv[2], "a") as out:
            out.write(json.dumps({"event": self.headers.get("X-Pequod-Event"),
                                  "signature": self.headers.get("X-Pequod-Signature-256"),
                                  "raw": raw, "body": json.loads(raw)}) + "\n")
        self.send_response(204)
        self.end_headers()


HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
