"""`lazyctr serve --log-format text|json`: one access-log line per request on standard output."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt

from tests.conftest import CliRunner
from tests.registry.conftest import lazyctr_serve, sha256

DATA = bytes(range(256)) * 100


def call(address: str, method: str, path: str, data: bytes | None = None, **headers: str) -> int:
    request = urllib.request.Request(f"http://{address}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_json_lines_with_user_status_and_bytes(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(4)).decode()}\n")
    alice = "Basic " + base64.b64encode(b"alice:secret").decode()
    log = tmp_path / "access.log"
    digest = sha256(DATA)
    blob = f"/v2/team/app/blobs/{digest}"
    with (
        log.open("wb") as out,
        lazyctr_serve(
            tmp_path / "server", "--htpasswd", str(htpasswd), "--log-format", "json", stdout=out
        ) as address,
    ):
        assert call(address, "GET", "/v2/") == 401
        upload = f"/v2/team/app/blobs/uploads/?digest={digest}"
        assert call(address, "POST", upload, DATA, Authorization=alice) == 201
        assert call(address, "GET", blob, Authorization=alice) == 200
        assert call(address, "HEAD", blob, Authorization=alice) == 200
        assert call(address, "GET", blob, Authorization=alice, Range="bytes=10-19") == 206
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    ours = [e for e in lines if e["path"] != "/v2/" or e["status"] == 401]  # without the fixture's probe
    assert [(e["method"], e["path"], e["status"], e["user"]) for e in ours[-5:]] == [
        ("GET", "/v2/", 401, None),
        ("POST", f"/v2/team/app/blobs/uploads/?digest={digest}", 201, "alice"),
        ("GET", blob, 200, "alice"),
        ("HEAD", blob, 200, "alice"),
        ("GET", blob, 206, "alice"),
    ]
    assert [e["bytes"] for e in ours[-3:]] == [len(DATA), 0, 10]
    for entry in lines:
        assert set(entry) == {"time", "remote", "user", "method", "path", "status", "bytes", "duration"}
        assert entry["remote"] == "127.0.0.1"
        assert isinstance(entry["duration"], float) and entry["duration"] >= 0


def test_text_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with (
        log.open("wb") as out,
        lazyctr_serve(tmp_path / "server", stdout=out) as address,
    ):  # text: the default
        assert call(address, "GET", "/v2/nothing/here/blobs/sha256:12") == 400
    last = log.read_text().splitlines()[-1]
    assert re.fullmatch(r'127\.0\.0\.1 - "GET /v2/nothing/here/blobs/sha256:12" 400 \d+ \d+\.\d{6}s', last), (
        last
    )


def test_an_unknown_log_format_is_refused(lazyctr: CliRunner) -> None:
    result = lazyctr("serve", "--log-format", "xml", ok=False)
    assert result.code == 2 and "'xml' is not one of 'text', 'json'" in result.stderr
    assert "Traceback" not in result.stderr
