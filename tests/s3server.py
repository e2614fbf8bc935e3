"""A real S3-compatible server (moto in server mode) on 127.0.0.1, for tests of remote output."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

# Static test credentials: moto accepts any; they only keep the clients from looking elsewhere for some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start moto on a free loopback port; yield ``endpoint`` (``127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


def bucket_uri(endpoint: str, bucket: str, prefix: str) -> str:
    """``s3://bucket/prefix`` pointing pyarrow at the loopback server; creates the bucket if needed."""
    import pyarrow.fs as pafs

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True)
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        fs.create_dir(bucket)
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
