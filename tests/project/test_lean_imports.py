"""Start-up: our processes import python-tuf and httpx without boto3, rich or pygments (0.2 s a process), and an
``awskms:`` key still gets securesystemslib's real AWS KMS signer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from securesystemslib.signer import CryptoSigner

from pinnacle_updates.repo_tools.errors import KeyStoreError
from pinnacle_updates.repo_tools.keys import signer_from_uri

HIDDEN = ("boto3", "botocore", "rich", "pygments")


@pytest.mark.parametrize("entry", ["pinnacle_updates.client.cli", "pinnacle_updates.repo_tools.cli",
                                   "pinnacle_updates.client"])
def test_entry_points_import_without_unused_extras(entry: str) -> None:
    probe = (f"import sys, json, {entry}, tuf.ngclient, httpx\n"
             f"print(json.dumps(sorted(m for m in {HIDDEN!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_hidden_modules_import_normally_afterwards() -> None:
    probe = "import pinnacle_updates.client.cli, boto3, rich, pygments.lexers; print('ok')"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok"


def test_awskms_key_gets_the_aws_signer_with_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3.client("kms") needs only a region to be built; nothing here reaches AWS.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    public = CryptoSigner.generate_ecdsa().public_key
    signer = signer_from_uri("awskms:alias/pinnacle-test", public)
    assert type(signer).__name__ == "AWSSigner"
    assert signer.public_key == public


def test_awskms_refusal_stays_one_keystore_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    public = CryptoSigner.generate_ed25519().public_key  # AWS KMS has no ed25519 keys
    with pytest.raises(KeyStoreError, match="awskms") as caught:
        signer_from_uri("awskms:alias/pinnacle-test", public)
    assert "requires aws-kms" not in str(caught.value)
