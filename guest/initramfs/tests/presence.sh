#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# ivvmm's peer presence on /dev/ivshmem0, while the host (L1 in
# guest/nested/init) makes peers and the server come and go:
#   presence.sh watch    a host peer joins and leaves twice: once seen
#                        through change events (notification on the
#                        driver's vector), once by sampling (--interval,
#                        no notification); event counts before and after
#   presence.sh rejoin   the host peer leaves, the server is SIGKILLed and
#                        restarted on the same -M object, a peer joins the
#                        new server; then the state and IVPOSITION
# Each watch runs until a change line matches, then gets SIGTERM (ivshm
# ends a watch cleanly on it); `STEP watch-N rc=` is its exit status.
d=/sys/class/ivshmem/ivshmem0
steps=0

# watch UNTIL [OPTIONS...]: ivshm peers --watch OPTIONS, its lines shown as
# they come, until one matches the extended regex UNTIL.
watch() {
	until=$1
	shift
	steps=$((steps + 1))
	out=/tmp/watch.$steps
	: >"$out"
	ivshm peers --watch "$@" >"$out" 2>&1 &
	w=$!
	shown=0
	while :; do
		n=$(grep -c '' "$out")
		if [ "$n" -gt "$shown" ]; then
			sed -n "$((shown + 1)),${n}p" "$out"
			shown=$n
		fi
		grep -qE "$until" "$out" && break
		kill -0 $w 2>/dev/null || break
		sleep 0.05
	done
	kill -TERM $w 2>/dev/null
	wait $w
	rc=$?
	sed -n "$((shown + 1)),\$p" "$out"
	echo "STEP watch-$steps rc=$rc"
	return $rc
}

case "$1" in
watch)
	ivshm peers || exit 1
	echo "EVENTS before $(cat $d/events)"
	watch 'left=[0-9]' --timeout 200 || exit 1
	echo "EVENTS event $(cat $d/events)"
	echo "NOTIFY after-event $(cat $d/notify)"
	watch 'left=[0-9]' --interval 20 --timeout 200 || exit 1
	echo "EVENTS interval $(cat $d/events)"
	ivshm peers
	;;
rejoin)
	ivshm peers || exit 1
	echo "POSITION before $(cat $d/position)"
	watch 'joined=[0-9]' --timeout 200 || exit 1
	ivshm peers || exit 1
	echo "POSITION after $(cat $d/position)"
	;;
*)
	echo "usage: presence.sh watch|rejoin"
	exit 2
	;;
esac
