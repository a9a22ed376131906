"""An OTLP/HTTP trace sink for `cargo xtask bench serve --otlp`: accepts POST /v1/traces,
decodes each export (so the exporter's work is real and checked) and counts the spans; prints
the totals when stopped."""

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

totals = {"exports": 0, "spans": 0, "bytes": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        totals["exports"] += 1
        totals["bytes"] += len(body)
        totals["spans"] += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def report(*_):
    print(f"{totals['spans']} spans in {totals['exports']} exports ({totals['bytes'] / 1e6:.1f} MB)", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
