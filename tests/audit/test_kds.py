"""``verify-report --fetch``: the VCEK (and, if needed, the cert_chain) from a KDS, cached on disk.

AMD's KDS is never contacted: every test points BLINDBOX_KDS_URL at a local http.server
on 127.0.0.1 (or at a closed port) and BLINDBOX_CACHE at a temporary directory.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from blindbox.cli import main
from blindbox.audit.kds import KdsClient, KdsUnavailable, cert_chain_url, vcek_url
from blindbox.audit.report import Product, parse_report
from tests.audit.test_verify import REAL
from tests.audit.testchain import CHIP_ID, make_chain, make_report
from tests.conftest import VECTORS

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
AMD_ROOTS = Path(__file__).resolve().parents[2] / "blindbox" / "audit" / "amd_roots"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting fails at once


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a handler thread forever

    def do_GET(self):  # noqa: N802 - http.server's name
        server = self.server
        server.requests.append(self.path)
        status, body, headers = server.routes.get(self.path, (404, b"Not Found", {}))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Kds:
    """A local stand-in for AMD's KDS: ``routes`` maps path?query to (status, body, headers)."""

    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.routes = {}
        self.server.requests = []
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.running = True

    @property
    def routes(self) -> dict:
        return self.server.routes

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def stop(self):
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("BLINDBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BLINDBOX_KDS_URL", CLOSED)


@pytest.fixture
def kds(monkeypatch):
    server = Kds()
    monkeypatch.setenv("BLINDBOX_KDS_URL", server.url)
    try:
        yield server
    finally:
        server.stop()


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def one_sentence(err: str) -> str:
    assert err.startswith("blindbox: error: ") and err.count("\n") == 1 and err.rstrip().endswith(".")
    return err


def test_chain(tmp_path, product=Product.MILAN, label="a"):
    """(report path, chain, certs dir holding only the ASK, test ARK)."""
    chain = make_chain(product, label=label)
    certs, root = chain.write(tmp_path / label)
    (certs / "vcek.der").unlink()  # --certs then holds no VCEK: --fetch gets it
    report = tmp_path / f"{label}-report.bin"
    report.write_bytes(make_report(chain))
    return report, chain, certs, root


test_chain.__test__ = False  # a helper, not a test

# The exact request AMD's KDS expects (spec 57230; AMD's own client virtee/snpguest writes the
# SPLs two-digit, fmcSPL first): 64-byte hwID on Milan/Genoa, the first 8 bytes on Turin.
EXPECTED = {
    Product.MILAN: f"/vcek/v1/Milan/{CHIP_ID.hex()}?blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=219",
    Product.GENOA: f"/vcek/v1/Genoa/{CHIP_ID.hex()}?blSPL=04&teeSPL=00&snpSPL=24&ucodeSPL=219",
    Product.TURIN: "/vcek/v1/Turin/0102030405060708?fmcSPL=00&blSPL=01&teeSPL=00&snpSPL=02&ucodeSPL=71",
}


@pytest.mark.parametrize("product", list(Product))
def test_fetches_the_vcek_with_the_exact_kds_request(product, kds, tmp_path, capsys):
    report, chain, certs, root = test_chain(tmp_path, product)
    kds.routes[EXPECTED[product]] = (200, chain.vcek.public_bytes(DER), {})
    rc, out, err = cli(["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root], capsys)
    assert (rc, err) == (0, ""), out
    assert kds.requests == [EXPECTED[product]]  # one request, nothing else (the ASK was given)
    path, query = EXPECTED[product].split("?")
    assert len(path.rsplit("/", 1)[1]) == (16 if product is Product.TURIN else 128)
    assert list(urllib.parse.parse_qs(query)) == (["fmcSPL"] if product is Product.TURIN else []) + [
        "blSPL", "teeSPL", "snpSPL", "ucodeSPL"]
    assert f"VCEK downloaded: {kds.url}{EXPECTED[product]}" in out and "verdict: PASS" in out
    cached = list((tmp_path / "cache" / "kds").iterdir())
    assert [p.read_bytes() for p in cached] == [chain.vcek.public_bytes(DER)]


def test_second_call_uses_the_cache_without_network(kds, tmp_path, capsys):
    report, chain, certs, root = test_chain(tmp_path)
    kds.routes[EXPECTED[Product.MILAN]] = (200, chain.vcek.public_bytes(DER), {})
    argv = ["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root, "--json"]
    assert cli(argv, capsys)[0] == 0
    kds.stop()
    for extra in ([], ["--offline"]):
        rc, out, err = cli(argv + extra, capsys)
        assert (rc, err) == (0, "")
        doc = json.loads(out)
        assert doc["verdict"] == "pass" and doc["fetched"][0]["from_cache"] is True
        assert doc["fetched"][0]["url"] == kds.url + EXPECTED[Product.MILAN]
        assert doc["certificates"]["leaf"]["source"].endswith(f"(cached from {kds.url}{EXPECTED[Product.MILAN]})")
    assert kds.requests == [EXPECTED[Product.MILAN]]


def test_offline_miss_exits_2_with_one_sentence(tmp_path, capsys):
    report, _, certs, root = test_chain(tmp_path)
    rc, out, err = cli(["verify-report", report, "--fetch", "--offline", "--certs", certs, "--trust-root",
                        root], capsys)
    assert rc == 2 and out == ""
    assert "not in the KDS cache" in one_sentence(err) and "--offline" in err and CLOSED in err
    rc, _, err = cli(["verify-report", report, "--offline", "--certs", certs], capsys)
    assert rc == 2 and "give --fetch too" in one_sentence(err)


def test_http_404_names_the_url_and_what_to_do(kds, tmp_path, capsys):
    report, _, certs, root = test_chain(tmp_path)
    rc, out, err = cli(["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root], capsys)
    assert rc == 2 and out == ""
    assert f"{kds.url}{EXPECTED[Product.MILAN]} (HTTP 404)" in one_sentence(err) and "--certs" in err
    assert not (tmp_path / "cache" / "kds").exists()  # nothing cached


def test_rate_limit_429_is_reported_once_and_not_retried(kds, tmp_path, capsys):
    report, _, certs, root = test_chain(tmp_path)
    kds.routes[EXPECTED[Product.MILAN]] = (429, b"Too Many Requests", {"Retry-After": "120"})
    rc, _, err = cli(["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root], capsys)
    assert rc == 2 and "HTTP 429" in one_sentence(err) and "wait 120 seconds" in err
    assert kds.requests == [EXPECTED[Product.MILAN]]


def test_unreachable_kds(tmp_path, capsys):
    report, _, certs, root = test_chain(tmp_path)
    rc, _, err = cli(["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root], capsys)
    assert rc == 2 and "cannot reach the KDS" in one_sentence(err) and "BLINDBOX_KDS_URL" in err


def test_fetched_vcek_that_does_not_chain_exits_3(kds, tmp_path, capsys):
    report, chain, certs, root = test_chain(tmp_path, label="a")
    other = make_chain(Product.MILAN, label="b")  # same names, other keys
    kds.routes[EXPECTED[Product.MILAN]] = (200, other.vcek.public_bytes(DER), {})
    rc, out, err = cli(["verify-report", report, "--fetch", "--certs", certs, "--trust-root", root], capsys)
    assert rc == 3 and "FAIL  chain" in out and "signature does not verify" in err


def test_cert_chain_is_fetched_only_when_needed_and_must_be_amds(kds, tmp_path, capsys):
    report, chain, _, root = test_chain(tmp_path)
    kds.routes[EXPECTED[Product.MILAN]] = (200, chain.vcek.public_bytes(DER), {})
    chain_path = "/vcek/v1/Milan/cert_chain"
    # A server handing out its own ASK/ARK is refused even though --trust-root names that ARK.
    kds.routes[chain_path] = (200, chain.ask.public_bytes(PEM) + chain.ark.public_bytes(PEM), {})
    argv = ["verify-report", report, "--fetch", "--trust-root", root]
    rc, out, err = cli(argv, capsys)
    assert rc == 3 and "not AMD's pinned Milan ASK or ARK" in one_sentence(err)
    assert kds.requests == [EXPECTED[Product.MILAN], chain_path]
    # AMD's real chain passes the pin check, and the test VCEK then fails to chain as usual.
    kds.routes[chain_path] = (200, (AMD_ROOTS / "milan_ask.pem").read_bytes()
                              + (AMD_ROOTS / "milan_ark.pem").read_bytes(), {})
    rc, out, err = cli(argv + ["--json"], capsys)
    assert rc == 3 and "no known certificate issued the VCEK" in err
    assert kds.requests[2:] == [chain_path]  # the VCEK came from the cache; the refused chain was not cached


@pytest.mark.parametrize("name,path", [
    ("oak-milan-v3", None),
    ("oak-turin-v5", "/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=00&blSPL=01&teeSPL=00&snpSPL=02&ucodeSPL=71"),
])
def test_real_report_with_its_real_vcek_served_verifies_against_the_pinned_roots(name, path, kds, capsys):
    rel, (vcek,), at, product, _ = REAL[name]
    report = parse_report((VECTORS / rel).read_bytes())
    path = path or vcek_url(report, product).removeprefix("https://kdsintf.amd.com")
    kds.routes[path] = (200, (VECTORS / vcek).read_bytes(), {})
    rc, out, err = cli(["verify-report", VECTORS / rel, "--fetch", "--at", at], capsys)
    assert (rc, err) == (0, "") and "(AMD " in out and "verdict: PASS" in out
    assert kds.requests == [path]


def test_vlek_cannot_be_fetched(capsys):
    rel = REAL["trustee-vlek-v3"][0]
    rc, _, err = cli(["verify-report", VECTORS / rel, "--fetch"], capsys)
    assert rc == 2 and "VLEK" in one_sentence(err) and "does not serve" in err and "--certs" in err


def test_a_given_vcek_is_never_refetched(capsys):
    rel, certs, at, _, _ = REAL["oak-genoa-v5"]
    rc, out, err = cli(["verify-report", VECTORS / rel, "--fetch", "--offline", "--certs", VECTORS / certs[0],
                        "--at", at], capsys)
    assert (rc, err) == (0, "") and "KDS" not in out


def test_version_2_report_needs_the_product(capsys):
    rel = REAL["virtee-milan-v2"][0]
    rc, _, err = cli(["verify-report", VECTORS / rel, "--fetch"], capsys)
    assert rc == 2 and "give --product" in one_sentence(err)
    rc, _, err = cli(["verify-report", VECTORS / rel, "--fetch", "--product", "milan"], capsys)
    assert rc == 2 and "cannot reach the KDS" in err and "/vcek/v1/Milan/" in err


def test_library_urls_and_cache(tmp_path, kds):
    report = parse_report(make_report(make_chain(Product.TURIN)))
    assert vcek_url(report, Product.TURIN, base=kds.url + "/") == kds.url + EXPECTED[Product.TURIN]
    assert cert_chain_url(Product.GENOA) == "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain"
    client = KdsClient(cache_dir=tmp_path / "kds")
    assert client.base == kds.url
    # A damaged cache entry is replaced by a fresh download; offline it is an error.
    chain = make_chain(Product.TURIN)
    url = kds.url + EXPECTED[Product.TURIN]
    kds.routes[EXPECTED[Product.TURIN]] = (200, chain.vcek.public_bytes(DER), {})
    entry = client.cache_path(url, ".der")
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"garbage")
    with pytest.raises(KdsUnavailable, match="not a valid certificate; delete it"):
        KdsClient(cache_dir=tmp_path / "kds", offline=True).vcek(report, Product.TURIN)
    got = client.vcek(report, Product.TURIN)
    assert not got.from_cache and entry.read_bytes() == chain.vcek.public_bytes(DER)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary file left
    # MASK_CHIP_KEY: no hwID to ask for.
    masked = make_report(chain, chip_id=bytes(64))
    with pytest.raises(KdsUnavailable, match="CHIP_ID is zero"):
        client.vcek(parse_report(masked), Product.TURIN)


def test_non_certificate_answer_is_not_cached(kds, tmp_path):
    report = parse_report(make_report(make_chain(Product.MILAN)))
    kds.routes[EXPECTED[Product.MILAN]] = (200, b"<html>maintenance</html>", {})
    client = KdsClient(cache_dir=tmp_path / "kds")
    with pytest.raises(KdsUnavailable, match="did not answer with a VCEK certificate"):
        client.vcek(report, Product.MILAN)
    assert not (tmp_path / "kds").exists()
