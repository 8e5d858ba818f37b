"""``blindbox fetch`` prints the cached, verified path of a real Debian file."""

import hashlib
import json

import pytest

from blindbox.cli import main


@pytest.mark.network
def test_fetch_member_json(capsys):
    rc = main(["fetch", "ovmf-amdsev", "--suite", "sid", "--allow-stale", "--member",
               "/usr/share/ovmf/OVMF.amdsev.fd", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    data = json.loads(out)
    assert data["name"] == "ovmf-amdsev" and data["version"]
    with open(data["path"], "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == data["path_sha256"]


@pytest.mark.network
def test_fetch_missing_member_is_bad_input(capsys):
    rc = main(["fetch", "ovmf-amdsev", "--suite", "sid", "--allow-stale", "--member", "/usr/share/ovmf/NOPE.fd"])
    _, err = capsys.readouterr()
    assert rc == 2 and "NOPE.fd" in err and "Traceback" not in err
