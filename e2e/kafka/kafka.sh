#!/usr/bin/env bash
# Apache Kafka (KRaft) for the local stack, from Maven Central jars.
#
#   kafka.sh fetch            download the broker classpath into the cache
#   kafka.sh up single        one combined broker+controller on 127.0.0.1:9092
#   kafka.sh up cluster       three nodes on 127.0.0.1:19092,19093,19094
#   kafka.sh up limits        one node on 127.0.0.1:9292 with short limits:
#                             group offsets expire after a minute, transactions
#                             last at most a minute (tests of those limits)
#   kafka.sh down [single|cluster|all]
#   kafka.sh kill LAYOUT N    SIGKILL node N (a crash), wait until it is gone
#   kafka.sh start LAYOUT N   start node N again on its data, wait until
#                             every node is back in the metadata
#   kafka.sh controller LAYOUT  print the active KRaft controller's node id
#   kafka.sh status
#   kafka.sh bootstrap single|cluster   print the bootstrap servers
#   kafka.sh topics ARGS...   kafka-topics against the single node
#
# Logs: .stack/logs/kafka-<layout>-<node>.log. Data: .stack/kafka/<layout>/.
source "$(dirname "$0")/../lib/common.sh"

# The pom's content is part of the cache key, so adding a jar refetches.
KAFKA_LIB="$MILLRACE_CACHE/kafka-$KAFKA_VERSION-$(cksum < "$E2E_DIR/kafka/pom.xml" | cut -d' ' -f1)/lib"
KAFKA_HOME="$STACK_DIR/kafka"

fetch() {
  [[ -f "$KAFKA_LIB/.complete" ]] && return 0
  need mvn "Install Maven 3.8+ (Debian: apt-get install maven)."
  need java "Install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)."
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central"
  rm -rf "$KAFKA_LIB" && mkdir -p "$KAFKA_LIB"
  if ! mvn -B -Dstyle.color=never -f "$E2E_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" > "$LOG_DIR/kafka-fetch.log" 2>&1; then
    tail -n 20 "$LOG_DIR/kafka-fetch.log" >&2
    die "fetching the Kafka jars failed (full log: $LOG_DIR/kafka-fetch.log); Maven Central must be reachable"
  fi
  touch "$KAFKA_LIB/.complete"
}

# node_count LAYOUT / broker_port LAYOUT N / controller_port LAYOUT N
LAYOUTS=(single cluster limits)
node_count() { [[ "$1" == cluster ]] && echo 3 || echo 1; }
broker_port() {
  case "$1" in single) echo 9092 ;; limits) echo 9292 ;; *) echo $((19091 + $2)) ;; esac
}
controller_port() {
  case "$1" in single) echo 9093 ;; limits) echo 9293 ;; *) echo $((19191 + $2)) ;; esac
}

# The single node's extra listeners (render_config): one reached through a
# test's proxy, mutual TLS, and SCRAM over TLS.
PROXIED_PORT=9094
PROXIED_ADVERTISED_PORT=9095
SSL_PORT=9096
SASL_SSL_PORT=9097

bootstrap() {
  local layout="$1" n out=()
  for n in $(seq 1 "$(node_count "$layout")"); do out+=("127.0.0.1:$(broker_port "$layout" "$n")"); done
  (IFS=,; echo "${out[*]}")
}

java_opts() {
  echo "-Xms256m -Xmx${KAFKA_HEAP:-768m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=$E2E_DIR/kafka/log4j2.properties"
}

render_config() {
  local layout="$1" n="$2" voters="$3" dir="$KAFKA_HOME/$1/node-$2"
  local rf=1 min_isr=1
  [[ "$layout" == cluster ]] && rf=3 min_isr=2
  mkdir -p "$dir/data"
  sed -e "s#@NODE_ID@#$n#" -e "s#@VOTERS@#$voters#" \
      -e "s#@BROKER_PORT@#$(broker_port "$layout" "$n")#" \
      -e "s#@CONTROLLER_PORT@#$(controller_port "$layout" "$n")#" \
      -e "s#@DATA_DIR@#$dir/data#" -e "s#@RF@#$rf#" -e "s#@MIN_ISR@#$min_isr#" \
      "$E2E_DIR/kafka/server.properties.tmpl" > "$dir/server.properties"
  if [[ "$layout" == single ]]; then
    # PROXIED: advertised at a port where a test runs a TCP proxy to it, so
    # clients bootstrapped there reach the broker only through the proxy,
    # which the test cuts (the broker unreachable from a worker).
    # SSL (mutual TLS) and SASL_SSL (SCRAM-SHA-512 over TLS): the security
    # tests' listeners, with the material of tls.sh.
    local tls="$KAFKA_HOME/$layout/tls"
    sed -i -e "s#^listeners=.*#&,PROXIED://127.0.0.1:$PROXIED_PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT#" \
      -e "s#^advertised.listeners=.*#&,PROXIED://127.0.0.1:$PROXIED_ADVERTISED_PORT,SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT#" \
      -e "s#^listener.security.protocol.map=.*#&,PROXIED:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL#" "$dir/server.properties"
    cat >> "$dir/server.properties" <<PROPS
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
  fi
  if [[ "$layout" == limits ]]; then
    # Offsets of a group without members expire a minute after their last
    # commit, checked every 5 s (Kafka's least: whole minutes); no
    # transaction may last longer than a minute (Kafka's default: 15).
    printf 'offsets.retention.minutes=1\noffsets.retention.check.interval.ms=5000\ntransaction.max.timeout.ms=60000\n' >> "$dir/server.properties"
  fi
}

# ready BOOTSTRAP COUNT: a metadata request answers and lists COUNT brokers
# (a cluster node answers before its peers have registered).
ready() { [[ "$(kcat -b "$1" -L -m 3 2>/dev/null | grep -c '^  broker ')" == "$2" ]]; }

up() {
  local layout="${1:-single}" n count voters="" cluster_id
  [[ " ${LAYOUTS[*]} " == *" $layout "* ]] || die "layout must be one of ${LAYOUTS[*]}, not '$layout'"
  need kcat "It answers the readiness check (Debian: apt-get install kcat)."
  fetch
  count="$(node_count "$layout")"
  local all_up=1
  for n in $(seq 1 "$count"); do pid_alive "kafka-$layout-$n" || all_up=0; done
  if (( all_up )) && ready "$(bootstrap "$layout")" "$count"; then
    log "kafka ($layout) already running at $(bootstrap "$layout")"; return 0
  fi
  # A partial or dead stack from a killed run: stop what is left and start
  # clean. The data is test data, so wiping it is safe and avoids a cluster-id
  # mismatch between old log dirs and a new format.
  down "$layout"
  for n in $(seq 1 "$count"); do
    require_port_free "kafka node $n broker listener" "$(broker_port "$layout" "$n")"
    require_port_free "kafka node $n controller listener" "$(controller_port "$layout" "$n")"
    if [[ "$layout" == single ]]; then
      require_port_free "kafka proxied listener" "$PROXIED_PORT"
      require_port_free "kafka SSL listener" "$SSL_PORT"
      require_port_free "kafka SASL_SSL listener" "$SASL_SSL_PORT"
    fi
    voters+="${voters:+,}$n@127.0.0.1:$(controller_port "$layout" "$n")"
  done
  rm -rf "${KAFKA_HOME:?}/$layout"
  local scram=()
  if [[ "$layout" == single ]]; then
    bash "$E2E_DIR/kafka/tls.sh" "$KAFKA_HOME/$layout/tls" || die "generating the TLS material failed"
    # The SCRAM user, written into the metadata log by the broker's own tool.
    scram=(--add-scram "SCRAM-SHA-512=[name=millrace,password=$(cat "$KAFKA_HOME/$layout/tls/scram-password")]")
  fi
  cluster_id="$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  for n in $(seq 1 "$count"); do
    render_config "$layout" "$n" "$voters"
    # shellcheck disable=SC2046
    java $(java_opts) -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format -t "$cluster_id" "${scram[@]}" \
      -c "$KAFKA_HOME/$layout/node-$n/server.properties" >>"$LOG_DIR/kafka-$layout-$n.log" 2>&1 \
      || die "formatting kafka node $n failed; see $LOG_DIR/kafka-$layout-$n.log"
  done
  for n in $(seq 1 "$count"); do
    : > "$LOG_DIR/kafka-$layout-$n.log"
    # shellcheck disable=SC2046
    start_bg "kafka-$layout-$n" java $(java_opts) -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_HOME/$layout/node-$n/server.properties"
  done
  wait_for "kafka ($layout)" 90 "$LOG_DIR/kafka-$layout-1.log" ready "$(bootstrap "$layout")" "$count" \
    || die "kafka ($layout) did not become ready; logs in $LOG_DIR"
  log "kafka ($layout) ready at $(bootstrap "$layout")"
}

down() {
  local layouts=("${1:-all}") l n
  [[ "${1:-all}" == all ]] && layouts=("${LAYOUTS[@]}")
  for l in "${layouts[@]}"; do
    stop_bg 30 "kafka-$l-1" "kafka-$l-2" "kafka-$l-3"
    # Brokers whose pid files were lost (a deleted .stack, say) still hold the
    # ports; find them by their config path.
    pkill -KILL -f "kafka.Kafka $KAFKA_HOME/$l/" 2>/dev/null || true
  done
}

node_pid() {
  [[ -f "$PID_DIR/kafka-$1-$2.pid" ]] || die "kafka node $2 ($1) is not running (no pid file)"
  cat "$PID_DIR/kafka-$1-$2.pid"
}

kill_node() {
  local layout="$1" n="$2" pid
  pid="$(node_pid "$layout" "$n")"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  timeout 30 tail --pid="$pid" -f /dev/null || die "kafka node $n ($layout) did not exit after SIGKILL"
  rm -f "$PID_DIR/kafka-$layout-$n.pid"
}

start_node() {
  local layout="$1" n="$2" config="$KAFKA_HOME/$1/node-$2/server.properties"
  [[ -f "$config" ]] || die "kafka node $n ($layout) was never formatted: run 'kafka.sh up $layout'"
  pid_alive "kafka-$layout-$n" && die "kafka node $n ($layout) is already running"
  # shellcheck disable=SC2046
  start_bg "kafka-$layout-$n" java $(java_opts) -cp "$KAFKA_LIB/*" kafka.Kafka "$config"
  wait_for "kafka node $n ($layout)" 90 "$LOG_DIR/kafka-$layout-$n.log" ready "$(bootstrap "$layout")" "$(node_count "$layout")" \
    || die "kafka node $n ($layout) did not rejoin; see $LOG_DIR/kafka-$layout-$n.log"
}

# The leader of the metadata quorum as the node with the newest election
# recorded it in its quorum-state file (every voter writes one).
active_controller() {
  local layout="$1" n best_epoch=-1 best="" epoch leader
  for n in $(seq 1 "$(node_count "$layout")"); do
    local f="$KAFKA_HOME/$layout/node-$n/data/__cluster_metadata-0/quorum-state"
    [[ -f "$f" ]] || continue
    epoch="$(grep -o '"leaderEpoch":[0-9]*' "$f" | cut -d: -f2)"
    leader="$(grep -o '"leaderId":-\?[0-9]*' "$f" | cut -d: -f2)"
    if [[ -n "$epoch" && -n "$leader" && "$leader" != -1 ]] && (( epoch > best_epoch )); then
      best_epoch="$epoch"; best="$leader"
    fi
  done
  [[ -n "$best" ]] || die "no node of $layout has recorded a controller leader"
  echo "$best"
}

status() {
  local l n
  for l in "${LAYOUTS[@]}"; do
    for n in $(seq 1 "$(node_count "$l")"); do
      pid_alive "kafka-$l-$n" && echo "kafka-$l-$n running (pid $(cat "$PID_DIR/kafka-$l-$n.pid"))"
    done
  done
  return 0
}

mkdir -p "$LOG_DIR" "$PID_DIR"
case "${1:-}" in
  fetch) fetch ;;
  up) up "${2:-single}" ;;
  down) down "${2:-all}" ;;
  kill) kill_node "${2:?layout}" "${3:?node}" ;;
  start) fetch; start_node "${2:?layout}" "${3:?node}" ;;
  controller) active_controller "${2:-cluster}" ;;
  status) status ;;
  bootstrap) bootstrap "${2:-single}" ;;
  topics)
    fetch; shift
    exec java -Dlog4j2.configurationFile="$E2E_DIR/kafka/log4j2-tools.properties" -cp "$KAFKA_LIB/*" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "$(bootstrap single)" "$@" ;;
  *) die "usage: $0 fetch | up [single|cluster|limits] | down [single|cluster|limits|all] | status | bootstrap [single|cluster|limits] | topics ARGS" ;;
esac
