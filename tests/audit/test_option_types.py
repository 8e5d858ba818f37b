"""One set of option types: a malformed VMPL, SVN, policy or digest is exit 2 with one sentence everywhere."""

from __future__ import annotations

import pytest

from blindbox.cli import main
from builder.errors import RecipeError
from measure.errors import InputError
from blindbox.audit.idblock import id_block
from measure.spec import guest_policy_problem
from tests.conftest import VECTORS

from .test_cli import real_argv

SSM_KEYS = VECTORS / "sev-snp-measure" / "keyfile"
ID_BLOCK = ["id-block", "00" * 48, "--id-key", SSM_KEYS / "id_key_test.pem"]
BIT51 = hex(0x30000 | 1 << 51)


def cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


@pytest.mark.parametrize("extra, message", [
    (["--vmpl", "-1"], "--vmpl '-1' is not a valid VMPL; give 0 to 3."),
    (["--vmpl", "9"], "--vmpl '9' is not a valid VMPL; give 0 to 3."),
    (["--vmpl", "one"], "--vmpl 'one' is not an integer (use decimal or 0x-prefixed hex)."),
    (["--min-guest-svn", "-1"],
     "--min-guest-svn '-1' is not a valid SVN (32 bits); give 0 to 4294967295 (0xffffffff)."),
    (["--min-guest-svn", "0x100000000"], "--min-guest-svn '0x100000000' is not a valid SVN (32 bits)"),
    (["--policy", "0x1ffffffffffffffff"],
     "--policy '0x1ffffffffffffffff' is not a valid SEV-SNP guest policy: 0x1ffffffffffffffff does not fit in "
     "64 bits."),
    (["--policy", "0x10000"], "--policy '0x10000' is not a valid SEV-SNP guest policy: 0x10000 has bit 17 clear"),
    (["--policy", BIT51], f"--policy '{BIT51}' is not a valid SEV-SNP guest policy: {BIT51} sets reserved bit 51 "
                          f"(bits 63:26 must be zero)."),
    (["--measurement", "ab" * 49], "--measurement '" + "ab" * 49 + "' is not 48 bytes; give 96 hex digits or base64."),
    (["--host-data", "xyz"], "--host-data 'xyz' is not 32 bytes; give 64 hex digits."),
])
def test_verify_report_refuses_malformed_options_with_exit_2(extra, message, capsys):
    rc, out, err = cli([*real_argv("oak-milan-v3"), *extra], capsys)
    assert (rc, out) == (2, "") and err.startswith(f"blindbox: error: {message}") and err.count("\n") == 1, err


def test_a_valid_vmpl_and_svn_are_checks_that_fail_with_exit_3(capsys):
    rc, out, err = cli([*real_argv("oak-milan-v3"), "--vmpl", "3", "--min-guest-svn", "4294967295"], capsys)
    assert rc == 3 and "FAIL  vmpl" in out and "FAIL  guest_svn" in out


@pytest.mark.parametrize("extra, message", [
    (["--policy", BIT51], f"--policy '{BIT51}' is not a valid SEV-SNP guest policy: {BIT51} sets reserved bit 51"),
    (["--policy", "0x1ffffffffffffffff"], "--policy '0x1ffffffffffffffff' is not a valid SEV-SNP guest policy"),
    (["--guest-svn", "-1"], "--guest-svn '-1' is not a valid SVN (32 bits)"),
    (["--family-id", "xyz"], "--family-id 'xyz' is not 16 bytes; give 32 hex digits."),
])
def test_id_block_refuses_the_same_values_the_same_way(extra, message, capsys):
    rc, out, err = cli([*ID_BLOCK, *extra], capsys)
    assert rc == 2 and out == "" and err.startswith(f"blindbox: error: {message}"), err


def test_same_policy_value_same_answer_in_every_command(capsys):
    answers = set()
    for argv in ([*real_argv("oak-milan-v3"), "--policy", BIT51], [*ID_BLOCK, "--policy", BIT51]):
        answers.add(cli(argv, capsys)[::2])
    assert len(answers) == 1


@pytest.mark.parametrize("value", ["xyz", "00" * 31, "sha256:" + "0" * 63])
def test_verify_manifest_refuses_a_malformed_key_sha256(value, capsys, tmp_path):
    rc, out, err = cli(["verify-manifest", tmp_path / "m.json", "--key", tmp_path / "k.pem", "--key-sha256", value],
                       capsys)
    assert rc == 2 and err == f"blindbox: error: --key-sha256 {value!r} is not 32 bytes; give 64 hex digits.\n"


def test_guest_policy_rules():
    assert guest_policy_problem(0x30000) is None and guest_policy_problem(0x3ff_ffff) is None
    assert "bits 26, 63" in guest_policy_problem(0x30000 | 1 << 26 | 1 << 63)
    assert "does not fit" in guest_policy_problem(-1)
    with pytest.raises(InputError, match="sets reserved bit 51"):
        id_block(bytes(48), policy=0x30000 | 1 << 51)


def test_recipe_launch_policy_with_a_reserved_bit_names_its_line(tmp_path):
    from builder.recipe import load_recipe
    from tests.builder.test_recipe import BASE
    (tmp_path / "r.yaml").write_text(BASE + f"launch:\n  policy: {BIT51}\n")
    with pytest.raises(RecipeError) as ei:
        load_recipe(tmp_path / "r.yaml")
    line = (BASE + "launch:\n").count("\n") + 1
    assert ei.value.line == line and f"{BIT51} sets reserved bit 51" in str(ei.value)
    assert str(ei.value).startswith(f"{tmp_path / 'r.yaml'}:{line}: ")


@pytest.mark.parametrize("argv", [
    ["explain-report", "--measurement", "ab" * 47, "--ovmf", "fw.bin"],
    ["verify-report", "r.bin", "--no-signature", "--measurement", "ab" * 47],
    ["id-block", "ab" * 47, "--id-key", "k.pem"],
])
def test_a_short_measurement_is_the_same_error_in_every_command(argv, capsys):
    rc, out, err = cli(argv, capsys)
    name = "MEASUREMENT" if argv[0] == "id-block" else "--measurement"
    assert (rc, out) == (2, "") and err == (f"blindbox: error: {name} '{'ab' * 47}' is not 48 bytes; give 96 hex "
                                            f"digits{'' if argv[0] == 'explain-report' else ' or base64'}.\n")
