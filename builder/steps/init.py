"""The default ``/init`` of a blindbox initrd and the marker lines it prints.

The init is a busybox ``sh`` script (kept here as text, so it ships with the Python
package).  It shows that the guest is the measured one, not merely alive:

``BLINDBOX-BOOT-OK``
    the initrd's init runs (proc, sys and dev mounted).
``BLINDBOX-CMDLINE-SHA256 <hex>``
    SHA-256 of the exact bytes of ``/proc/cmdline``, trailing newline included: nothing
    is stripped or re-encoded in the guest, so the host side does all the reasoning
    (see :func:`builder.boot.expected_proc_cmdline`).
``BLINDBOX-CMDLINE-HEX <hex>``
    the same bytes in hex, so that a mismatch can be explained.
``BLINDBOX-MODULE <name> <outcome>``
    for every module the recipe asked for except sev-guest: ``loaded``, ``builtin`` or
    ``not-loaded: <modprobe's message>``.
``BLINDBOX-SEV-GUEST <outcome>``
    the outcome of ``modprobe sev-guest``, judged by ``/sys/module/sev_guest`` (not by
    the exit status, which busybox versions report differently): ``loaded``,
    ``builtin``, ``not-in-initrd`` or ``not-loaded: <modprobe's message>``.  Without SEV
    hardware the driver finds no platform device and the kernel refuses it; that is
    reported as it happens, never faked.
``BLINDBOX-SEV-DEVICE present|absent``
    whether ``/dev/sev-guest`` exists.
``BLINDBOX-MEM-ENCRYPT <kernel line>|none``
    the kernel's "Memory Encryption Features active" line, if it printed one.
``BLINDBOX-APP-EXIT <status>``
    only with an app command: its exit status.
``BLINDBOX-POWEROFF``
    printed just before ``poweroff -f``.

The application root's init (:func:`render_rootfs_init`) prints the lines above up to
``BLINDBOX-MEM-ENCRYPT``, then:

``BLINDBOX-VERITY-OK <bytes>``
    the dm-verity device was created from the ``blindbox.root="<table>"`` parameter of
    ``/proc/cmdline`` and every one of its ``<bytes>`` was read through it, so every data
    and hash block was checked against the measured root hash before anything of the
    root is used.
``BLINDBOX-VERITY-FAILED <reason>``
    no disks, no table, ``dmsetup`` refused it, a read failed (corruption) or not the
    whole device was read, or the target reports corruption; followed by the kernel's
    lines, then ``BLINDBOX-POWEROFF``: the application never starts.
``BLINDBOX-DMESG <kernel line>``
    each ``device-mapper: verity`` kernel line (printk is lowered, so they do not reach
    the console by themselves): after a verity failure, and new ones after the app exits.
``BLINDBOX-ROOT-FAILED <reason>``
    the verified root could not be used (mount, a missing ``/dev``, ``/proc``, ``/sys``,
    ``/tmp`` or ``/run`` mount point, the working directory); then ``BLINDBOX-POWEROFF``.
``BLINDBOX-NET <address>/<prefix>``
    with network: the DHCP lease on eth0 (address and default route set).
``BLINDBOX-NET-FAILED <reason>``
    with network: no eth0 or no lease; then ``BLINDBOX-POWEROFF``, no application.
``BLINDBOX-NFT <line>``
    with a runtime policy: each line of ``nft list ruleset`` after the rule set was loaded (the
    kernel's own account of what it enforces, tabs as printed).
``BLINDBOX-RUNTIME-POLICY-OK <sha256>``
    with a runtime policy: the SHA-256 of the initrd's ``/etc/blindbox/runtime-policy.json``
    equals the command line's ``blindbox.runtime_policy`` value, and its rule set
    (``/etc/blindbox/runtime-policy.nft``, default drop) is loaded; printed after the
    ``BLINDBOX-NFT`` lines, before the agent or the application starts.
``BLINDBOX-RUNTIME-POLICY-FAILED <reason>``
    the command line names no runtime policy or another one than the initrd carries, or ``nft``
    refused the rule set (its error text follows on the same line); then ``BLINDBOX-POWEROFF``:
    neither the agent nor the application starts (fail closed).
``BLINDBOX-APP-START <argv0>``
    just before ``switch_root`` (with an attestation agent: in stage 2, after the agent's ready
    line, just before the application starts); control characters and backslashes of the program path
    are shown as ``\\xNN`` and ``\\\\`` so that the marker stays one line.
``BLINDBOX-AGENT-START <port>``
    with an attestation agent, in stage 2: the agent is being started in its own root
    (``/run/blindbox/agent``, a tmpfs copy of the initrd's ``/agent``) to listen on ``<port>``.
    Its own lines follow: ``BLINDBOX-AGENT-READY <listen> <SPKI sha256>`` when it accepts
    connections (only then does the application start), or ``BLINDBOX-AGENT-REFUSED
    <sentence>`` when it cannot get reports.
``BLINDBOX-AGENT-FAILED <reason>``
    the agent refused, exited or printed no ready line within
    :data:`AGENT_WAIT_SECONDS`; ``BLINDBOX-POWEROFF`` follows and the application never starts.
``BLINDBOX-AGENT-EXIT <status>``
    the agent exited with this status.
``BLINDBOX-APP-EXIT <status>``
    the application (a child of PID 1) exited with this status (128+N: killed by
    signal N); ``BLINDBOX-DMESG`` lines and ``BLINDBOX-POWEROFF`` follow.

Kernel messages are lowered to emergencies only (``/proc/sys/kernel/printk``) after the
mounts so that they cannot split marker lines on the serial console.

Part of the builder: it may import the calculator, the auditor, :mod:`blindbox.files`,
``yaml`` and ``elftools``, never :mod:`blindbox.cli` or ``click`` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from builder.errors import BuildError
from measure.runtime_policy import CMDLINE_PARAM as RUNTIME_POLICY_PARAM
from measure.runtime_policy import GUEST_PATH as RUNTIME_POLICY_PATH
from measure.verity import CMDLINE_PARAM

from .nft import NFT_DEST, NFT_MODULES, RULESET_PATH

MARKER_BOOT = "BLINDBOX-BOOT-OK"
MARKER_CMDLINE_SHA256 = "BLINDBOX-CMDLINE-SHA256"
MARKER_CMDLINE_HEX = "BLINDBOX-CMDLINE-HEX"
MARKER_MODULE = "BLINDBOX-MODULE"
MARKER_SEV_GUEST = "BLINDBOX-SEV-GUEST"
MARKER_SEV_DEVICE = "BLINDBOX-SEV-DEVICE"
MARKER_MEM_ENCRYPT = "BLINDBOX-MEM-ENCRYPT"
MARKER_APP_EXIT = "BLINDBOX-APP-EXIT"
MARKER_POWEROFF = "BLINDBOX-POWEROFF"

#: Busybox applets the default init calls (the initrd links each to /bin/busybox).
INIT_APPLETS = ("sh", "mount", "cat", "sha256sum", "od", "tr", "modprobe", "poweroff", "dmesg", "grep",
                "sleep", "mkdir")


#: The kernel parameter that carries the application root's dm-verity table (in double quotes);
#: defined beside the table parser the auditor uses.
ROOT_PARAM = CMDLINE_PARAM
#: The disks of the application root, in the order launch-snp.sh and smoke boots attach them
#: (read-only virtio-blk): the filesystem image, then its dm-verity hash device.
ROOT_DATA_DEVICE = "/dev/vda"
ROOT_HASH_DEVICE = "/dev/vdb"


@dataclass(frozen=True)
class AppConfig:
    """How the init starts the application inside the verified root (all resolved at build time).

    ``argv``: the program (an absolute path inside the root) and its arguments;
    ``env``: the environment, exactly these variables in this order; ``workdir``: an
    absolute directory inside the root; ``uid``/``gid``: numeric (names are resolved
    against the root's /etc/passwd and /etc/group when the image is built).
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    uid: int = 0
    gid: int = 0


class InitError(BuildError):
    """The init script cannot be generated from the given settings."""


def _quote(text: str) -> str:
    """A single-quoted sh word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c in "'\"\\$`;&|<>()" for c in name) or "\0" in name:
        raise InitError(f"kernel module name {name!r} cannot be used in the init script; give a plain module name "
                        f"such as 'virtio_blk'.")
    return name


_HEAD = """\
#!/bin/sh
# /init of a blindbox-guest initrd (generated by builder/steps/init.py). Runs under busybox sh.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
echo "{boot}"
set -- $(sha256sum /proc/cmdline)
echo "{sha} $1"
echo "{hex} $(od -An -v -tx1 /proc/cmdline | tr -d ' \\n')"
"""

_MODULE = """\
out=$(modprobe {name} 2>&1); rc=$?
if [ -d /sys/module/{sysname} ]; then
  echo "{marker}{label} loaded"
else
  echo "{marker}{label} not-loaded: $(echo "${{out:-modprobe exited $rc}}" | tr '\\n' ' ')"
fi
"""

_TAIL = """\
if [ -c /dev/sev-guest ]; then echo "{device} present"; else echo "{device} absent"; fi
line=$(dmesg | grep -m1 'Memory Encryption Features active')
echo "{mem} ${{line:-none}}"
"""

_APP = """\
/bin/sh -c {command}
echo "{marker} $?"
"""

_END = """\
echo "{marker}"
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
while :; do sleep 60; done
"""


def _checks(modules: Sequence[str], builtin: Sequence[str], sev_guest: str) -> list[str]:
    """The part every init starts with: mounts, printk, command line, modules, sev-guest, memory encryption."""
    if sev_guest not in ("carried", "builtin", "absent"):
        raise InitError(f"sev_guest must be 'carried', 'builtin' or 'absent', not {sev_guest!r}.")
    parts = [_HEAD.format(boot=MARKER_BOOT, sha=MARKER_CMDLINE_SHA256, hex=MARKER_CMDLINE_HEX)]
    for name in builtin:
        parts.append(f'echo "{MARKER_MODULE} {_check_name(name)} builtin"\n')
    for name in modules:
        name = _check_name(name)
        parts.append(_MODULE.format(name=name, sysname=name.replace("-", "_"), marker=MARKER_MODULE,
                                    label=f" {name}"))
    if sev_guest == "carried":
        parts.append(_MODULE.format(name="sev-guest", sysname="sev_guest", marker=MARKER_SEV_GUEST, label=""))
    elif sev_guest == "builtin":
        parts.append(f'echo "{MARKER_SEV_GUEST} builtin"\n')
    else:
        parts.append(f'echo "{MARKER_SEV_GUEST} not-in-initrd"\n')
    parts.append(_TAIL.format(device=MARKER_SEV_DEVICE, mem=MARKER_MEM_ENCRYPT))
    return parts


def render_init(*, modules: Sequence[str] = (), builtin: Sequence[str] = (), sev_guest: str = "carried",
                app_command: str | None = None) -> bytes:
    """The default ``/init``.

    ``modules``: modules (other than sev-guest) to ``modprobe`` and report, in order;
    ``builtin``: requested modules built into the kernel, reported as such.
    ``sev_guest``: ``carried`` (the initrd has the module: modprobe it), ``builtin`` or
    ``absent`` (the recipe did not ask for it).  ``app_command``: a shell command run
    after the checks; its exit status is printed.
    """
    parts = _checks(modules, builtin, sev_guest)
    if app_command is not None:
        if "\0" in app_command or not app_command.strip():
            raise InitError("the app command is empty or contains a NUL byte; give a shell command line.")
        parts.append(_APP.format(command=_quote(app_command), marker=MARKER_APP_EXIT))
    parts.append(_END.format(marker=MARKER_POWEROFF))
    return "".join(parts).encode("utf-8")


# -- the application root -----------------------------------------------------------------
#: Modules the rootfs init loads (after the recipe's own), and those it adds for the network.
ROOTFS_MODULES = ("virtio_pci", "virtio_blk", "dm-mod", "dm-verity", "erofs")
NET_MODULES = ("virtio_net",)
#: Where the initrd must carry Debian's dmsetup (with its ELF library closure).
DMSETUP_PATH = "/sbin/dmsetup"
#: The tmpfs directory of the new root that holds the static busybox and the stage-2 script.
STAGE2_DIR = "/run/blindbox"
#: How long the init waits for the root's disks and for eth0 to appear.
DEVICE_WAIT_SECONDS = 30

MARKER_VERITY_OK = "BLINDBOX-VERITY-OK"
MARKER_VERITY_FAILED = "BLINDBOX-VERITY-FAILED"
MARKER_DMESG = "BLINDBOX-DMESG"
MARKER_ROOT_FAILED = "BLINDBOX-ROOT-FAILED"
MARKER_NET = "BLINDBOX-NET"
MARKER_NET_FAILED = "BLINDBOX-NET-FAILED"
MARKER_APP_START = "BLINDBOX-APP-START"
MARKER_NFT = "BLINDBOX-NFT"
MARKER_POLICY_OK = "BLINDBOX-RUNTIME-POLICY-OK"
MARKER_POLICY_FAILED = "BLINDBOX-RUNTIME-POLICY-FAILED"
MARKER_AGENT_START = "BLINDBOX-AGENT-START"
MARKER_AGENT_FAILED = "BLINDBOX-AGENT-FAILED"
MARKER_AGENT_EXIT = "BLINDBOX-AGENT-EXIT"
#: printed by the agent itself (blindbox.agent; the attested-TLS contract)
MARKER_AGENT_READY = "BLINDBOX-AGENT-READY"
MARKER_AGENT_REFUSED = "BLINDBOX-AGENT-REFUSED"
#: where the initrd carries the agent's tree, and where stage 2 runs it (a tmpfs of the new root)
AGENT_INITRD_DIR = "/agent"
AGENT_DIR = STAGE2_DIR + "/agent"
#: how long stage 2 waits for the agent's ready line (Python starts slowly under software emulation)
AGENT_WAIT_SECONDS = 180


@dataclass(frozen=True)
class AgentLaunch:
    """How stage 2 starts the attestation agent: its TLS port, the application's loopback port, and
    the agent's ``--attester`` value (``auto`` or ``simulated:HOST:PORT``)."""

    listen: int
    app: int
    attester: str
    python: str = "/usr/bin/python3.11"
    launcher: str = "/opt/blindbox/agent.py"
    openssl: str = "/usr/bin/openssl"

_ROOT = """\
flat() {{ printf '%s' "$*" | tr '\\n' ' '; }}
stop() {{
  echo "{poweroff}"
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
  while :; do sleep 60; done
}}
verity_failed() {{
  echo "{verity_failed} $(flat "$*")"
  dmesg | grep 'device-mapper: verity' | while IFS= read -r line; do printf '%s %s\\n' "{dmesg}" "$line"; done
  stop
}}
root_failed() {{ echo "{root_failed} $(flat "$*")"; stop; }}
n=0
while [ ! -b {data} ] || [ ! -b {hash} ]; do
  [ $n -lt {tries} ] || verity_failed "the disks {data} and {hash} did not appear within {seconds} s"
  sleep 0.1; n=$((n + 1))
done
table=$(busybox sed -n 's/^\\(.* \\)\\{{0,1\\}}{param_re}="\\([^"]*\\)".*/\\2/p' /proc/cmdline)
[ -n "$table" ] || verity_failed "/proc/cmdline has no {param}=\\"<table>\\""
DM_DISABLE_UDEV=1
export DM_DISABLE_UDEV
out=$(dmsetup create --readonly --noudevsync root --table "$table" 2>&1) || verity_failed "dmsetup create: $out"
dev=
for d in /sys/block/dm-*; do
  [ "$(cat $d/dm/name 2>/dev/null)" = root ] && dev=$d
done
[ -n "$dev" ] && [ -b /dev/mapper/root ] || verity_failed "dmsetup made no /dev/mapper/root"
size=$(($(cat $dev/size) * 512))
out=$(busybox dd if=/dev/mapper/root of=/dev/null bs=4096 2>&1) || verity_failed "reading the verified root: $out"
records=$(echo "$out" | busybox sed -n 's/^\\([0-9][0-9]*\\)+0 records in$/\\1/p')
[ -n "$records" ] && [ $((records * 4096)) = "$size" ] || verity_failed "read not all $size bytes: $out"
status=$(dmsetup status root 2>&1)
[ "${{status##* }}" = V ] || verity_failed "dm-verity status: $status"
echo "{verity_ok} $size"
mkdir -p /newroot
out=$(mount -t erofs -o ro /dev/mapper/root /newroot 2>&1) || root_failed "mounting the verified root: $out"
for d in dev proc sys tmp run; do
  [ -d /newroot/$d ] || root_failed "the root has no /$d directory to mount on"
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || root_failed "mounting tmpfs on /tmp failed"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || root_failed "mounting tmpfs on /run failed"
"""

_NET = """\
net_failed() {{ echo "{net_failed} $(flat "$*")"; stop; }}
cat > /etc/udhcpc.script <<'BLINDBOX_UDHCPC_END'
#!/bin/sh
# busybox udhcpc calls this with the lease in the environment ($ip, $mask, $router, $interface)
case $1 in
  deconfig)
    busybox ip addr flush dev "$interface"
    busybox ip link set "$interface" up ;;
  bound|renew)
    busybox ip addr flush dev "$interface"
    busybox ip addr add "$ip/${{mask:-24}}" dev "$interface"
    for r in $router; do busybox ip route replace default via "$r" dev "$interface"; break; done
    echo "$ip/${{mask:-24}}" > /run/blindbox-net ;;
esac
exit 0
BLINDBOX_UDHCPC_END
busybox chmod 0755 /etc/udhcpc.script
busybox ip link set lo up || net_failed "cannot bring up lo"
n=0
while [ ! -e /sys/class/net/eth0 ]; do
  [ $n -lt {tries} ] || net_failed "no eth0 appeared within {seconds} s"
  sleep 0.1; n=$((n + 1))
done
busybox ip link set eth0 up || net_failed "cannot bring up eth0"
out=$(busybox udhcpc -i eth0 -f -q -n -t 5 -T 2 -s /etc/udhcpc.script 2>&1) || net_failed "DHCP on eth0: $out"
addr=$(cat /run/blindbox-net 2>/dev/null)
[ -n "$addr" ] || net_failed "DHCP on eth0 gave no address: $out"
echo "{net} $addr"
"""

@dataclass(frozen=True)
class PolicyLaunch:
    """What the init enforces of a runtime policy: its digest (hex, as on the command line) and the log
    sources whose own output may reach the console (``app``, ``agent``)."""

    sha256: str
    logs: tuple[str, ...] = ("app", "agent")


_POLICY = """\
policy_failed() {{ echo "{failed} $(flat "$*")"; stop; }}
# the build appends the word after the recipe's cmdline, so a space always precedes it
want=$(busybox sed -n 's/^.* {param_re}=\\([0-9a-f]\\{{64\\}}\\)\\( .*\\)\\{{0,1\\}}$/\\1/p' /proc/cmdline)
[ -n "$want" ] || policy_failed "/proc/cmdline has no {param}=<sha256>"
set -- $(sha256sum {path} 2>/dev/null)
[ "$1" = "$want" ] || policy_failed "{path} has sha256 ${{1:-(missing)}}, the command line says $want"
out=$({nft} -f {ruleset} 2>&1) || policy_failed "nft -f {ruleset}: $out"
out=$({nft} list ruleset 2>&1) || policy_failed "nft list ruleset: $out"
[ -n "$out" ] || policy_failed "nft list ruleset shows no rules after loading {ruleset}"
printf '%s\\n' "$out" | while IFS= read -r line; do printf '%s %s\\n' "{nft_marker}" "$line"; done
echo "{ok} $want"
"""

_SWITCH = """\
mkdir -p /newroot{dir}
busybox cp /bin/busybox /newroot{dir}/busybox || root_failed "cannot copy busybox into {dir}"
{agent_copy}cat > /newroot{dir}/init <<'{end}'
{stage2}{end}
dmesg | grep -c 'device-mapper: verity' > /newroot{dir}/dmesg-seen
for d in dev proc sys; do
  mount --move /$d /newroot/$d || root_failed "cannot move /$d into the new root"
done
{app_start_line}exec busybox switch_root /newroot {dir}/busybox sh {dir}/init
"""

_STAGE2 = """\
#!{dir}/busybox sh
# Stage 2 of the blindbox init (generated by builder/steps/init.py): PID 1 in the verified root.
b={dir}/busybox
stop() {{
  echo "{poweroff}"
  $b poweroff -f
  $b sleep 5
  echo o > /proc/sysrq-trigger
  while :; do $b sleep 60; done
}}
cd -- {workdir} || {{
  printf '%s %s\\n' "{root_failed}" "cannot enter the working directory "{workdir_shown}
  stop
}}
{agent}$b env -i {env}$b nsenter -F -S {uid} -G {gid} -- {argv}{app_output}
status=$?
printf '\\n%s %s\\n' "{app_exit}" "$status"
seen=0
read -r seen < {dir}/dmesg-seen
$b dmesg | $b grep 'device-mapper: verity' | $b tail -n +$((seen + 1)) | while IFS= read -r line; do
  printf '%s %s\\n' "{dmesg}" "$line"
done
stop
"""


def _shown(text: str) -> str:
    """``text`` on one console line: backslash and control characters as ``\\\\``, ``\\xNN``."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def _check_app(app: AppConfig) -> None:
    if not app.argv:
        raise InitError("the application has no command (argv is empty); give the entrypoint, e.g. "
                        "['/usr/bin/python3', '-m', 'app'].")
    for word in app.argv:
        if not isinstance(word, str) or "\0" in word:
            raise InitError(f"the application argument {word!r} is not text without NUL bytes; fix the entrypoint "
                            f"or command.")
    if not app.argv[0].startswith("/"):
        raise InitError(f"the application program {app.argv[0]!r} is not an absolute path; give its path inside "
                        f"the root, such as '/usr/bin/python3'.")
    if not isinstance(app.workdir, str) or not app.workdir.startswith("/") or "\0" in app.workdir:
        raise InitError(f"the working directory {app.workdir!r} is not an absolute path; give one such as '/app'.")
    for key, value in app.env:
        if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key \
                or key.startswith("-") or "\0" in key + value:
            raise InitError(f"the environment variable {key!r} cannot be passed to the application; names must be "
                            f"non-empty, without '=' or NUL and not start with '-', values without NUL.")
    for what, n in (("uid", app.uid), ("gid", app.gid)):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 0xFFFFFFFF:
            raise InitError(f"the application {what} {n!r} is not a number from 0 to 4294967294; give a numeric "
                            f"{what}.")


_AGENT_COPY = """\
busybox cp -a {initrd_dir} /newroot{dir}/ || root_failed "cannot copy the attestation agent into {agent_dir}"
busybox chmod 0700 /newroot{agent_dir}
{policy_copy}"""

_POLICY_COPY = """\
busybox mkdir -p /newroot{agent_dir}{parent} || root_failed "cannot make {parent} in the agent's root"
busybox cp {path} /newroot{agent_dir}{path} || root_failed "cannot copy the runtime policy into the agent's root"
"""

_AGENT = """\
A={agent_dir}
agent_failed() {{
  printf '%s %s\\n' "{failed}" "$*"
  stop
}}
for d in dev proc sys; do
  $b mount --bind /$d $A/$d || agent_failed "cannot bind-mount /$d into the agent's root"
done
$b mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs $A/tmp || agent_failed "cannot mount a tmpfs on the agent's /tmp"
[ -d $A/sys/kernel/config ] && $b mount -t configfs configfs $A/sys/kernel/config 2>/dev/null
printf '%s %s\\n' "{start}" {listen}
( $b chroot $A {python} -I {launcher} --listen 0.0.0.0:{listen} --app 127.0.0.1:{app} --attester {attester} \\
    --state-dir /tmp --openssl {openssl}{policy_option} 2>&1
  echo "{exit} $?" ) | $b tee {dir}/agent.log{agent_output} &
agent=$!
n=0
while :; do
  if $b grep -q -e '^{refused} ' -e '^{exit} ' {dir}/agent.log 2>/dev/null; then
    # let the agent's exit line reach the console before ours (bounded: 5 s), then reap the pipeline
    m=0
    while ! $b grep -q '^{exit} ' {dir}/agent.log 2>/dev/null && [ $m -lt 50 ]; do $b sleep 0.1; m=$((m + 1)); done
    $b grep -q '^{exit} ' {dir}/agent.log 2>/dev/null && wait $agent
    agent_failed "the attestation agent did not start, so the application is not started"
  fi
  $b grep -q '^{ready} ' {dir}/agent.log 2>/dev/null && break
  [ $n -lt {tries} ] || agent_failed "no {ready} line within {seconds} s; the application is not started"
  $b sleep 0.2; n=$((n + 1))
done
printf '%s %s\\n' "{app_start}" {argv0}
"""


def _check_agent(agent: AgentLaunch) -> None:
    for what, port in (("listen", agent.listen), ("app", agent.app)):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InitError(f"the agent's {what} port {port!r} is not from 1 to 65535; give a TCP port number.")
    if agent.listen == agent.app:
        raise InitError(f"the agent and the application cannot both use port {agent.listen}.")
    for what, value in (("attester", agent.attester), ("python", agent.python), ("launcher", agent.launcher),
                        ("openssl", agent.openssl)):
        if not isinstance(value, str) or not value or any(c.isspace() or c in "'\"\\$`;&|<>()" for c in value):
            raise InitError(f"the agent's {what} {value!r} cannot be used in the init script; give a plain word "
                            f"such as 'auto' or '/usr/bin/openssl'.")


def _render_agent(agent: AgentLaunch, argv0: str, policy: PolicyLaunch | None = None) -> str:
    _check_agent(agent)
    # without "agent" in the runtime policy's logs only the agent's marker lines reach the console
    # (the init reads agent.log, which stays in the guest's memory)
    quiet = policy is not None and "agent" not in policy.logs
    return _AGENT.format(
        policy_option="" if policy is None else f" --runtime-policy {RUNTIME_POLICY_PATH}",
        agent_output=" | $b grep '^BLINDBOX-AGENT-'" if quiet else "",
        app_start=MARKER_APP_START, argv0=_quote(_shown(argv0)),
        agent_dir=AGENT_DIR, dir=STAGE2_DIR, failed=MARKER_AGENT_FAILED, start=MARKER_AGENT_START,
        listen=agent.listen, app=agent.app, attester=agent.attester, python=agent.python, launcher=agent.launcher,
        openssl=agent.openssl, exit=MARKER_AGENT_EXIT, ready=MARKER_AGENT_READY, refused=MARKER_AGENT_REFUSED,
        tries=AGENT_WAIT_SECONDS * 5, seconds=AGENT_WAIT_SECONDS)


def render_stage2(app: AppConfig, agent: AgentLaunch | None = None, policy: PolicyLaunch | None = None) -> bytes:
    """The script that runs as PID 1 in the verified root and starts ``app`` (see :func:`render_rootfs_init`);
    with ``agent``, it first starts the attestation agent and waits for its ready line.  With ``policy``
    the agent gets ``--runtime-policy``, and the log sources it leaves out do not reach the console."""
    _check_app(app)
    env = "".join(_quote(f"{k}={v}") + " " for k, v in app.env)
    quiet_app = policy is not None and "app" not in policy.logs
    return _STAGE2.format(agent="" if agent is None else _render_agent(agent, app.argv[0], policy),
        app_output=" >/dev/null 2>&1" if quiet_app else "",
        dir=STAGE2_DIR, poweroff=MARKER_POWEROFF, root_failed=MARKER_ROOT_FAILED, workdir=_quote(app.workdir),
        workdir_shown=_quote(_shown(app.workdir)), env=env, uid=app.uid, gid=app.gid,
        argv=" ".join(_quote(w) for w in app.argv), app_exit=MARKER_APP_EXIT, dmesg=MARKER_DMESG,
    ).encode("utf-8")


def _same_module(a: str, b: str) -> bool:
    return a.replace("-", "_") == b.replace("-", "_")


def render_rootfs_init(*, modules: Sequence[str], app: AppConfig, network: bool, builtin: Sequence[str] = (),
                       sev_guest: str = "carried", agent: AgentLaunch | None = None,
                       policy: PolicyLaunch | None = None) -> bytes:
    """The ``/init`` that verifies the application root, mounts it and starts the application.

    ``modules``, ``builtin`` and ``sev_guest`` as for :func:`render_init`;
    :data:`ROOTFS_MODULES` (and :data:`NET_MODULES` with ``network``) are loaded after
    them unless already named there.  The initrd must carry busybox, those modules and
    ``dmsetup`` at :data:`DMSETUP_PATH`.  The dm-verity table comes from the measured
    command line (``blindbox.root="<table>"``, :data:`ROOT_PARAM`); its devices are
    :data:`ROOT_DATA_DEVICE` and :data:`ROOT_HASH_DEVICE`.  The init reads the whole
    verified device before anything of it is used, so corruption anywhere stops the guest
    before the application starts.

    ``agent`` (needs ``network``): the initrd carries the agent's tree at
    :data:`AGENT_INITRD_DIR`; the init copies it into :data:`AGENT_DIR` (tmpfs) before
    ``switch_root``, and stage 2 starts it (``chroot``, with ``/dev``, ``/proc``, ``/sys``
    bound into it and a tmpfs ``/tmp`` for its key) before the application, which starts only
    after the agent's ready line.

    ``policy`` (a runtime policy): :data:`.nft.NFT_MODULES` are loaded too, and after the network
    (before ``switch_root``) the init checks the initrd's runtime policy against the command line's
    ``blindbox.runtime_policy``, loads the rule set with the initrd's ``nft`` (:data:`.nft.NFT_DEST`)
    and prints it; any failure powers off before the agent and the application start.  The
    application must not run as uid 0 (it could remove the rules).
    """
    if agent is not None and not network:
        raise InitError("the attestation agent needs the network; build the root with network: true.")
    if policy is not None:
        if not isinstance(policy.sha256, str) or len(policy.sha256) != 64 \
                or any(c not in "0123456789abcdef" for c in policy.sha256):
            raise InitError(f"the runtime policy digest {policy.sha256!r} is not 64 lower-case hex digits.")
        if app.uid == 0:
            raise InitError("the application would run as uid 0 under a runtime policy, and root could remove the "
                            "rule set; give it a non-root uid.")
    stage2 = render_stage2(app, agent, policy).decode("utf-8")
    wanted = list(ROOTFS_MODULES) + (list(NET_MODULES) if network else []) + \
        (list(NFT_MODULES) if policy is not None else [])
    extra = [m for m in wanted if not any(_same_module(m, n) for n in list(modules) + list(builtin))]
    parts = _checks(list(modules) + extra, builtin, sev_guest)
    tries = DEVICE_WAIT_SECONDS * 10
    parts.append(_ROOT.format(
        poweroff=MARKER_POWEROFF, verity_failed=MARKER_VERITY_FAILED, dmesg=MARKER_DMESG,
        root_failed=MARKER_ROOT_FAILED, verity_ok=MARKER_VERITY_OK, data=ROOT_DATA_DEVICE, hash=ROOT_HASH_DEVICE,
        tries=tries, seconds=DEVICE_WAIT_SECONDS, param=ROOT_PARAM, param_re=ROOT_PARAM.replace(".", "\\.")))
    if network:
        parts.append(_NET.format(net_failed=MARKER_NET_FAILED, net=MARKER_NET, tries=tries,
                                 seconds=DEVICE_WAIT_SECONDS))
    if policy is not None:
        parts.append(_POLICY.format(failed=MARKER_POLICY_FAILED, param=RUNTIME_POLICY_PARAM,
                                    param_re=RUNTIME_POLICY_PARAM.replace(".", "\\."), path=RUNTIME_POLICY_PATH,
                                    nft=NFT_DEST, ruleset=RULESET_PATH, nft_marker=MARKER_NFT, ok=MARKER_POLICY_OK))
    end = "BLINDBOX_STAGE2_END_" + hashlib.sha256(stage2.encode("utf-8")).hexdigest()[:16]
    if end in stage2.split("\n"):
        raise InitError("the application settings contain the stage-2 script's end line; change them.")
    policy_copy = "" if policy is None else _POLICY_COPY.format(path=RUNTIME_POLICY_PATH, agent_dir=AGENT_DIR,
                                                                     parent=RUNTIME_POLICY_PATH.rsplit("/", 1)[0])
    agent_copy = "" if agent is None else _AGENT_COPY.format(initrd_dir=AGENT_INITRD_DIR, dir=STAGE2_DIR,
                                                               agent_dir=AGENT_DIR, policy_copy=policy_copy)
    # with an agent, stage 2 says when the application starts: after the agent's ready line
    app_start = "" if agent is not None else \
        f"printf '%s %s\\n' \"{MARKER_APP_START}\" {_quote(_shown(app.argv[0]))}\n"
    parts.append(_SWITCH.format(dir=STAGE2_DIR, end=end, stage2=stage2, agent_copy=agent_copy,
                                app_start_line=app_start))
    return "".join(parts).encode("utf-8")
