#!/usr/bin/env bash
# kafka.sh — a real single-node Apache Kafka broker (KRaft, combined
# broker+controller) on loopback, built from Maven Central jars: no Docker,
# no tarball. Used by `make test` and by tests that stop and restart Kafka.
#
# Usage: scripts/kafka.sh COMMAND [ARGS…]
#   fetch                 download the broker and tool jars into the cache (once)
#   start [--keep-data]   start the broker and wait until it serves metadata;
#                         without --keep-data the data directory is wiped first
#   stop                  SIGTERM, wait, SIGKILL after BGPEDGE_KAFKA_STOP_TIMEOUT
#   kill                  SIGKILL at once (a crash, for outage tests)
#   restart               stop, then start --keep-data
#   status                exit 0 and print the pid when running, exit 3 when not
#   wait                  wait until a started broker serves metadata
#   brokers               print the bootstrap address (for BGPEDGE_TEST_KAFKA)
#   cluster-id [N]        print N [1] fresh KRaft cluster ids, as start uses
#   classpath             print the java classpath (broker and kafka-tools)
#   perf ARGS…            run Kafka's ProducerPerformance against nothing in
#                         particular: pass --topic, --num-records, --record-size,
#                         --throughput, --producer-props bootstrap.servers=… etc.
#   run-class CLASS ARGS… run any class from the classpath (TopicCommand, …)
#   logs                  print the path of the broker log
#   secure-info           print, as KEY=value lines, the secured listeners'
#                         addresses, the CA, client certificate and key files
#                         and the SASL credentials (BGPEDGE_KAFKA_SECURE=1);
#                         a started broker also has them in <state>/secure.env
#
# Environment (defaults in brackets):
#   BGPEDGE_KAFKA_VERSION          Kafka release from Maven Central [4.3.1]
#   BGPEDGE_CACHE                  download cache [$HOME/.cache/bgpedge]
#   BGPEDGE_KAFKA_HOST             listen address [127.0.0.1]
#   BGPEDGE_KAFKA_PORT             broker port [9092]
#   BGPEDGE_KAFKA_CONTROLLER_PORT  KRaft controller port [broker port + 1]
#   BGPEDGE_KAFKA_DIR              state: data, logs, pid [${TMPDIR:-/tmp}/bgpedge-kafka-<port>]
#   BGPEDGE_KAFKA_HEAP             broker max heap [512m]
#   BGPEDGE_KAFKA_JVM_OPTS         extra JVM options for the broker, word-split []
#   BGPEDGE_KAFKA_START_TIMEOUT    seconds to wait for readiness [180]
#   BGPEDGE_KAFKA_STOP_TIMEOUT     seconds between SIGTERM and SIGKILL [30]
#   BGPEDGE_KAFKA_OWNER_PID        stop the broker when this process ends []
#
# Secured mode (opt-in; the PLAINTEXT listener above stays as it is and keeps
# carrying the controller and inter-broker traffic). A throwaway CA, a server
# certificate for 127.0.0.1/localhost and a client certificate are made with
# openssl into <state>/tls on the first start and kept across restarts:
#   BGPEDGE_KAFKA_SECURE           1: add the three listeners below [0]
#   BGPEDGE_KAFKA_SASL_SSL_PORT    SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 [broker port + 2]
#   BGPEDGE_KAFKA_SSL_PORT         SSL, server certificate only [broker port + 3]
#   BGPEDGE_KAFKA_MTLS_PORT        SSL with ssl.client.auth=required [broker port + 4]
#   BGPEDGE_KAFKA_SASL_USER        the user of all three SASL mechanisms [bgpedge]
#   BGPEDGE_KAFKA_SASL_PASSWORD    its password, [A-Za-z0-9_-] only [bgpedge-secret];
#                                  SCRAM users are stored when the data
#                                  directory is formatted: a start with
#                                  --keep-data keeps the old SCRAM password
#
# Gated mode (opt-in, plaintext only), for tests that take the broker away
# from clients in an instant without stopping it: a second plaintext listener
# on BGPEDGE_KAFKA_GATED_PORT that advertises BGPEDGE_KAFKA_GATED_ADVERTISED
# (host:port), where the test runs a TCP proxy it can close and reopen.
# Clients that bootstrap from the proxy reach the broker only through it;
# the broker's own traffic stays on PLAINTEXT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=${BGPEDGE_KAFKA_VERSION:-4.3.1}
cache=${BGPEDGE_CACHE:-$HOME/.cache/bgpedge}
libdir=$cache/kafka-$version/lib
host=${BGPEDGE_KAFKA_HOST:-127.0.0.1}
port=${BGPEDGE_KAFKA_PORT:-9092}
cport=${BGPEDGE_KAFKA_CONTROLLER_PORT:-$((port + 1))}
state=${BGPEDGE_KAFKA_DIR:-${TMPDIR:-/tmp}/bgpedge-kafka-$port}
heap=${BGPEDGE_KAFKA_HEAP:-512m}
start_timeout=${BGPEDGE_KAFKA_START_TIMEOUT:-180}
stop_timeout=${BGPEDGE_KAFKA_STOP_TIMEOUT:-30}
secure=${BGPEDGE_KAFKA_SECURE:-0}
sasl_ssl_port=${BGPEDGE_KAFKA_SASL_SSL_PORT:-$((port + 2))}
ssl_port=${BGPEDGE_KAFKA_SSL_PORT:-$((port + 3))}
mtls_port=${BGPEDGE_KAFKA_MTLS_PORT:-$((port + 4))}
sasl_user=${BGPEDGE_KAFKA_SASL_USER:-bgpedge}
sasl_password=${BGPEDGE_KAFKA_SASL_PASSWORD:-bgpedge-secret}

pidfile=$state/kafka.pid
config=$state/server.properties
logs=$state/logs
tlsdir=$state/tls
secure_env=$state/secure.env

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

# fetch resolves the jars once per version; a lock keeps two concurrent runs
# from filling the same directory, and the directory only appears when complete.
fetch() {
	if [[ -f $libdir/.complete ]]; then
		return 0
	fi
	need java "install a JDK 17+ (scripts/deps.sh does)"
	need mvn "install maven (scripts/deps.sh does)"
	mkdir -p "$cache"
	exec 9>"$cache/kafka-$version.lock"
	flock 9
	if [[ ! -f $libdir/.complete ]]; then
		local tmp=$libdir.tmp.$$ t0=$SECONDS
		rm -rf "$tmp"
		log "downloading Kafka $version jars from Maven Central into $libdir"
		mvn -B -q -Dstyle.color=never -f "$here/kafka/pom.xml" \
			-Dkafka.version="$version" \
			dependency:copy-dependencies \
			-DincludeScope=runtime \
			-DoutputDirectory="$tmp" >"$cache/kafka-$version.mvn.log" 2>&1 || {
			cat "$cache/kafka-$version.mvn.log" >&2
			rm -rf "$tmp"
			die "maven could not resolve org.apache.kafka:kafka_2.13:$version"
		}
		touch "$tmp/.complete"
		rm -rf "$libdir"
		mv "$tmp" "$libdir"
		log "downloaded in $((SECONDS - t0))s"
	fi
	flock -u 9
	exec 9>&-
}

classpath() { printf '%s/*' "$libdir"; }

# java_tool runs a class from the classpath; extra JVM options come from the
# TOOL_JVM_OPTS variable (word-split).
java_tool() {
	fetch
	local class=$1
	shift
	local opts
	read -r -a opts <<<"${TOOL_JVM_OPTS:-}"
	java -Xmx512m -Djava.awt.headless=true "${opts[@]}" \
		-Dlog4j2.configurationFile="$here/kafka/log4j2-tools.properties" \
		-cp "$(classpath)" "$class" "$@"
}

# pid prints the broker's pid when the pid file names a live process that is
# really this broker (pids are reused; never signal a stranger).
pid() {
	[[ -f $pidfile ]] || return 1
	local p
	p=$(<"$pidfile")
	[[ $p =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$p/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "kafka.Kafka $config" || return 1
	printf '%s\n' "$p"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

is_secure() { [[ $secure == 1 ]]; }

# ports lists every port the broker listens on.
ports() {
	printf '%s\n' "$port" "$cport"
	if is_secure; then
		printf '%s\n' "$sasl_ssl_port" "$ssl_port" "$mtls_port"
	fi
}

any_port_open() {
	local p
	for p in $(ports); do
		if port_open "$host" "$p"; then
			return 0
		fi
	done
	return 1
}

# listening is true once the broker port (and in secured mode the secured
# ports) accept connections.
listening() {
	port_open "$host" "$port" || return 1
	if is_secure; then
		port_open "$host" "$sasl_ssl_port" && port_open "$host" "$ssl_port" && port_open "$host" "$mtls_port"
	fi
}

# make_tls creates the throwaway CA, server and client certificates (EC
# P-256: quick to generate; Kafka's PEM stores read PKCS#8 EC keys). They are
# kept across restarts, so a client holding the CA keeps working.
make_tls() {
	[[ -f $tlsdir/.complete ]] && return 0
	need openssl "install openssl (scripts/deps.sh does)"
	rm -rf "$tlsdir"
	mkdir -p "$tlsdir"
	local sans="" n
	for n in $(server_names | tr , ' '); do
		if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then
			sans+=",IP:$n"
		else
			sans+=",DNS:$n"
		fi
	done
	sans=${sans#,}
	# No set -e here: it does not apply in a subshell whose status is tested;
	# the closing verify fails when any step before it did.
	(
		cd "$tlsdir" || exit 1
		genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
		# sign NAME SUBJECT EXTENSIONS: a key and a certificate from the CA.
		sign() {
			genkey "$1-key.pem"
			openssl req -new -key "$1-key.pem" -subj "$2" -out "$1.csr"
			printf '%s\n' "$3" >"$1.ext"
			openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
				-days 3650 -extfile "$1.ext" -out "$1.pem"
			rm -f "$1.csr" "$1.ext"
		}
		genkey ca-key.pem
		openssl req -x509 -new -key ca-key.pem -days 3650 -subj "/CN=bgpedge test CA" \
			-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
			-out ca.pem
		sign server "/CN=localhost" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"
		sign client "/CN=bgpedge-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
		# Kafka's PEM key store: the private key, then the chain, in one file.
		cat server-key.pem server.pem ca.pem >server-keystore.pem
		chmod 600 ./*-key.pem server-keystore.pem
		openssl verify -CAfile ca.pem server.pem client.pem &&
			openssl pkey -in server-key.pem -noout && openssl pkey -in client-key.pem -noout
	) >"$tlsdir/openssl.log" 2>&1 || {
		cat "$tlsdir/openssl.log" >&2
		die "could not create the TLS material in $tlsdir"
	}
	touch "$tlsdir/.complete"
}

# server_names are the names the server certificate is valid for.
server_names() {
	local names=127.0.0.1,localhost
	if [[ $host != 127.0.0.1 && $host != localhost ]]; then
		names+=",$host"
	fi
	echo "$names"
}

secure_info() {
	cat <<EOF
BGPEDGE_KAFKA_SASL_SSL=$host:$sasl_ssl_port
BGPEDGE_KAFKA_SSL=$host:$ssl_port
BGPEDGE_KAFKA_MTLS=$host:$mtls_port
BGPEDGE_KAFKA_SASL_MECHANISMS=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
BGPEDGE_KAFKA_SASL_USER=$sasl_user
BGPEDGE_KAFKA_SASL_PASSWORD=$sasl_password
BGPEDGE_KAFKA_CA_FILE=$tlsdir/ca.pem
BGPEDGE_KAFKA_CLIENT_CERT=$tlsdir/client.pem
BGPEDGE_KAFKA_CLIENT_KEY=$tlsdir/client-key.pem
BGPEDGE_KAFKA_SERVER_NAMES=$(server_names)
EOF
}

# write_secure_config appends the secured listeners; later keys override the
# plaintext-only ones written before.
write_secure_config() {
	local plain="org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user=\"$sasl_password\";"
	local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
	cat >>"$config" <<EOF

# Secured listeners (BGPEDGE_KAFKA_SECURE=1). CONTROLLER and PLAINTEXT stay
# plaintext on loopback and carry the controller and inter-broker traffic.
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport,SASL_SSL://$host:$sasl_ssl_port,SSL://$host:$ssl_port,MTLS://$host:$mtls_port
advertised.listeners=PLAINTEXT://$host:$port,SASL_SSL://$host:$sasl_ssl_port,SSL://$host:$ssl_port,MTLS://$host:$mtls_port
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,MTLS:SSL
ssl.keystore.type=PEM
ssl.keystore.location=$tlsdir/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tlsdir/ca.pem
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram
EOF
}

write_config() {
	cat >"$config" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport
advertised.listeners=PLAINTEXT://$host:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data

auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Two cores shared with the tests: few threads are plenty.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
	if is_secure; then
		write_secure_config
	fi
	if [[ -n ${BGPEDGE_KAFKA_GATED_PORT:-} ]]; then
		cat >>"$config" <<EOF

# Gated listener (BGPEDGE_KAFKA_GATED_PORT); later keys override the ones above.
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$cport,GATED://$host:$BGPEDGE_KAFKA_GATED_PORT
advertised.listeners=PLAINTEXT://$host:$port,GATED://$BGPEDGE_KAFKA_GATED_ADVERTISED
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,GATED:PLAINTEXT
EOF
	fi
}

# ready polls until the broker answers a metadata request (kcat when
# installed, else the startup line in the log plus an open port).
ready() {
	local p=$1 deadline=$((SECONDS + start_timeout))
	while ((SECONDS < deadline)); do
		if ! kill -0 "$p" 2>/dev/null; then
			log "broker exited during startup; last log lines:"
			tail -n 30 "$logs/server.log" "$state/stdout.log" >&2 2>/dev/null || true
			return 1
		fi
		if listening && grep -qF 'Kafka Server started' "$logs/server.log" 2>/dev/null; then
			if ! command -v kcat >/dev/null 2>&1; then
				return 0
			fi
			if kcat -L -b "$host:$port" -m 2 2>/dev/null | grep -q '1 brokers:'; then
				return 0
			fi
		fi
		sleep 0.2 # poll interval
	done
	log "broker not ready after ${start_timeout}s; last log lines:"
	tail -n 30 "$logs/server.log" >&2 2>/dev/null || true
	return 1
}

start() {
	local keep=false
	for a in "$@"; do
		case $a in
		--keep-data) keep=true ;;
		*) die "start: unknown option $a" ;;
		esac
	done
	local p
	if p=$(pid); then
		if is_secure && [[ ! -f $secure_env ]]; then
			die "already running (pid $p) on $host:$port without secured listeners; stop it first"
		fi
		log "already running (pid $p) on $host:$port"
		return 0
	fi
	case $secure in
	0) ;;
	1)
		[[ $sasl_user =~ ^[A-Za-z0-9_-]+$ && $sasl_password =~ ^[A-Za-z0-9_-]+$ ]] ||
			die "BGPEDGE_KAFKA_SASL_USER and BGPEDGE_KAFKA_SASL_PASSWORD may hold only [A-Za-z0-9_-]"
		;;
	*) die "BGPEDGE_KAFKA_SECURE must be 0 or 1, not $secure" ;;
	esac
	if any_port_open; then
		die "a port of $host ($(ports | paste -sd,)) is already in use by another process; set BGPEDGE_KAFKA_PORT"
	fi
	fetch
	need java "install a JDK 17+ (scripts/deps.sh does)"
	local t0=$SECONDS
	mkdir -p "$state"
	rm -f "$secure_env"
	if is_secure; then
		make_tls
	fi
	if [[ $keep == true && -f $state/data/meta.properties ]]; then
		log "starting on existing data in $state/data"
	else
		rm -rf "$state/data"
		mkdir -p "$state/data"
		keep=false
	fi
	# Fresh log files each start, so readiness never matches an old line.
	rm -rf "$logs.prev"
	[[ -d $logs ]] && mv "$logs" "$logs.prev"
	mkdir -p "$logs"
	write_config
	if [[ $keep == false ]]; then
		local id
		id=$(cluster_id)
		# C1 only: a one-shot tool starts faster without the optimising compiler.
		local scram=()
		if is_secure; then
			# KRaft keeps SCRAM credentials in the metadata log; formatting
			# is when they can be added without a running broker.
			scram=(--add-scram "SCRAM-SHA-256=[name=$sasl_user,password=$sasl_password]"
				--add-scram "SCRAM-SHA-512=[name=$sasl_user,password=$sasl_password]")
		fi
		TOOL_JVM_OPTS=-XX:TieredStopAtLevel=1 java_tool kafka.tools.StorageTool format -t "$id" -c "$config" "${scram[@]}" >"$logs/format.log" 2>&1 ||
			{
				cat "$logs/format.log" >&2
				die "storage format failed"
			}
	fi
	# setsid: the broker must not receive the terminal's or test runner's
	# signals; only stop/kill end it. No inherited fds, or CI would wait on it.
	# The G1 options are those of Kafka's operations guide ("Java Version").
	# Its 16M regions matter even with this small heap: with the default
	# (1M here) every produce request over 512 KB is a humongous object, and
	# the collector then took about a third of the broker's CPU under
	# bgpedge's 1 MiB requests (docs/BENCHMARKS.md).
	local jvm_opts
	read -r -a jvm_opts <<<"${BGPEDGE_KAFKA_JVM_OPTS:-}"
	setsid java -Xms128m -Xmx"$heap" \
		-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:G1HeapRegionSize=16M \
		-XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
		"${jvm_opts[@]}" \
		-Dlog4j2.configurationFile="$here/kafka/log4j2-broker.properties" \
		-Dkafka.logs.dir="$logs" \
		-cp "$(classpath)" kafka.Kafka "$config" \
		</dev/null >"$state/stdout.log" 2>&1 &
	p=$!
	echo "$p" >"$pidfile"
	if [[ -n ${BGPEDGE_KAFKA_OWNER_PID:-} ]]; then
		watch_owner "$BGPEDGE_KAFKA_OWNER_PID" "$p"
	fi
	if ! ready "$p"; then
		stop_pid "$p" || true
		die "start failed (state in $state)"
	fi
	if is_secure; then
		secure_info >"$secure_env"
		log "secured listeners: SASL_SSL $host:$sasl_ssl_port, SSL $host:$ssl_port, mTLS $host:$mtls_port (details in $secure_env)"
	fi
	log "ready on $host:$port (pid $p, Kafka $version) in $((SECONDS - t0))s"
}

# watch_owner stops broker p once process owner has gone: a test binary
# killed by its timeout runs no cleanup, and its private broker must not
# outlive it.
watch_owner() {
	local owner=$1 p=$2
	# shellcheck disable=SC2016 # expanded by the inner bash
	setsid bash -c '
		owner=$1 p=$2 grace=$3
		while kill -0 "$owner" 2>/dev/null && kill -0 "$p" 2>/dev/null; do
			sleep 1
		done
		kill -0 "$p" 2>/dev/null || exit 0
		kill -TERM "$p" 2>/dev/null
		for ((i = 0; i < grace * 10; i++)); do
			kill -0 "$p" 2>/dev/null || exit 0
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null
	' watch-owner "$owner" "$p" "$stop_timeout" </dev/null >/dev/null 2>&1 &
}

stop_pid() {
	local p=$1 deadline=$((SECONDS + stop_timeout))
	kill -TERM "$p" 2>/dev/null || return 0
	while kill -0 "$p" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "pid $p still alive after ${stop_timeout}s; SIGKILL"
			kill -KILL "$p" 2>/dev/null || true
			break
		fi
		sleep 0.1 # poll interval
	done
	gone "$p"
}

# gone waits until process p has exited and released its ports. A JVM's main
# thread turns zombie before its other threads are done and its sockets closed,
# so the zombie state alone does not mean the ports are free.
gone() {
	local p=$1 deadline=$((SECONDS + 30))
	# The ports to wait for are those the broker was started with.
	[[ -f $secure_env ]] && secure=1
	while ((SECONDS < deadline)); do
		if ! kill -0 "$p" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) == Z ]]; then
			if ! any_port_open; then
				return 0
			fi
		fi
		sleep 0.05 # poll interval
	done
	log "pid $p: ports $(ports | paste -sd/) still open 30s after it ended"
	return 1
}

stop() {
	local p t0=$SECONDS
	if ! p=$(pid); then
		log "not running"
		rm -f "$pidfile"
		return 0
	fi
	stop_pid "$p"
	rm -f "$pidfile"
	log "stopped (pid $p) in $((SECONDS - t0))s"
}

killnow() {
	local p
	if ! p=$(pid); then
		log "not running"
		return 0
	fi
	kill -KILL "$p"
	gone "$p"
	rm -f "$pidfile"
	log "killed (pid $p)"
}

# A random base64url cluster id, as `kafka-storage.sh random-uuid` makes.
# Like Kafka's own generator, never one that starts with "-": the storage
# tool's argument parser would take it for an option (1 format in 64).
cluster_id() {
	local id=-
	while [[ $id == -* ]]; do
		id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
	done
	echo "$id"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
fetch) fetch ;;
start) start "$@" ;;
stop) stop ;;
kill) killnow ;;
restart)
	stop
	start --keep-data
	;;
status)
	if p=$(pid); then
		echo "running pid $p on $host:$port (state $state)"
	else
		echo "not running ($host:$port, state $state)"
		exit 3
	fi
	;;
wait)
	p=$(pid) || die "not running"
	ready "$p"
	;;
brokers) echo "$host:$port" ;;
cluster-id)
	for ((i = 0; i < ${1:-1}; i++)); do cluster_id; done
	;;
classpath | perf-classpath)
	fetch
	classpath
	echo
	;;
perf) java_tool org.apache.kafka.tools.ProducerPerformance "$@" ;;
run-class)
	[[ $# -ge 1 ]] || die "run-class: need a class name"
	java_tool "$@"
	;;
logs) echo "$logs/server.log" ;;
secure-info)
	is_secure || die "secure-info: set BGPEDGE_KAFKA_SECURE=1"
	secure_info
	;;
*)
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
	;;
esac
