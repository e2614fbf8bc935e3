"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for tests of remote output."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

# Static test credentials: moto accepts any; they only keep the clients from looking elsewhere for some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# Seconds an idle keep-alive connection is held open. Each connection has its own server thread; without a
# timeout a client that keeps its connection pooled (pyarrow's AWS SDK, boto3) parks that thread in recv() until the
# client closes, which for this process's clients is interpreter exit. Clients reconnect (and retry) transparently.
IDLE_TIMEOUT_S = 5


@dataclass
class S3Server:
    """A running loopback S3 server: where it listens, and every request it has answered (method, path, query)."""

    endpoint: str  # 127.0.0.1:PORT
    requests: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)

    def listings(self, since: int = 0) -> list[str]:
        """The prefixes of the object listings (ListObjects, first pages only) answered after request ``since``."""
        return [query.get("prefix", [""])[0] for method, _, query in self.requests[since:]
                if method == "GET" and ("list-type" in query or "prefix" in query or "delimiter" in query)
                and "continuation-token" not in query and "marker" not in query]


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto on a free loopback port and yield it.

    On exit the server stops accepting, then waits (one shared deadline) for its request threads to end.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    connections: set[socket.socket] = set()

    class IdleClosingHandler(MotoRequestHandler):
        timeout = IDLE_TIMEOUT_S  # socketserver sets it on the connection; an idle read then ends the thread

        def setup(self):
            super().setup()
            connections.add(self.connection)

        def finish(self):
            connections.discard(self.connection)
            super().finish()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto = DomainDispatcherApplication(create_backend_app)
    handle = S3Server("")

    def app(environ, start_response):
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        handle.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), query))
        return moto(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=IdleClosingHandler)
    handle.endpoint = f"127.0.0.1:{server.server_port}"
    serving = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    serving.start()
    try:
        yield handle
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
        for connection in list(connections):  # a kept-alive connection's thread waits in a read: end it now
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + IDLE_TIMEOUT_S + 5
        for thread in threading.enumerate():
            if "process_request_thread" in thread.name:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))


def bucket_uri(endpoint: str, bucket: str, prefix: str) -> str:
    """``s3://bucket/prefix`` pointing pyarrow at the loopback server; creates the bucket if needed."""
    import pyarrow.fs as pafs

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True)
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        fs.create_dir(bucket)
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
