"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for tests of remote output."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

# Static test credentials: moto accepts any; they only keep the clients from looking elsewhere for some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# Seconds an idle keep-alive connection is held open. Each connection has its own server thread; without a
# timeout a client that keeps its connection pooled (pyarrow's AWS SDK, boto3) parks that thread in recv() until the
# client closes, which for this process's clients is interpreter exit. Clients reconnect (and retry) transparently.
IDLE_TIMEOUT_S = 5


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start moto on a free loopback port; yield ``endpoint`` (``127.0.0.1:PORT``).

    On exit the server stops accepting, then waits (one shared deadline) for its request threads to end.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class IdleClosingHandler(MotoRequestHandler):
        timeout = IDLE_TIMEOUT_S  # socketserver sets it on the connection; an idle read then ends the thread

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=True,
        request_handler=IdleClosingHandler,
    )
    serving = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    serving.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
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
