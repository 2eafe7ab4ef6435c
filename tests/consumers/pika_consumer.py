#!/usr/bin/env python3
"""A queue consumer written the way third parties write them: Python + pika.

It is the second reference consumer of the migration protocol (docs/migration-protocol.md,
docs/sample-service.md): nothing in it helps ms2m beyond the control protocol.

- ``basic_qos(prefetch_count=MS2M_PREFETCH)`` (0: unlimited), manual ack after the work
  or automatic ack (``MS2M_ACK=auto``), MS2M_DELAY_MS of work per message.
- **No deduplication**: every delivery is applied.
- The control queue is ``ms2m.control.<name in /etc/hostname>``, read at every connect.
  ``START_REPLAY`` / ``END_REPLAY`` are handled as the Rust sample does: after a restore
  (noticed as the Rust sample notices it, by a changed kernel task identity) it consumes
  nothing until ``START_REPLAY``; ``END_REPLAY`` first works off what the replay queue
  still holds, then goes back to the primary queue.
- On any connection error it sleeps MS2M_RECONNECT_DELAY_MS (default 3000) and
  reconnects. What pika held in memory for the dead connection is dropped, as every pika
  program drops it.

Observable from outside like the Rust sample: ``GET /state`` (same JSON keys) and
``GET /applied`` (``[[seq, unix_ms], ...]``), on MS2M_HTTP_PORT. The apply log records
every apply, duplicates included: this consumer never skips one.
"""

import http.server
import json
import logging
import os
import socket
import sys
import threading
import time

import pika
import pika.exceptions

LOG = logging.getLogger("pika-consumer")
APPLIED_LOG_CAP = 100_000


def env(name, default):
    v = os.environ.get(name, "")
    return v if v != "" else default


class Config:
    def __init__(self):
        self.amqp_url = env("MS2M_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        self.exchange = env("MS2M_EXCHANGE", "ms2m-demo")
        self.queue = env("MS2M_QUEUE", "ms2m-demo")
        self.delay = int(env("MS2M_DELAY_MS", "50")) / 1000.0
        self.prefetch = int(env("MS2M_PREFETCH", "50"))
        self.auto_ack = env("MS2M_ACK", "manual") == "auto"
        self.reconnect_delay = int(env("MS2M_RECONNECT_DELAY_MS", "3000")) / 1000.0
        self.http_port = int(env("MS2M_HTTP_PORT", "8080"))
        self.hostname_file = env("MS2M_HOSTNAME_FILE", "/etc/hostname")

    def pod_name(self):
        with open(self.hostname_file) as f:
            name = f.read().strip()
        if not name:
            raise ValueError(f"{self.hostname_file} is empty")
        return name


def unix_ms():
    return int(time.time() * 1000)


class State:
    """What ``/state`` reports, with the Rust sample's keys. Counters only grow."""

    def __init__(self, pod):
        self.lock = threading.Lock()
        self.pod = pod
        self.mode = "primary"
        self.replay_queue = None
        self.count = 0
        self.applied_twice = 0
        self.distinct = 0
        self.sum = 0
        self.last_seq = 0
        self.gaps = 0
        self.missing = 0
        self.restores = 0
        self.connections = 0
        self.last_applied_unix_ms = 0
        self.applied_log = []
        self.seen = set()

    def apply(self, body):
        msg = json.loads(body)
        seq, value = int(msg["seq"]), int(msg["value"])
        with self.lock:
            # Logged first, duplicates included: the accounting reads double
            # application from here.
            now = unix_ms()
            if len(self.applied_log) >= APPLIED_LOG_CAP:
                del self.applied_log[: APPLIED_LOG_CAP // 10]
            self.applied_log.append((seq, now))
            if seq in self.seen:
                self.applied_twice += 1
            else:
                self.seen.add(seq)
                self.distinct += 1
            if seq > self.last_seq + 1:
                self.gaps += 1
                self.missing += seq - self.last_seq - 1
            self.count += 1
            self.sum += value
            self.last_seq = max(self.last_seq, seq)
            self.last_applied_unix_ms = now

    def to_json(self):
        with self.lock:
            v = {
                "pod": self.pod,
                "mode": self.mode,
                "dedup": False,
                "count": self.count,
                "applied_twice": self.applied_twice,
                "distinct": self.distinct,
                "sum": self.sum,
                "last_seq": self.last_seq,
                "skipped_duplicates": 0,
                "gaps": self.gaps,
                "missing": self.missing,
                "restores": self.restores,
                "applied_unacked_after_restore": 0,
                "ballast_mib": 0,
                "ballast_checksum": 0,
                "last_applied_unix_ms": self.last_applied_unix_ms,
                "connections": self.connections,
                "consumer": "python-pika",
            }
            if self.mode == "replaying":
                v["queue"] = self.replay_queue
            return json.dumps(v)

    def applied_json(self):
        with self.lock:
            return json.dumps(self.applied_log)


class TaskIdentity:
    """Changes exactly when the process was restored from a checkpoint (a new kernel
    task: another start time, on another machine another boot id)."""

    @staticmethod
    def current():
        with open("/proc/self/stat") as f:
            stat = f.read()
        start_ticks = int(stat[stat.rfind(")") + 1 :].split()[19])
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = ""
        return (start_ticks, boot)


class RestoreWatch:
    def __init__(self):
        self.known = TaskIdentity.current()

    def check(self):
        now = TaskIdentity.current()
        if now != self.known:
            self.known = now
            return True
        return False


class Restored(Exception):
    pass


def serve_http(state, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        # The harness (and the Rust sample) speak HTTP/1.1; one request per connection.
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/state":
                body, code = state.to_json(), 200
            elif path == "/applied":
                body, code = state.applied_json(), 200
            elif path == "/healthz":
                body, code = '"ok"', 200
            else:
                body, code = '"not found"', 404
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self):
            # HTTPServer.server_bind resolves its own name (getfqdn): no resolver here.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(self.server_address)
            self.server_name, self.server_port = "pod", self.server_address[1]

    server = Server(("0.0.0.0", port), Handler)
    server.serve_forever(poll_interval=0.2)


class Session:
    """One broker connection: the control consumer and at most one data consumer."""

    def __init__(self, cfg, state, watch):
        self.cfg, self.state, self.watch = cfg, state, watch
        self.pod = cfg.pod_name()
        params = pika.URLParameters(cfg.amqp_url)
        params.client_properties = {"connection_name": self.pod}
        self.conn = pika.BlockingConnection(params)
        self.control = self.conn.channel()
        ctl = self.control
        ctl.exchange_declare(cfg.exchange, exchange_type="fanout", durable=True)
        ctl.queue_declare(cfg.queue, durable=True)
        ctl.queue_bind(cfg.queue, cfg.exchange)
        self.control_queue = f"ms2m.control.{self.pod}"
        ctl.queue_declare(self.control_queue, durable=True)
        self.pending_control = []
        ctl.basic_consume(self.control_queue, self.on_control, auto_ack=False)
        self.data = None
        self.data_tag = None
        self.delivered = 0

    def on_control(self, ch, method, _props, body):
        # Acked before acting, as the Rust sample does: the shim re-sends on failure.
        ch.basic_ack(method.delivery_tag)
        self.pending_control.append(body)

    def on_data(self, ch, method, _props, body):
        self.delivered += 1
        time.sleep(self.cfg.delay)
        try:
            self.state.apply(body)
        except (ValueError, KeyError, TypeError):
            # Acked anyway: a message that can never parse must not loop forever.
            LOG.warning("dropping unparsable message %r", body)
        if not self.cfg.auto_ack:
            ch.basic_ack(method.delivery_tag)

    def consume(self, queue):
        self.stop_data()
        ch = self.conn.channel()
        if not self.cfg.auto_ack:
            ch.basic_qos(prefetch_count=self.cfg.prefetch)
        self.data_tag = ch.basic_consume(queue, self.on_data, auto_ack=self.cfg.auto_ack)
        self.data = ch

    def stop_data(self):
        if self.data is None:
            return
        ch, self.data = self.data, None
        if not ch.is_open:
            return
        pending = ch.basic_cancel(self.data_tag)
        # With automatic ack the broker counts what it sent as done: what arrived
        # before the cancel is only here.
        for method, _props, body in pending or []:
            time.sleep(self.cfg.delay)
            self.state.apply(body)
        # Closing the channel hands unacked deliveries back to their queue.
        ch.close()

    def drain_replay(self, queue):
        """Works off the replay queue before leaving it: closing the channel would hand
        what it holds back to a queue the driver deletes next.

        The depth is read by a passive declare on the consuming channel. The broker may
        answer a declare before a delivery it had already sent off, but not before one
        it sent before the *previous* answer: so depth 0 twice in a row, with nothing
        delivered in between, means every delivery has been worked off and nothing more
        can come (after the cut-over nothing new enters the replay queue). That costs
        two round trips, not a wait for stragglers."""
        LOG.info("END_REPLAY: finishing %s", queue)
        empty_reads = 0
        while self.data is not None and empty_reads < 2:
            before = self.delivered
            try:
                depth = self.data.queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                # The queue is gone; its channel closed with it.
                self.data = None
                return
            self.conn.process_data_events(time_limit=0)
            if depth == 0 and self.delivered == before:
                empty_reads += 1
                continue
            empty_reads = 0
            if self.delivered == before:
                self.conn.process_data_events(time_limit=0.05)

    def handle_control(self, body):
        try:
            msg = json.loads(body)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            LOG.warning("ignoring control message %r", body)
            return
        if kind == "START_REPLAY":
            queue = ((msg.get("payload") or {}).get("queue")) or ""
            if not queue:
                LOG.warning("START_REPLAY without payload.queue")
                return
            with self.state.lock:
                self.state.mode, self.state.replay_queue = "replaying", queue
            LOG.info("control: replaying %s", queue)
            self.consume(queue)
        elif kind == "END_REPLAY":
            with self.state.lock:
                mode, replay = self.state.mode, self.state.replay_queue
            if mode == "replaying" and self.data is not None:
                self.drain_replay(replay)
            with self.state.lock:
                self.state.mode, self.state.replay_queue = "primary", None
            LOG.info("control: back on %s", self.cfg.queue)
            self.consume(self.cfg.queue)
        else:
            LOG.warning("ignoring control type %r", kind)

    def run(self):
        with self.state.lock:
            self.state.pod = self.pod
            self.state.connections += 1
            mode, replay = self.state.mode, self.state.replay_queue
        LOG.info("connected as %s in mode %s", self.pod, mode)
        if mode == "primary":
            self.consume(self.cfg.queue)
        elif mode == "replaying":
            try:
                self.consume(replay)
            except pika.exceptions.ChannelClosedByBroker:
                # The replay queue is gone: the next control message says what to do.
                with self.state.lock:
                    self.state.mode = "awaiting_replay"
                raise
        while True:
            self.conn.process_data_events(time_limit=0.1)
            if self.watch.check():
                raise Restored()
            while self.pending_control:
                self.handle_control(self.pending_control.pop(0))


def on_restore(cfg, state):
    pod = cfg.pod_name()
    with state.lock:
        state.restores += 1
        state.mode, state.replay_queue = "awaiting_replay", None
        LOG.info("restored from a checkpoint (was %s, now %s): waiting for START_REPLAY",
                 state.pod, pod)
        state.pod = pod


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    cfg = Config()
    state = State(cfg.pod_name())
    watch = RestoreWatch()
    threading.Thread(target=serve_http, args=(state, cfg.http_port), daemon=True).start()
    while True:
        restored = False
        try:
            Session(cfg, state, watch).run()
        except Restored:
            restored = True
        except (pika.exceptions.AMQPError, OSError) as e:
            LOG.warning("connection lost: %r", e)
        # A restored connection usually dies (closed sockets, new pod address) before
        # the idle check notices the restore: ask again.
        if restored or watch.check():
            on_restore(cfg, state)
        # The connection object is dropped, with whatever pika held for it.
        LOG.info("reconnecting in %.1f s", cfg.reconnect_delay)
        time.sleep(cfg.reconnect_delay)


if __name__ == "__main__":
    main()
