"""launch-snp.sh: the QEMU command that launches a bundle as a measured SEV-SNP guest.

The script is generated with everything the launch digest depends on written into it
(the shapes with their vCPU count, vCPU type and SEV features, and the command line
bytes), and it checks the bundle's files against their sha256 before starting QEMU,
so what runs is what the manifest measured.

QEMU facts it relies on (qapi/qom.json): ``sev-snp-guest`` exists since QEMU 9.1 with
``SevCommonProperties`` (``sev-device``, ``cbitpos``, ``reduced-phys-bits`` (required),
``kernel-hashes``; ``debug-swap`` since 10.2) and ``SevSnpGuestProperties`` (``policy``,
``guest-visible-workarounds``, ``id-block``, ``id-auth``, ``author-key-enabled``,
``host-data``, ``vcek-disabled``; ``secure-tsc``, ``tsc-frequency`` since 10.2).  With
KVM_SEV_INIT2 (QEMU >= 9.1) the VMSA's SEV features are SNPActive (0x1) unless
``debug-swap=on`` adds DebugSwap (0x20).  ``id-block`` (the 96-byte ID_BLOCK) and ``id-auth``
(the 4096-byte ID_AUTH_INFO) are base64 strings for SNP_LAUNCH_FINISH; QEMU needs both or
neither, and ``author-key-enabled`` says whether ID_AUTH_INFO holds an author key.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.recipe import DEBUG_SWAP

#: the sev-snp-guest properties the script may pass, with the QEMU version that added them
SNP_GUEST_PROPERTIES = {
    "id": "9.1", "cbitpos": "9.1", "reduced-phys-bits": "9.1", "kernel-hashes": "9.1", "policy": "9.1",
    "debug-swap": "10.2", "id-block": "9.1", "id-auth": "9.1", "author-key-enabled": "9.1",
}


@dataclass(frozen=True)
class LaunchShape:
    id: str
    vcpus: int
    vcpu_type: str
    guest_features: int
    measurement: str
    #: the bundle's base64 ID_BLOCK / ID_AUTH_INFO files for this shape (both or neither)
    id_block: str | None = None
    id_auth: str | None = None
    author_key: bool = False


@dataclass(frozen=True)
class LaunchFiles:
    firmware: str
    kernel: str
    initrd: str
    #: the application root: the filesystem image and its dm-verity hash device (both or neither),
    #: attached read-only as virtio-blk in this order (the guest's ROOT_DATA_DEVICE, ROOT_HASH_DEVICE)
    rootfs: str | None = None
    verity: str | None = None


def sh_quote(data: bytes) -> bytes:
    """One shell word that expands to exactly ``data`` (any bytes but NUL)."""
    if b"\0" in data:
        raise ValueError("a shell word cannot carry a NUL byte")
    return b"'" + data.replace(b"'", b"'\\''") + b"'"


#: shape ids, vCPU types and file names are written unquoted into the script's tables
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._+-]*")


def render(*, name: str, tool: str, files: LaunchFiles, sha256: dict[str, str], cmdline: bytes,
           shapes: list[LaunchShape], memory_mib: int, policy: int, network: bool = False) -> bytes:
    """The script's bytes.  ``sha256`` maps each file name in ``files`` and every shape's ID
    block files to its digest.  ``network``: give the guest a user-mode virtio-net NIC
    (and the script its ``--forward`` option)."""
    if not shapes:
        raise ValueError("at least one shape")
    if (files.rootfs is None) != (files.verity is None):
        raise ValueError("the rootfs image and its verity hash device go together")
    disks = [f for f in (files.rootfs, files.verity) if f is not None]
    id_files: list[str] = []
    for s in shapes:
        if (s.id_block is None) != (s.id_auth is None):
            raise ValueError(f"shape {s.id}: QEMU takes id-block and id-auth together")
        id_files += [f for f in (s.id_block, s.id_auth) if f is not None and f not in id_files]
    for word in [s.id for s in shapes] + [s.vcpu_type for s in shapes] + [
            f for f in files.__dict__.values() if f is not None] + id_files:
        if not _SAFE.fullmatch(word):
            raise ValueError(f"{word!r} is not a plain name")
    shape_rows = "\n".join(
        f"  '{s.id} {s.vcpus} {s.vcpu_type} {s.guest_features:#x} {s.measurement} {s.id_block or '-'} "
        f"{s.id_auth or '-'} {'on' if s.author_key else 'off'}'" for s in shapes)
    file_rows = "\n".join(f"  '{f} {sha256[f]}'"
                          for f in (files.firmware, files.kernel, files.initrd, *disks, *id_files))
    needs_102 = any(s.guest_features & DEBUG_SWAP for s in shapes)
    id_note = ""
    if id_files:
        id_note = ("\n#\n# The shapes carry ID blocks (id-block=, id-auth=): the firmware refuses the launch "
                   "unless the\n# launch digest and policy equal what the recipe's ID key signed, and reports "
                   "then\n# carry the ID key digests listed in manifest.json.")
    forward_usage = forward_help = disk_note = devices = ""
    if disks:
        disk_note = ("\n# The application root (filesystem image, then its dm-verity hash device) is attached "
                     "read-only\n# as virtio-blk; the measured command line carries its verity table.")
        for i, disk in enumerate(disks):
            drive = ("rootfs", "verity")[i]
            devices += (f'argv+=(-drive "if=none,id={drive},file=${{here//,/,,}}/{disk},format=raw,readonly=on"\n'
                        f'  -device virtio-blk-pci,drive={drive},disable-legacy=on,iommu_platform=on)\n')
    if network:
        forward_usage = "\n#                      [--forward [ADDR:]HOSTPORT:GUESTPORT]..."
        forward_help = ("\n#   --forward [ADDR:]HOSTPORT:GUESTPORT\n"
                        "#                    forward TCP port HOSTPORT of the host (on ADDR, default 127.0.0.1)\n"
                        "#                    to GUESTPORT of the guest's user-mode NIC; repeatable")
        devices += ('argv+=(-netdev "user,id=net0$hostfwd"\n'
                    '  -device virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=on)\n')
    head = f"""#!/usr/bin/env bash
# launch-snp.sh for the blindbox bundle {name!r}, generated by {tool}. Do not edit: the
# launch digest depends on every value below; change the recipe and rebuild instead.
#
# Starts the bundle as an AMD SEV-SNP guest with measured direct boot: QEMU puts the
# SHA-256 of the kernel, the initrd and the command line into the firmware's hashes
# table (kernel-hashes=on), so the launch digest covers all four files. The expected
# digest of every shape is in manifest.json and listed by --list-shapes.{id_note}
#
# Needs: an SEV-SNP host (KVM with SNP enabled), QEMU >= 9.1 (sev-snp-guest), sha256sum.{
    chr(10) + '# Shapes with DebugSwap (SEV features 0x21) need QEMU >= 10.2 (debug-swap=on).' if needs_102 else ''}
#
# Usage: launch-snp.sh [--shape ID] [--list-shapes] [--memory MIB] [--cbitpos N]
#                      [--reduced-phys-bits N] [--no-verify] [--dry-run]{forward_usage} [-- QEMU-ARGS...]
#   --shape ID       the VM shape to launch (default: $BLINDBOX_SHAPE, else the first listed)
#   --memory MIB     guest memory (does not change the digest; default {memory_mib})
#   --cbitpos N, --reduced-phys-bits N
#                    the host's C-bit position and physical address reduction (default 51
#                    and 1, as on EPYC 7003/9004); they do not change the digest
#   --no-verify      skip checking the bundle files against their sha256
#   --dry-run        print the QEMU command instead of running it{forward_help}
#   -- QEMU-ARGS     appended to the QEMU command (devices, networking, -display, ...)
# Environment: QEMU names the QEMU binary (default qemu-system-x86_64).{disk_note}
set -euo pipefail

here=$(cd -- "$(dirname -- "${{BASH_SOURCE[0]}}")" && pwd -P)
qemu=${{QEMU:-qemu-system-x86_64}}

# The kernel command line, byte for byte as measured (QEMU hashes it plus one NUL byte).
cmdline={sh_quote(cmdline).decode("utf-8", "surrogateescape")}

# shape id, vCPUs, vCPU type (-cpu), SEV features, expected launch digest (SHA-384),
# base64 ID block and ID auth files (- for none), author-key-enabled
shapes=(
{shape_rows}
)

# bundle files and their sha256 (see manifest.json)
files=(
{file_rows}
)

shape=${{BLINDBOX_SHAPE:-}}
memory={memory_mib}
cbitpos=51
reduced_phys_bits=1
verify=1
dry_run=0
extra=()
network={1 if network else 0}
hostfwd=

die() {{ printf 'launch-snp.sh: %s\\n' "$*" >&2; exit 2; }}

# --forward [ADDR:]HOSTPORT:GUESTPORT: a TCP port of the host (on ADDR, default 127.0.0.1) to the guest
forward() {{
  local spec=$1 addr=127.0.0.1 host_port guest_port p
  [ "$network" = 1 ] || die "--forward $spec needs a network device, and this bundle was built without one (network: in the recipe)"
  case $spec in
    *:*:*) addr=${{spec%%:*}} spec=${{spec#*:}} ;;
    *:*) ;;
    *) die "--forward $1 is not [ADDR:]HOSTPORT:GUESTPORT; give e.g. 8080:80 or 127.0.0.1:8080:80" ;;
  esac
  host_port=${{spec%%:*}} guest_port=${{spec#*:}}
  [[ $addr =~ ^[0-9]{{1,3}}(\\.[0-9]{{1,3}}){{3}}$ ]] || die "--forward $1: $addr is not an IPv4 address; use [ADDR:]HOSTPORT:GUESTPORT, e.g. 127.0.0.1:8080:80"
  for p in "$host_port" "$guest_port"; do
    case $p in
      ''|*[!0-9]*) die "--forward $1: '$p' is not a port; use [ADDR:]HOSTPORT:GUESTPORT with ports 1-65535, e.g. 8080:80" ;;
    esac
    [ ${{#p}} -le 5 ] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "--forward $1: port $p is not from 1 to 65535"
  done
  hostfwd="$hostfwd,hostfwd=tcp:$addr:$host_port-:$guest_port"
}}

while [ $# -gt 0 ]; do
  case $1 in
    --shape) [ $# -ge 2 ] || die "--shape needs a value"; shape=$2; shift 2 ;;
    --shape=*) shape=${{1#--shape=}}; shift ;;
    --memory) [ $# -ge 2 ] || die "--memory needs a value"; memory=$2; shift 2 ;;
    --cbitpos) [ $# -ge 2 ] || die "--cbitpos needs a value"; cbitpos=$2; shift 2 ;;
    --reduced-phys-bits) [ $# -ge 2 ] || die "--reduced-phys-bits needs a value"; reduced_phys_bits=$2; shift 2 ;;
    --no-verify) verify=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    --forward) [ $# -ge 2 ] || die "--forward needs a value ([ADDR:]HOSTPORT:GUESTPORT)"; forward "$2"; shift 2 ;;
    --forward=*) forward "${{1#--forward=}}"; shift ;;
    --list-shapes)
      for row in "${{shapes[@]}}"; do
        set -- $row
        printf '%s  vcpus=%s cpu=%s guest_features=%s measurement=%s\\n' "$1" "$2" "$3" "$4" "$5"
      done
      exit 0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${{BASH_SOURCE[0]}}" | sed '$d; s/^# \\{{0,1\\}}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

for v in "$memory" "$cbitpos" "$reduced_phys_bits"; do
  case $v in ''|*[!0-9]*) die "$v is not a number" ;; esac
done

row=
for r in "${{shapes[@]}}"; do
  set -- $r
  if [ -z "$shape" ] || [ "$1" = "$shape" ]; then row=$r; break; fi
done
if [ -z "$row" ]; then
  known=$(for r in "${{shapes[@]}}"; do set -- $r; printf ' %s' "$1"; done)
  die "no shape $shape in this bundle; its shapes are:$known"
fi
set -- $row
shape=$1 vcpus=$2 cpu=$3 features=$4 measurement=$5 id_block=$6 id_auth=$7 author_key=$8

if [ "$verify" = 1 ]; then
  for r in "${{files[@]}}"; do
    set -- $r
    [ -f "$here/$1" ] || die "$here/$1 is missing"
    actual=$(sha256sum < "$here/$1") actual=${{actual%% *}}
    [ "$actual" = "$2" ] || die "$1 has sha256 $actual, not $2 as built; the launch digest would differ (rebuild the bundle, or --no-verify)"
  done
fi

snp="sev-snp-guest,id=sev0,cbitpos=$cbitpos,reduced-phys-bits=$reduced_phys_bits,kernel-hashes=on,policy={policy:#x}"
case $features in
  0x1) ;;
  0x21) snp="$snp,debug-swap=on" ;;
  *) die "shape $shape asks for SEV features $features, which QEMU cannot be asked for" ;;
esac
if [ "$id_block" != - ]; then
  for f in "$id_block" "$id_auth"; do
    [ -f "$here/$f" ] || die "$here/$f is missing; the firmware would refuse this shape without its ID block (rebuild the bundle)"
  done
  snp="$snp,id-block=$(<"$here/$id_block"),id-auth=$(<"$here/$id_auth"),author-key-enabled=$author_key"
fi

argv=(
  "$qemu"
  -machine q35,confidential-guest-support=sev0,memory-backend=ram0
  -object "memory-backend-memfd,id=ram0,size=${{memory}}M,share=true,prealloc=false"
  -object "$snp"
  -accel kvm
  -cpu "$cpu"
  -smp "$vcpus"
  -m "${{memory}}M"
  -bios "$here/{files.firmware}"
  -kernel "$here/{files.kernel}"
  -initrd "$here/{files.initrd}"
  -append "$cmdline"
  -nographic
  -no-reboot
)
{devices}argv+=("${{extra[@]}}")

printf 'launch-snp.sh: shape %s, expected launch digest %s\\n' "$shape" "$measurement" >&2
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${{argv[@]}}"; printf '\\n'
  exit 0
fi
exec "${{argv[@]}}"
"""
    return head.encode("utf-8", "surrogateescape")
