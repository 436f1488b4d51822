#!/bin/sh
# nftables-lb.sh: a kernel L4 load balancer for a oneport cluster, the one our
# tests run (internal/netnstest) and one you can run on a real host.
#
# Packets to VIP:UDP_PORT (and VIP:TCP_PORT for HTTP signaling, if given) are
# DNATed to one of N backends chosen by a hash of the client's address and
# port, like kube-proxy's nftables mode:
#
#   ip daddr VIP udp dport PORT dnat to jhash ip saddr . udp sport mod N seed S map { 0 : b0, ... }
#
# Kernel conntrack keeps each flow on the backend it was first hashed to and
# un-NATs the replies, so clients only ever see VIP:PORT. The backends must
# route their replies back through this host (default route or policy route):
# there is no SNAT, so they see each client's real address.
#
# The kernel scales the hash to a bucket by range, not by remainder
# ((hash * N) >> 32): with backends b0..b(N-1), removing the last one hands
# all of its flows to the new last one, not a share to each. Flows re-hashed
# that way still work (the node they reach relays them to their owner); run
# `rehash` afterwards if the load must even out at once.
#
# Everything lives in one table of its own (default "oneport_lb"), whose
# comment records the configuration, so `rehash`, `status` and `down` need no
# arguments and `down` removes exactly what `up` added. Running `up` again
# with the same arguments changes nothing; with other arguments it replaces
# the table in one transaction.
#
# Usage:
#   nftables-lb.sh up     --vip A --udp-port P [--tcp-port P] [--seed S] [--table T] BACKEND...
#   nftables-lb.sh rehash [--seed S] [--table T] [--vip A --udp-port P [--tcp-port P] BACKEND...]
#   nftables-lb.sh down   [--table T]
#   nftables-lb.sh status [--table T]
#
#   up      install or replace the table; enables IPv4 forwarding. Live flows
#           stay on their backends, except flows to a backend that was removed,
#           whose conntrack entries are deleted so they re-hash at once.
#   rehash  change the hash seed (random unless --seed) and delete the UDP
#           conntrack entries of VIP:UDP_PORT, so live flows are re-hashed and
#           some move to another backend: what a node failing over, a node
#           being added or an LB restart does to a live WebRTC flow. TCP
#           connections are left alone (deleting them would reset them);
#           new ones use the new seed.
#   down    delete the table and the conntrack entries of the VIP.
#   status  print the table and the number of tracked flows per backend.
#
# Needs nft (Debian: nftables); deleting conntrack entries (rehash, removed
# backends, down) needs conntrack(8) (Debian: conntrack). IPv4 only.
set -eu

prog=${0##*/}
TABLE=oneport_lb
VIP=
UDP_PORT=
TCP_PORT=
SEED=
BACKENDS=

die() {
	echo "$prog: $*" >&2
	exit 1
}

usage() {
	sed -n '/^# Usage:/,/IPv4 only\.$/p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

is_ipv4() {
	case $1 in
	'' | *[!0-9.]* | *..* | .* | *.) return 1 ;;
	esac
	# shellcheck disable=SC2046 # split on dots on purpose
	set -- $(echo "$1" | tr . ' ')
	[ $# -eq 4 ] || return 1
	for o; do
		[ "$o" -le 255 ] 2>/dev/null || return 1
	done
}

is_port() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	[ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

is_seed() {
	case $1 in
	0x*) case ${1#0x} in '' | *[!0-9a-fA-F]*) return 1 ;; esac ;;
	*) case $1 in '' | *[!0-9]*) return 1 ;; esac ;;
	esac
	[ "$(printf %u "$1" 2>/dev/null)" -le 4294967295 ] 2>/dev/null
}

random_seed() {
	printf '0x%08x\n' "$(od -An -N4 -tu4 /dev/urandom | tr -d ' \n')"
}

have() { command -v "$1" >/dev/null 2>&1; }

table_exists() { nft list table ip "$TABLE" >/dev/null 2>&1; }

# current_config prints the configuration recorded in the table's comment
# ("vip=A udp=P tcp=P seed=S backends=a,b,c"), or nothing.
current_config() {
	nft list table ip "$TABLE" 2>/dev/null |
		sed -n 's/^[[:space:]]*comment "\(.*\)"[[:space:]]*$/\1/p' | head -n 1
}

# field NAME CONFIG prints one field of a recorded configuration.
field() {
	for kv in $2; do
		case $kv in "$1="*) echo "${kv#*=}" ;; esac
	done
}

load_current() {
	cfg=$(current_config)
	[ -n "$cfg" ] || die "no table ip $TABLE here (run: $prog up ...)"
	[ -n "$VIP" ] || VIP=$(field vip "$cfg")
	[ -n "$UDP_PORT" ] || UDP_PORT=$(field udp "$cfg")
	[ -n "$TCP_PORT" ] || TCP_PORT=$(field tcp "$cfg")
	[ -n "$BACKENDS" ] || BACKENDS=$(field backends "$cfg" | tr , ' ')
	OLD_BACKENDS=$(field backends "$cfg" | tr , ' ')
	OLD_SEED=$(field seed "$cfg")
}

validate() {
	is_ipv4 "$VIP" || die "--vip: want an IPv4 address, got '$VIP'"
	is_port "$UDP_PORT" || die "--udp-port: want 1-65535, got '$UDP_PORT'"
	[ -z "$TCP_PORT" ] || is_port "$TCP_PORT" || die "--tcp-port: want 1-65535, got '$TCP_PORT'"
	[ -z "$SEED" ] || is_seed "$SEED" || die "--seed: want a 32-bit number, got '$SEED'"
	[ -n "$BACKENDS" ] || die "no backends given"
	seen=
	for b in $BACKENDS; do
		is_ipv4 "$b" || die "backend: want an IPv4 address, got '$b'"
		[ "$b" != "$VIP" ] || die "backend $b is the VIP"
		case " $seen " in *" $b "*) die "backend $b given twice" ;; esac
		seen="$seen $b"
	done
}

# render prints the whole table as one nft transaction: declaring the table
# then deleting it makes the script idempotent whether or not it existed.
render() {
	n=0
	elems=
	for b in $BACKENDS; do
		elems="$elems${elems:+, }$n : $b"
		n=$((n + 1))
	done
	cat <<EOF
table ip $TABLE
delete table ip $TABLE
table ip $TABLE {
	comment "vip=$VIP udp=$UDP_PORT tcp=$TCP_PORT seed=$SEED backends=$(echo "$BACKENDS" | tr ' ' ,)"
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr $VIP udp dport $UDP_PORT counter dnat to jhash ip saddr . udp sport mod $n seed $SEED map { $elems }
EOF
	if [ -n "$TCP_PORT" ]; then
		echo "		ip daddr $VIP tcp dport $TCP_PORT counter dnat to jhash ip saddr . tcp sport mod $n seed $SEED map { $elems }"
	fi
	# A backend's datagram to a client whose entry was deleted (rehash, a
	# removed backend) would otherwise leave un-NATed and create an entry of
	# its own, backend:port -> client; the client's next datagram, DNATed to
	# that backend, then clashes with it and NAT rewrites the client's port:
	# the node sees a new address, and its media to the old one goes down the
	# stale entry, from an address the client drops, for as long as it keeps
	# sending. Only replies of tracked flows may leave. The rule names no
	# backend: a node just removed from the pool (drained, re-hashed away)
	# still answers its flows for a moment, and its stray datagrams must not
	# create entries either; a client's own flow to the VIP is DNATed, so it
	# always passes.
	cat <<EOF
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		udp sport $UDP_PORT ct state new ct status & dnat == 0 counter drop
EOF
	if [ -n "$TCP_PORT" ]; then
		echo "		tcp sport $TCP_PORT ct state new ct status & dnat == 0 counter drop"
	fi
	cat <<EOF
	}
}
EOF
}

apply() {
	render | nft -f - || die "nft rejected the table"
}

enable_forwarding() {
	# Per network namespace; without it the DNATed packets are dropped.
	if [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
		echo 1 >/proc/sys/net/ipv4/ip_forward || die "cannot enable net.ipv4.ip_forward"
		echo "$prog: enabled net.ipv4.ip_forward" >&2
	fi
}

# ct_delete PROTO ADDR PORT [conntrack filter...] deletes the matching
# conntrack entries of flows to ADDR:PORT; finding none is not an error.
ct_delete() {
	proto=$1 addr=$2 port=$3
	shift 3
	if ! have conntrack; then
		echo "$prog: conntrack(8) not installed (Debian: conntrack): $proto flows to $addr:$port keep their backend until they time out" >&2
		return 1
	fi
	out=$(conntrack -D -p "$proto" --orig-dst "$addr" --orig-port-dst "$port" "$@" 2>&1) || true
	case $out in
	*"flow entries have been deleted"*) echo "$prog: $proto $addr:$port $*: ${out##*: }" >&2 ;;
	*) die "conntrack -D failed: $out" ;;
	esac
}

cmd_up() {
	cfg=
	! table_exists || cfg=$(current_config)
	OLD_BACKENDS=$(field backends "$cfg" | tr , ' ')
	OLD_SEED=$(field seed "$cfg")
	validate
	# Keep the seed across repeated `up`s so new flows keep hashing the same way.
	[ -n "$SEED" ] || SEED=${OLD_SEED:-$(random_seed)}
	enable_forwarding
	apply
	# Flows whose backend is gone (or whose VIP or port changed) would keep
	# their old translation until they time out: delete them.
	old_vip=$(field vip "$cfg") old_udp=$(field udp "$cfg") old_tcp=$(field tcp "$cfg")
	for old in $OLD_BACKENDS; do
		if [ "$old_vip" = "$VIP" ] && [ "$old_udp" = "$UDP_PORT" ]; then
			case " $BACKENDS " in *" $old "*) continue ;; esac
		fi
		ct_delete udp "$old_vip" "$old_udp" --reply-src "$old" || true
		[ -z "$old_tcp" ] || ct_delete tcp "$old_vip" "$old_tcp" --reply-src "$old" || true
	done
}

cmd_rehash() {
	load_current
	validate
	have conntrack || die "rehash needs conntrack(8) to move live flows (Debian: apt-get install conntrack)"
	if [ -z "$SEED" ]; then
		SEED=$(random_seed)
		while [ "$SEED" = "$OLD_SEED" ]; do SEED=$(random_seed); done
	fi
	apply
	ct_delete udp "$VIP" "$UDP_PORT"
}

cmd_down() {
	table_exists || return 0
	cfg=$(current_config)
	nft delete table ip "$TABLE"
	vip=$(field vip "$cfg") udp=$(field udp "$cfg") tcp=$(field tcp "$cfg")
	if [ -n "$vip" ] && have conntrack; then
		[ -z "$udp" ] || ct_delete udp "$vip" "$udp"
		[ -z "$tcp" ] || ct_delete tcp "$vip" "$tcp"
	fi
}

cmd_status() {
	table_exists || {
		echo "table ip $TABLE: not installed"
		return 3
	}
	nft list table ip "$TABLE"
	have conntrack || return 0
	cfg=$(current_config)
	VIP=$(field vip "$cfg")
	for proto in udp tcp; do
		port=$(field "$proto" "$cfg")
		[ -n "$port" ] || continue
		echo "tracked $proto flows to $VIP:$port per backend:"
		# The reply tuple's source (the second src=) is the backend.
		conntrack -L -p "$proto" --orig-dst "$VIP" --orig-port-dst "$port" 2>/dev/null |
			awk '{ n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^src=/ && ++n == 2) c[substr($i, 5)]++ }
			     END { for (b in c) printf "  %s %d\n", b, c[b] }' | sort
	done
}

[ $# -ge 1 ] || usage
cmd=$1
shift
while [ $# -gt 0 ]; do
	case $1 in
	--vip | --udp-port | --tcp-port | --seed | --table)
		[ $# -ge 2 ] || die "$1 needs a value"
		case $1 in
		--vip) VIP=$2 ;;
		--udp-port) UDP_PORT=$2 ;;
		--tcp-port) TCP_PORT=$2 ;;
		--seed) SEED=$2 ;;
		--table) TABLE=$2 ;;
		esac
		shift 2
		;;
	-h | --help) usage ;;
	-*) die "unknown option $1" ;;
	*)
		BACKENDS="$BACKENDS${BACKENDS:+ }$1"
		shift
		;;
	esac
done
case $TABLE in '' | *[!A-Za-z0-9_]*) die "--table: letters, digits and _ only" ;; esac
have nft || die "nft not installed (Debian: apt-get install nftables)"

case $cmd in
up) cmd_up ;;
rehash) cmd_rehash ;;
down) cmd_down ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*) die "unknown command '$cmd' (up, rehash, down, status)" ;;
esac
