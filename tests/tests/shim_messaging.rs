//! The shim's AMQP side against the real rabbitmq-server at MS2M_TEST_AMQP_URL: topology,
//! the fence and the cut-over under a publisher that does not pause, the pre-checkpoint
//! condition against consumers with prefetch 1, 50 and unlimited, control messages
//! received by a real consumer, depth polling, a connection cut in the middle of a
//! replay (through a TCP proxy the test owns), and a real broker restart mid-replay (a
//! private rabbitmq-server started through scripts/services.sh).

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
use ms2m_shim::messaging::{BrokerTls, ControlMessage, Messaging, MessagingError, connection_args};
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
async fn topology_fence_and_cut_over_move_the_feed_between_the_queues() {
    let url = env::amqp_url();
    let q = names("topo");
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;
    let m = env::messaging(&url, "topo");

    m.ensure_replay_topology(&q).await.unwrap();
    // Idempotent: a restarted driver declares again.
    m.ensure_replay_topology(&q).await.unwrap();
    for seq in 0..10 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.primary, Some(10)).await;
    wait_depth(&m, &q.replay, Some(10)).await;

    // The fence: the primary queue's copies go, and it is fed no more.
    assert_eq!(m.fence_primary(&q).await.unwrap(), 10);
    assert_eq!(m.fence_primary(&q).await.unwrap(), 0, "repeatable");
    for seq in 10..15 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.replay, Some(15)).await;
    assert_eq!(m.queue_depth(&q.primary).await.unwrap(), Some(0));

    // The cut-over: the feed is back on the primary queue, the replay queue stops growing.
    m.cut_over(&q).await.unwrap();
    m.cut_over(&q).await.unwrap();
    for seq in 15..20 {
        b.publish(&q.exchange, "", seq).await;
    }
    wait_depth(&m, &q.primary, Some(5)).await;
    assert_eq!(
        m.queue_depth(&q.replay).await.unwrap(),
        Some(15),
        "a cut-off replay queue grew"
    );
    // Nothing of the cut-over is left on the broker: the exchange feeds the primary
    // queue directly, as before the migration.
    let left = m.management().bindings_from(&q.exchange).await.unwrap();
    assert!(
        left.iter().any(|b| b.is_queue(&q.primary))
            && !left.iter().any(|b| b.is_queue(&q.replay))
            && left.iter().all(|b| b.destination_type == "queue"),
        "{left:?}"
    );
    for helper in [".ms2m-cut", ".ms2m-fallback"] {
        let name = format!("{}{helper}", q.exchange);
        assert!(
            m.management()
                .bindings_from(&name)
                .await
                .unwrap()
                .is_empty(),
            "{name} left behind"
        );
    }

    m.delete_replay(&q).await.unwrap();
    assert_eq!(m.queue_depth(&q.replay).await.unwrap(), None);
    m.delete_replay(&q)
        .await
        .expect("deleting a deleted replay queue is fine");
    b.cleanup(&[&q.primary], &q.exchange).await;
}

/// Every message body (`{"seq":N}`) in `queue`, taken with `basic.get` until it is empty.
async fn drain_seqs(url: &str, queue: &str) -> Vec<u32> {
    use amqprs::channel::BasicGetArguments;
    let b = Broker::connect(url).await;
    let mut seqs = Vec::new();
    while let Some((_, _, body)) =
        b.ch.basic_get(BasicGetArguments::new(queue).no_ack(true).finish())
            .await
            .unwrap()
    {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        seqs.push(v["seq"].as_u64().unwrap() as u32);
    }
    let _ = b.conn.close().await;
    seqs
}

#[tokio::test]
async fn under_a_publisher_that_never_pauses_the_cut_over_puts_each_message_in_one_queue() {
    let url = env::amqp_url();
    let q = names("cut-load");
    let b = Broker::connect(&url).await;
    b.declare_primary(&q.primary).await;
    let m = env::messaging(&url, "cut-load");
    m.ensure_replay_topology(&q).await.unwrap();
    // The publisher runs until well after the cut-over, however slow the machine: at
    // least 4000 messages, and 500 more once the cut is done.
    let cut_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url2, exchange, done) = (url.clone(), q.exchange.clone(), cut_done.clone());
    let publisher = tokio::spawn(async move {
        let p = Broker::connect(&url2).await;
        let mut seq = 0u32;
        let mut after_cut = 0;
        while seq < 4000 || after_cut < 500 {
            p.publish(&exchange, "", seq).await;
            seq += 1;
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                after_cut += 1;
            }
            if seq.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let _ = p.conn.close().await;
        seq
    });
    // Mid-stream: the source is gone, fence; then the target caught up, cut over.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let purged = m.fence_primary(&q).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    m.cut_over(&q).await.unwrap();
    cut_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let n_published = publisher.await.unwrap();
    let settle = Instant::now() + SETTLE;
    let (mut replay, mut primary) = (Vec::new(), Vec::new());
    loop {
        replay.extend(drain_seqs(&url, &q.replay).await);
        primary.extend(drain_seqs(&url, &q.primary).await);
        if replay.len() + primary.len() >= n_published as usize || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "purged {purged}, replay {} (up to {:?}), primary {} (from {:?})",
        replay.len(),
        replay.iter().max(),
        primary.len(),
        primary.iter().min()
    );
    assert!(
        !replay.is_empty() && !primary.is_empty(),
        "the cut fell mid-stream"
    );
    let mut all: Vec<u32> = replay.iter().chain(&primary).copied().collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(n - all.len(), 0, "messages in both queues");
    assert_eq!(all, (0..n_published).collect::<Vec<_>>(), "messages lost");
    // The cut is one point in the stream: everything before it in the replay queue.
    assert!(replay.iter().max() < primary.iter().min());
    m.delete_replay(&q).await.unwrap();
    b.cleanup(&[&q.primary], &q.exchange).await;
}

/// A consumer on `queue` with `prefetch`, acking each delivery in order after 15 ms of
/// "processing", until `stop`; returns the instant it acked the last message with a
/// `seq` below `pre`.
async fn slow_consumer(
    url: String,
    queue: String,
    prefetch: u16,
    pre: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Instant {
    use amqprs::channel::BasicQosArguments;
    let c = Broker::connect(&url).await;
    c.ch.basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
        .unwrap();
    let (_t, mut rx) =
        c.ch.basic_consume_rx(BasicConsumeArguments::new(&queue, "slow"))
            .await
            .unwrap();
    let mut last_pre = None;
    while !*stop.borrow() {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(msg.content.as_deref().unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
        let tag = msg.deliver.unwrap().delivery_tag();
        c.ch.basic_ack(BasicAckArguments::new(tag, false))
            .await
            .unwrap();
        if v["seq"].as_u64().unwrap() < u64::from(pre) {
            last_pre = Some(Instant::now());
        }
    }
    let _ = c.conn.close().await;
    last_pre.expect("the consumer acked the pre-binding messages")
}

#[tokio::test]
async fn the_pre_checkpoint_condition_waits_for_every_prefetched_delivery_to_be_acked() {
    let url = env::amqp_url();
    for prefetch in [1u16, 10, 50] {
        let q = names(&format!("backlog{prefetch}"));
        let b = Broker::connect(&url).await;
        b.declare_primary(&q.primary).await;
        let m = env::messaging(&url, "backlog");
        // 40 messages published before the binding, taken by a consumer that holds up
        // to `prefetch` of them unacknowledged for 15 ms each; then a steady producer.
        const PRE: u32 = 40;
        for seq in 0..PRE {
            b.publish("", &q.primary, seq).await;
        }
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let consumer = tokio::spawn(slow_consumer(
            url.clone(),
            q.primary.clone(),
            prefetch,
            PRE,
            stop.clone(),
        ));
        if prefetch > 1 {
            // Everything delivered: ready depth 0, the rule that read depths alone
            // called the backlog drained from here on.
            wait_depth(&m, &q.primary, Some(0)).await;
        }
        let bound = Instant::now();
        m.ensure_replay_topology(&q).await.unwrap();
        let (url2, exchange, mut stop2) = (url.clone(), q.exchange.clone(), stop.clone());
        let producer = tokio::spawn(async move {
            let p = Broker::connect(&url2).await;
            let mut seq = PRE;
            while !*stop2.borrow_and_update() {
                p.publish(&exchange, "", seq).await;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = p.conn.close().await;
        });
        let (settled_at, detail) = loop {
            let check = m.pre_binding_backlog(&q, prefetch).await.unwrap();
            if check.settled {
                break (Instant::now(), check.detail);
            }
            assert!(
                bound.elapsed() < SETTLE,
                "prefetch {prefetch}: never settled: {}",
                check.detail
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stop_tx.send(true).unwrap();
        producer.await.unwrap();
        let last_ack = consumer.await.unwrap();
        eprintln!(
            "prefetch {prefetch}: last pre-binding ack {} ms after the binding, settled at {} ms ({detail})",
            last_ack.duration_since(bound).as_millis(),
            settled_at.duration_since(bound).as_millis()
        );
        assert!(
            settled_at >= last_ack,
            "prefetch {prefetch}: settled {} ms before the last pre-binding message was acknowledged",
            last_ack.duration_since(settled_at).as_millis()
        );
        m.delete_replay(&q).await.unwrap();
        b.cleanup(&[&q.primary], &q.exchange).await;
    }
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
    /// The script also uses port+10000 (management), port+20000 (Erlang distribution),
    /// port+21000 (epmd) and port+30000 (amqps).
    fn free_port() -> u16 {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64;
        (0..200)
            .map(|i| 12000 + ((seed + i * 7919) % 20000) as u16)
            .find(|p| {
                [*p, p + 10000, p + 20000, p + 21000, p + 30000]
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

/// `amqps://` with the broker's CA, with and without a client certificate, carries the
/// whole protocol (topology, counts, control messages, the management API beside it);
/// a broker certificate from another CA and TLS material for a plain URL are refused
/// with errors that say so.
#[tokio::test]
async fn amqps_carries_the_protocol_and_refuses_a_foreign_ca() {
    let url = env::amqps_url();
    let tls = BrokerTls::from_dir(&env::broker_tls_dir()).expect("the test broker's TLS material");
    assert!(tls.cert_pem.is_some(), "a client certificate is offered");
    let b = Broker::connect(&env::amqp_url()).await;
    for (tag, material) in [
        ("mtls", tls.clone()),
        (
            "ca",
            BrokerTls {
                ca_pem: tls.ca_pem.clone(),
                ..Default::default()
            },
        ),
    ] {
        let q = names(tag);
        b.declare_primary(&q.primary).await;
        let m = Messaging::with_tls(&url, tag, &env::management(), Some(&material)).unwrap();
        m.ensure_replay_topology(&q).await.unwrap();
        b.publish(&q.exchange, "", 1).await;
        let deadline = Instant::now() + SETTLE;
        while m.queue_depth(&q.replay).await.unwrap() != Some(1) {
            assert!(
                Instant::now() < deadline,
                "{tag}: the replay queue never got the message"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = m.queue_state(&q.primary).await.unwrap().unwrap();
        assert_eq!(state.ready, 1, "{tag}");
        m.send_control(&q.control, &ControlMessage::start_replay(&q.replay))
            .await
            .unwrap();
        assert_eq!(m.queue_depth(&q.control).await.unwrap(), Some(1), "{tag}");
        m.delete_replay(&q).await.unwrap();
        b.ch.queue_delete(QueueDeleteArguments::new(&q.control))
            .await
            .unwrap();
        b.ch.queue_delete(QueueDeleteArguments::new(&q.primary))
            .await
            .unwrap();
        b.ch.exchange_delete(ExchangeDeleteArguments::new(&q.exchange))
            .await
            .unwrap();
    }

    // A CA that did not sign the broker's certificate.
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=someone-else",
        ])
        .current_dir(other.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let foreign = BrokerTls::from_dir(other.path()).unwrap();
    let m = Messaging::with_tls(&url, "foreign", &env::management(), Some(&foreign)).unwrap();
    let err = m.queue_depth("anything").await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // TLS material for a plain URL is a configuration mistake, refused up front.
    let err = Messaging::with_tls(&env::amqp_url(), "plain", &env::management(), Some(&tls))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not amqps://"), "{err}");
    let _ = b.conn.close().await;
}
