//! The shim's AMQP side against the real rabbitmq-server at MS2M_TEST_AMQP_URL: topology,
//! control messages received by a real consumer, depth polling, a connection cut in the
//! middle of a replay (through a TCP proxy the test owns), and a real broker restart
//! mid-replay (a private rabbitmq-server started through scripts/services.sh).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::{
    BasicProperties,
    channel::{
        BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, Channel,
        ExchangeDeleteArguments, QueueDeclareArguments, QueueDeleteArguments,
    },
    connection::Connection,
};
use ms2m_shim::engine::QueueNames;
use ms2m_shim::messaging::{ControlMessage, Messaging, MessagingError, connection_args};
use ms2m_tests::env;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Generous bound for the broker to reflect a publish in a queue's depth.
const SETTLE: Duration = Duration::from_secs(20);

struct Broker {
    conn: Connection,
    ch: Channel,
}

impl Broker {
    async fn connect(url: &str) -> Self {
        let args = connection_args(url).expect("MS2M_TEST_AMQP_URL parses");
        let conn = Connection::open(&args)
            .await
            .unwrap_or_else(|e| panic!("rabbitmq-server not reachable at {url}: {e}"));
        let ch = conn.open_channel(None).await.unwrap();
        Self { conn, ch }
    }

    /// The primary queue, as the service declares it.
    async fn declare_primary(&self, name: &str) {
        self.ch
            .queue_declare(QueueDeclareArguments::durable_client_named(name))
            .await
            .unwrap();
    }

    async fn publish(&self, exchange: &str, routing_key: &str, seq: u32) {
        let mut props = BasicProperties::default();
        props.with_persistence(true);
        self.ch
            .basic_publish(
                props,
                format!("{{\"seq\":{seq}}}").into_bytes(),
                BasicPublishArguments::new(exchange, routing_key),
            )
            .await
            .unwrap();
    }

    async fn cleanup(self, queues: &[&str], exchange: &str) {
        for q in queues {
            let _ = self.ch.queue_delete(QueueDeleteArguments::new(q)).await;
        }
        let _ = self
            .ch
            .exchange_delete(ExchangeDeleteArguments::new(exchange))
            .await;
        let _ = self.conn.close().await;
    }
}

fn names(tag: &str) -> QueueNames {
    let base = env::unique(&format!("shim-{tag}-"));
    QueueNames::new(
        &format!("{base}.fanout"),
        &format!("{base}.orders"),
        "",
        &format!("{base}-target"),
    )
}

async fn wait_depth(m: &Messaging, queue: &str, want: Option<u64>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = m.queue_depth(queue).await.expect("depth");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: depth {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn topology_puts_every_message_in_both_queues_until_unbound() {
    let url = env::amqp_url();
    let q = names("topo");
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;
    let m = Messaging::new(&url, "topo").unwrap();

    m.ensure_replay_topology(&q).await.unwrap();
    // Idempotent: a restarted driver declares again.
    m.ensure_replay_topology(&q).await.unwrap();
    for seq in 0..10 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.primary, Some(10)).await;
    wait_depth(&m, &q.replay, Some(10)).await;

    m.unbind_replay(&q).await.unwrap();
    for seq in 10..15 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.primary, Some(15)).await;
    assert_eq!(
        m.queue_depth(&q.replay).await.unwrap(),
        Some(10),
        "unbound replay queue grew"
    );

    m.delete_replay(&q).await.unwrap();
    assert_eq!(m.queue_depth(&q.replay).await.unwrap(), None);
    m.delete_replay(&q)
        .await
        .expect("deleting a deleted replay queue is fine");
    b.cleanup(&[&q.primary], &q.exchange).await;
}

#[tokio::test]
async fn a_missing_primary_queue_is_refused_and_the_session_recovers() {
    let url = env::amqp_url();
    let q = names("missing");
    let m = Messaging::new(&url, "missing").unwrap();
    let err = m.ensure_replay_topology(&q).await.unwrap_err();
    assert!(
        matches!(err, MessagingError::Refused { code: 404, .. }),
        "expected a 404 refusal, got {err}"
    );
    assert!(err.is_permanent());
    assert!(err.to_string().contains(&q.primary), "{err}");
    // The broker closed the channel; the next operation gets a new one.
    assert_eq!(m.queue_depth(&q.primary).await.unwrap(), None);
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;
    m.ensure_replay_topology(&q).await.unwrap();
    assert_eq!(m.queue_depth(&q.replay).await.unwrap(), Some(0));
    b.cleanup(&[&q.primary, &q.replay], &q.exchange).await;
}

/// Reads `n` messages from `queue` with a real consumer, acking each.
async fn consume(url: &str, queue: &str, n: usize) -> Vec<(serde_json::Value, BasicProperties)> {
    let b = Broker::connect(url).await;
    b.ch.queue_declare(QueueDeclareArguments::durable_client_named(queue))
        .await
        .unwrap();
    let (_tag, mut rx) =
        b.ch.basic_consume_rx(BasicConsumeArguments::new(queue, "test-consumer"))
            .await
            .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(SETTLE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no control message on {queue} after {} of {n}", out.len()))
            .expect("consumer channel open");
        let body: serde_json::Value =
            serde_json::from_slice(msg.content.as_deref().unwrap()).unwrap();
        let tag = msg.deliver.as_ref().unwrap().delivery_tag();
        b.ch.basic_ack(BasicAckArguments::new(tag, false))
            .await
            .unwrap();
        out.push((body, msg.basic_properties.unwrap()));
    }
    let _ = b.conn.close().await;
    out
}

#[tokio::test]
async fn control_messages_reach_a_real_consumer_in_the_reference_format() {
    let url = env::amqp_url();
    let q = names("ctl");
    let m = Messaging::new(&url, "mig-ctl").unwrap();
    // Sent before the target's consumer is up: the message waits in the durable queue.
    m.send_control(&q.control, &ControlMessage::start_replay(&q.replay))
        .await
        .unwrap();
    m.send_control(&q.control, &ControlMessage::EndReplay)
        .await
        .unwrap();
    let got = consume(&url, &q.control, 2).await;
    assert_eq!(
        got[0].0,
        serde_json::json!({"type": "START_REPLAY", "payload": {"queue": q.replay}})
    );
    assert_eq!(got[1].0, serde_json::json!({"type": "END_REPLAY"}));
    assert_eq!(
        got[0].1.delivery_mode(),
        Some(2),
        "control messages are persistent"
    );
    assert_eq!(
        got[0].1.message_id().map(String::as_str),
        Some("mig-ctl/start-replay")
    );
    assert_eq!(
        got[1].1.content_type().map(String::as_str),
        Some("application/json")
    );
    assert_eq!(m.queue_depth(&q.control).await.unwrap(), Some(0));
    Broker::connect(&url)
        .await
        .cleanup(&[&q.control], "unused")
        .await;
}

#[tokio::test]
async fn depth_polling_follows_a_consumer_draining_the_replay_queue() {
    let url = env::amqp_url();
    let q = names("depth");
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;
    let m = Messaging::new(&url, "depth").unwrap();
    m.ensure_replay_topology(&q).await.unwrap();
    for seq in 0..30 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.replay, Some(30)).await;
    m.unbind_replay(&q).await.unwrap();

    let url2 = url.clone();
    let replay = q.replay.clone();
    let drainer = tokio::spawn(async move {
        let c = Broker::connect(&url2).await;
        let (_t, mut rx) =
            c.ch.basic_consume_rx(BasicConsumeArguments::new(&replay, "drainer"))
                .await
                .unwrap();
        for _ in 0..30 {
            let msg = rx.recv().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let tag = msg.deliver.unwrap().delivery_tag();
            c.ch.basic_ack(BasicAckArguments::new(tag, false))
                .await
                .unwrap();
        }
        let _ = c.conn.close().await;
    });
    let mut samples = Vec::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        let d = m
            .queue_depth(&q.replay)
            .await
            .unwrap()
            .expect("replay queue exists");
        samples.push(d);
        if d == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replay never drained: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drainer.await.unwrap();
    assert!(
        samples.windows(2).all(|w| w[1] <= w[0]),
        "depth went up while draining: {samples:?}"
    );
    assert_eq!(*samples.last().unwrap(), 0);
    b.cleanup(&[&q.primary, &q.replay], &q.exchange).await;
}

/// A loopback TCP proxy whose live connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted: Arc<Mutex<u32>> = Arc::default();
        let (c2, a2) = (conns.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                *a2.lock().unwrap() += 1;
                let upstream = upstream.clone();
                let h = tokio::spawn(async move {
                    let mut up = TcpStream::connect(&upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                c2.lock().unwrap().push(h);
            }
        });
        Self {
            addr,
            conns,
            accepted,
            task,
        }
    }

    /// Drops both sockets of every live connection, as a broker restart or a network
    /// failure would.
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn accepted(&self) -> u32 {
        *self.accepted.lock().unwrap()
    }
}

/// `amqp://user:pass@HOST:PORT/vhost` → (`HOST:PORT`, URL pointing at `addr` instead).
fn reroute(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let at = url.find('@').expect("URL has credentials") + 1;
    let end = url[at..].find('/').map_or(url.len(), |i| at + i);
    let upstream = url[at..end].to_owned();
    (upstream, format!("{}{}{}", &url[..at], addr, &url[end..]))
}

#[tokio::test]
async fn a_connection_cut_mid_replay_is_reopened_without_repeating_a_side_effect() {
    let url = env::amqp_url();
    let q = names("cut");
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;

    let placeholder: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (upstream, _) = reroute(&url, placeholder);
    let proxy = Proxy::start(upstream).await;
    let (_, via_proxy) = reroute(&url, proxy.addr);
    let m = Messaging::new(&via_proxy, "mig-cut").unwrap();

    m.ensure_replay_topology(&q).await.unwrap();
    for seq in 0..5 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.replay, Some(5)).await;
    m.send_control(&q.control, &ControlMessage::start_replay(&q.replay))
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 1);

    // The broker connection dies mid-replay.
    proxy.cut();
    // Depth polling carries on over a new connection...
    wait_depth(&m, &q.replay, Some(5)).await;
    assert_eq!(proxy.accepted(), 2, "exactly one reconnect");
    // ...and the replay ends as it would have.
    m.unbind_replay(&q).await.unwrap();
    m.send_control(&q.control, &ControlMessage::EndReplay)
        .await
        .unwrap();
    m.delete_replay(&q).await.unwrap();

    // The consumer sees START once and END once: nothing was repeated by the reconnect.
    let got = consume(&url, &q.control, 2).await;
    assert_eq!(got[0].0["type"], "START_REPLAY");
    assert_eq!(got[1].0["type"], "END_REPLAY");
    assert_eq!(
        m.queue_depth(&q.control).await.unwrap(),
        Some(0),
        "a control message was repeated"
    );
    // The primary queue kept every message throughout.
    assert_eq!(m.queue_depth(&q.primary).await.unwrap(), Some(5));

    proxy.task.abort();
    b.cleanup(&[&q.primary, &q.control], &q.exchange).await;
}

/// A rabbitmq-server of this test's own (`scripts/services.sh rabbitmq-start` with a
/// private run dir and ports), so it can be stopped without touching the shared one.
struct PrivateBroker {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateBroker {
    /// The script also uses port+20000 (Erlang distribution) and port+21000 (epmd).
    fn free_port() -> u16 {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64;
        (0..200)
            .map(|i| 12000 + ((seed + i * 7919) % 30000) as u16)
            .find(|p| {
                [*p, p + 20000, p + 21000]
                    .iter()
                    .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok())
            })
            .expect("no free loopback port triple for a private rabbitmq-server")
    }

    async fn start() -> Self {
        let b = Self {
            dir: tempfile::tempdir().unwrap(),
            port: Self::free_port(),
        };
        b.run("rabbitmq-start").await;
        b
    }

    /// `rabbitmq-start` / `rabbitmq-stop` on this broker's run dir (the mnesia dir with
    /// it, so durable queues survive a stop and start).
    async fn run(&self, action: &'static str) {
        let (dir, port) = (self.dir.path().to_owned(), self.port);
        tokio::task::spawn_blocking(move || services(&dir, port, action))
            .await
            .expect("services.sh ran");
    }
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        services(self.dir.path(), self.port, "rabbitmq-stop");
    }
}

fn services(dir: &std::path::Path, port: u16, action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(action)
        .env("MS2M_RUN_DIR", dir)
        .env("MS2M_AMQP_PORT", port.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/services.sh {action} failed (rabbitmq-server installed? scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_broker_restart_mid_replay_keeps_the_replay_queue_and_repeats_no_control_message() {
    let broker = PrivateBroker::start().await;
    let url = broker.url();
    let q = names("restart");
    let publisher = Broker::connect(&url).await;
    publisher.declare_primary(&q.primary).await;
    let m = Messaging::new(&url, "restart-test").unwrap();
    m.ensure_replay_topology(&q).await.unwrap();
    for seq in 0..5 {
        publisher.publish(&q.exchange, &q.routing_key, seq).await;
    }
    wait_depth(&m, &q.replay, Some(5)).await;
    m.send_control(&q.control, &ControlMessage::start_replay(&q.replay))
        .await
        .unwrap();
    let _ = publisher.conn.close().await;

    // A real restart: the server closes the connection (320 CONNECTION_FORCED) and the
    // port stays down until it is back.
    broker.run("rabbitmq-stop").await;
    let err = m
        .queue_depth(&q.replay)
        .await
        .expect_err("no broker to answer");
    assert!(
        !err.is_permanent(),
        "a broker that is down is worth retrying: {err}"
    );
    broker.run("rabbitmq-start").await;

    // The depth poll resumes on a new connection; the durable replay queue and its
    // persistent messages survived, and so did the primary queue's.
    wait_depth(&m, &q.replay, Some(5)).await;
    assert_eq!(m.queue_depth(&q.primary).await.unwrap(), Some(5));
    m.send_control(&q.control, &ControlMessage::EndReplay)
        .await
        .unwrap();
    let got = consume(&url, &q.control, 2).await;
    let types: Vec<&str> = got
        .iter()
        .map(|(body, _)| body["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["START_REPLAY", "END_REPLAY"]);
    assert_eq!(got[0].0["payload"]["queue"], q.replay.as_str());
    // Nothing repeated: the control queue is empty after the two.
    wait_depth(&m, &q.control, Some(0)).await;
    m.delete_replay(&q).await.unwrap();
    wait_depth(&m, &q.replay, None).await;
}
