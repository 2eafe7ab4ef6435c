#!/usr/bin/env bash
# Starts / stops the services the test suite and the demo need, privately and on
# loopback only: a docker-registry (CNCF distribution 2.8), a rabbitmq-server and a
# nats-server with JetStream (file storage).
#   scripts/services.sh start   -> prints `export VAR=...` lines for the test env
#   scripts/services.sh stop
#   scripts/services.sh env     -> the same export lines, without starting anything
#   scripts/services.sh rabbitmq-start | rabbitmq-stop -> the broker alone (tests that
#     restart a private broker: same run dir, so durable queues survive the restart)
#   scripts/services.sh nats-start | nats-stop -> the NATS server alone (same run dir:
#     JetStream's file store, hence streams and durable consumers, survive a restart)
# State lives under $MS2M_RUN_DIR (default: <repo>/.run). Idempotent: start leaves
# running services alone, stop is a no-op when nothing runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${MS2M_RUN_DIR:-$ROOT/.run}
REG_PORT=${MS2M_REGISTRY_PORT:-5000}
AMQP_PORT=${MS2M_AMQP_PORT:-5672}
DIST_PORT=$((AMQP_PORT + 20000))
MGMT_PORT=$((AMQP_PORT + 10000))
NATS_PORT=${MS2M_NATS_PORT:-4222}
AMQPS_PORT=$((AMQP_PORT + 30000))

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$4 did not open $1:$2 within $3 s (log under $RUN)"
}

start_registry() {
  local d=$RUN/registry
  mkdir -p "$d/data"
  if alive "$d/pid"; then return 0; fi
  command -v docker-registry >/dev/null || die "docker-registry missing: run scripts/setup.sh"
  cat > "$d/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $d/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REG_PORT}
CFG
  setsid docker-registry serve "$d/config.yml" >"$d/log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
  wait_port 127.0.0.1 "$REG_PORT" 20 docker-registry
  log "registry on 127.0.0.1:$REG_PORT"
}

rabbit_env() {
  local d=$RUN/rabbitmq
  export HOME=$d RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$DIST_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_EPMD_PORT=$((AMQP_PORT + 21000)) \
    RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins RABBITMQ_CONFIG_FILE=$d/rabbitmq \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# A private CA, the broker's certificate (127.0.0.1, localhost) and a client
# certificate, for the amqps:// listener. Made once per run dir.
make_broker_tls() {
  local t=$1 ssl=(openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  [ -s "$t/client/tls.key" ] && return 0
  command -v openssl >/dev/null || die "openssl missing: run scripts/setup.sh"
  mkdir -p "$t/client"
  (
    cd "$t"
    "${ssl[@]}" -x509 -keyout ca.key -out ca.crt -days 3650 -subj /CN=ms2m-test-broker-ca
    "${ssl[@]}" -keyout server.key -out server.csr -subj /CN=localhost
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile server.ext -out server.crt -days 3650
    "${ssl[@]}" -keyout client/tls.key -out client.csr -subj /CN=ms2m-shim
    # Extensions make it an X.509 v3 certificate, which is all rustls accepts.
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile client.ext -out client/tls.crt -days 3650
    cp ca.crt client/ca.crt
  ) >/dev/null 2>&1 || die "could not make the broker's test certificates under $t"
}

start_rabbitmq() {
  local d=$RUN/rabbitmq
  mkdir -p "$d/mnesia" "$d/log"
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || die "rabbitmq-server missing: run scripts/setup.sh"
  if alive "$d/pid"; then return 0; fi
  (
    rabbit_env
    # The management plugin is a broker prerequisite of the protocol: the cut-over reads
    # an exchange's current bindings there.
    echo '[rabbitmq_management].' > "$d/enabled_plugins"
    make_broker_tls "$d/tls"
    # amqps:// beside amqp://: client certificates are verified when presented, not
    # required, so a client trusting the CA alone connects too.
    printf '%s\n' "loopback_users = none" "listeners.tcp.default = 127.0.0.1:$AMQP_PORT" \
      "management.tcp.ip = 127.0.0.1" "management.tcp.port = $MGMT_PORT" \
      "listeners.ssl.default = 127.0.0.1:$AMQPS_PORT" \
      "ssl_options.cacertfile = $d/tls/ca.crt" "ssl_options.certfile = $d/tls/server.crt" \
      "ssl_options.keyfile = $d/tls/server.key" "ssl_options.verify = verify_peer" \
      "ssl_options.fail_if_no_peer_cert = false" > "$d/rabbitmq.conf"
    cp /var/lib/rabbitmq/.erlang.cookie "$d/.erlang.cookie" 2>/dev/null || true
    setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/server.log" 2>&1 < /dev/null &
    echo $! > "$d/pid"
  )
  wait_port 127.0.0.1 "$AMQP_PORT" 60 rabbitmq-server
  (rabbit_env; timeout 60 /usr/lib/rabbitmq/bin/rabbitmqctl -q await_startup >/dev/null 2>&1) \
    || die "rabbitmq-server did not finish starting (log: $d/server.log)"
  wait_port 127.0.0.1 "$MGMT_PORT" 30 "rabbitmq management API"
  wait_port 127.0.0.1 "$AMQPS_PORT" 30 "rabbitmq amqps listener"
  log "rabbitmq on 127.0.0.1:$AMQP_PORT (amqps: $AMQPS_PORT)"
}

start_nats() {
  local d=$RUN/nats
  mkdir -p "$d/jetstream"
  if alive "$d/pid"; then return 0; fi
  command -v nats-server >/dev/null || die "nats-server missing: run scripts/setup.sh"
  # Loopback only, no monitoring port; JetStream on file storage so that a restart
  # keeps every stream, message and durable consumer.
  cat > "$d/nats.conf" <<CFG
listen: 127.0.0.1:$NATS_PORT
server_name: ms2m-$NATS_PORT
jetstream { store_dir: "$d/jetstream" }
CFG
  setsid nats-server -c "$d/nats.conf" >"$d/log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
  wait_port 127.0.0.1 "$NATS_PORT" 20 nats-server
  log "nats on 127.0.0.1:$NATS_PORT"
}

stop_one() { # dir what
  local d=$1
  if alive "$d/pid"; then
    local pid; pid=$(cat "$d/pid")
    # setsid made it a process-group leader: take the whole group (beam, epmd, ...).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped $2"
  fi
  rm -f "$d/pid"
}

stop_rabbitmq() {
  stop_one "$RUN/rabbitmq" rabbitmq
  # epmd daemonizes out of the broker's process group; ours has its own port, so ask
  # that one to exit (matching process names would miss `epmd -daemon`).
  ERL_EPMD_PORT=$((AMQP_PORT + 21000)) epmd -kill >/dev/null 2>&1 || true
}

print_env() {
  echo "export MS2M_TEST_REGISTRY=127.0.0.1:$REG_PORT"
  echo "export MS2M_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
  # The same broker over TLS, and the CA + client certificate to reach it.
  echo "export MS2M_TEST_AMQPS_URL=amqps://guest:guest@127.0.0.1:$AMQPS_PORT/%2f"
  echo "export MS2M_TEST_BROKER_TLS_DIR=$RUN/rabbitmq/tls/client"
  # Read by ms2m-shim (and the tests) as the broker's management API.
  echo "export MS2M_MANAGEMENT_URL=http://127.0.0.1:$MGMT_PORT"
  echo "export MS2M_NATS_URL=nats://127.0.0.1:$NATS_PORT"
  echo "export MS2M_CRIU=${MS2M_CRIU:-/usr/local/sbin/criu}"
}

case "${1:-}" in
  start) start_registry; start_rabbitmq; start_nats; print_env ;;
  stop) stop_one "$RUN/registry" registry; stop_rabbitmq; stop_one "$RUN/nats" nats ;;
  env) print_env ;;
  rabbitmq-start) start_rabbitmq ;;
  rabbitmq-stop) stop_rabbitmq ;;
  nats-start) start_nats ;;
  nats-stop) stop_one "$RUN/nats" nats ;;
  *) die "usage: $0 start|stop|env|rabbitmq-start|rabbitmq-stop|nats-start|nats-stop" ;;
esac
