#!/bin/busybox sh
# The egress probe (tests/integration/test_runtime_policy_boot.py): one TCP connection to each
# destination given as HOST:PORT, a short timeout each, one BLINDBOX-TEST-PROBE line per result.
b=/bin/busybox
echo "BLINDBOX-TEST-PROBE-UID $($b id -u):$($b id -g)"
for dest in "$@"; do
  host=${dest%:*}
  port=${dest##*:}
  reply=$(echo "probe $dest" | $b timeout 15 $b nc "$host" "$port" 2>&1)
  case $reply in
    ok*) echo "BLINDBOX-TEST-PROBE $dest reached $reply" ;;
    *) echo "BLINDBOX-TEST-PROBE $dest blocked $(echo "$reply" | $b tr '\n' ' ')" ;;
  esac
done
