"""`lazyctr serve --s3 URL --s3-bucket B` through the real command line: push and pull with `lazyctr`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error
from tests.lazyctr.test_cli_push_pull import push_then_pull
from tests.registry.conftest import lazyctr_serve
from tests.registry.seaweedfs import ACCESS_KEY, SECRET_KEY, new_bucket, s3_client


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; `lazyctr serve` finds the credentials in the AWS_* environment, as boto3 does."""
    name = new_bucket(s3_endpoint, "cli")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return name


@pytest.mark.parametrize("cache_size", ["2G", "0"])
def test_push_and_pull_through_lazyctr_serve_on_s3(
    lazyctr: CliRunner,
    busybox_tar: Path,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    cache_size: str,
) -> None:
    options = ["--s3", s3_endpoint, "--s3-bucket", bucket, "--s3-cache-size", cache_size]
    with lazyctr_serve(tmp_path / "server", *options) as address:
        push_then_pull(lazyctr, busybox_tar, address)
    blobs = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix="blobs/sha256/")
    assert len(blobs.get("Contents", [])) == 3  # config, layer and manifest: in the bucket
    assert not (tmp_path / "server" / "registry" / "blobs").exists()  # and not on the local disk


def test_a_bad_cache_size_is_one_clear_line(lazyctr: CliRunner) -> None:
    result = lazyctr(
        "serve", "--s3", "http://127.0.0.1:1", "--s3-bucket", "b", "--s3-cache-size", "lots", ok=False
    )
    assert_clean_error(result, "invalid --s3-cache-size 'lots'")
