import os
import sys
from pathlib import Path

import pytest

# Any Ray a test starts stays on loopback and needs no token.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers (runfolder.py) import by name


@pytest.fixture
def smoke_config_path() -> Path:
    return REPO / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A loopback S3 server (moto) shared by the session's tests; see tests/s3server.py."""
    from s3server import CREDENTIALS, s3_server

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)  # before any Ray starts: workers inherit them
    with s3_server() as endpoint:
        yield endpoint
