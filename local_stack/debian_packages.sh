#!/bin/sh
# The two programs the platform takes from Debian, installed in one apt-get
# call when missing (`make venv` runs this every time; it costs two
# `command -v` when both are there):
#   graphviz      Graphviz's dot (graph pictures: python -m apps.graph_draw --png)
#   redis-server  the Feast Redis online store of configs/feast/cluster, run for
#                 real by tests/integration/test_feast_redis.py; the tests start
#                 their own throwaway server (local_stack/redis_server.py)
#
# The redis-server package would start its own service on 127.0.0.1:6379, now
# and at every boot: its postinst runs `deb-systemd-invoke start` under systemd
# and `invoke-rc.d redis-server start` (the /etc/init.d script) without it, so
# a container without systemd is no exception. Both ask /usr/sbin/policy-rc.d
# first and start nothing when it answers 101. Docker's Debian images ship such
# a file; where there is none, or it allows the start, one answering 101 is put
# in place for the install and the previous state restored afterwards. The
# boot-time start (systemd unit and SysV links) is disabled after the install.
set -eu

missing=""
command -v dot >/dev/null || missing="$missing graphviz"
command -v redis-server >/dev/null || missing="$missing redis-server"
[ -n "$missing" ] || exit 0
echo "==> from Debian:$missing"

policy=/usr/sbin/policy-rc.d
saved=""
forbids_start() {
    [ -x "$policy" ] || return 1
    rc=0
    "$policy" redis-server start >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 101 ]
}
if ! forbids_start; then
    if [ -e "$policy" ]; then
        saved="$(mktemp /usr/sbin/policy-rc.d.saved.XXXXXX)"
        cp -p "$policy" "$saved"
    fi
    trap 'if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi' EXIT
    trap 'exit 1' INT TERM HUP
    printf '#!/bin/sh\n# temporary, from %s: no service starts during this install\nexit 101\n' "$0" >"$policy"
    chmod 755 "$policy"
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing

case " $missing " in
*" redis-server "*)
    # not at the next boot either (systemd unit and /etc/rc?.d links)
    update-rc.d redis-server disable >/dev/null 2>&1 || true
    ;;
esac
