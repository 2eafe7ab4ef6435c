//! The shim's NATS JetStream side against a real nats-server (JetStream, file storage):
//! whole hand-overs driven through the `Broker` trait in the engine's order
//! (docs/migration-protocol.md, "NATS JetStream"), with a producer that never pauses,
//! a source consuming the primary durable consumer and a target that follows the
//! control protocol on `ms2m.control.<target>`. Every message is accounted for.
//!
//! The checkpoint here is a copy of the source's applied state taken under the lock it
//! applies under (what a freeze captures); the CRIU side of a migration is covered by
//! the RabbitMQ end-to-end tests, which this broker does not change.
//!
//! - Cutoff, primary `max_ack_pending` 50, a target that applies every delivery
//!   (no deduplication): 0 lost, and the messages applied twice are exactly the
//!   checkpoint's messages at or after the replay start (the residual set the doc bounds).
//! - Drain, primary `max_ack_pending` 20000 and a source slower than the producer, so
//!   it holds hundreds of unacknowledged deliveries at the freeze: 0 lost, same exact
//!   residual.
//! - A nats-server restart mid-replay (a private server through scripts/services.sh,
//!   same store dir): streams, consumers and messages survive; 0 lost, and a
//!   deduplicating target applies nothing twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context, consumer, stream};
use futures::StreamExt;
use ms2m_shim::engine::QueueNames;
use ms2m_shim::messaging::nats::{NatsMessaging, control_stream_config, jetstream_name};
use ms2m_shim::messaging::{Broker, ControlMessage, QueueState};
use ms2m_tests::env;
use tokio::task::JoinHandle;

/// Generous bound for a condition the protocol waits for.
const SETTLE: Duration = Duration::from_secs(40);

type Applied = Arc<Mutex<Vec<u64>>>;

async fn connect(url: &str) -> Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("nats-server not reachable at {url}: {e}"));
    jetstream::new(client)
}

/// The service's stream and primary durable push consumer, as the service creates them.
async fn setup(js: &Context, tag: &str, max_ack_pending: i64) -> (QueueNames, String) {
    let stream_name = format!("ORDERS_{tag}");
    let subject = format!("orders.{tag}");
    let s = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream created");
    let primary = format!("orders-{tag}");
    s.create_consumer(consumer::push::Config {
        durable_name: Some(primary.clone()),
        deliver_subject: format!("deliver.{tag}"),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(5),
        max_ack_pending,
        filter_subject: subject.clone(),
        ..Default::default()
    })
    .await
    .expect("primary consumer created");
    (
        QueueNames::new(&stream_name, &primary, "", &format!("target-{tag}")),
        subject,
    )
}

/// Publishes 1, 2, 3, ... until stopped; a publish whose acknowledgement was lost (a
/// server restart) is sent again under the same `Nats-Msg-Id`, which the server
/// deduplicates. `latest` follows the last sequence number stored; returns it.
fn producer(
    js: Context,
    subject: String,
    stop: Arc<AtomicBool>,
    latest: Arc<AtomicU64>,
    pace: Duration,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            loop {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", seq.to_string().as_str());
                let stored = match js
                    .publish_with_headers(subject.clone(), h, seq.to_string().into())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    latest.store(seq, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(pace).await;
        }
        seq
    })
}

fn seq_of(m: &jetstream::Message) -> u64 {
    std::str::from_utf8(&m.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a sequence number body")
}

/// Applies (under the state lock), then acknowledges: what every consumer of A1 does.
/// With `dedup`, a sequence number at or below the last applied one is skipped.
async fn apply(state: &Applied, m: &jetstream::Message, delay: Duration, dedup: bool) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let seq = seq_of(m);
    {
        let mut s = state.lock().unwrap();
        if !(dedup && s.last().is_some_and(|&l| seq <= l)) {
            s.push(seq);
        }
    }
    let _ = m.ack().await;
}

/// The source: consumes the primary consumer until aborted (its subscription and
/// connection go with the task).
fn source(
    url: String,
    stream_name: String,
    primary: String,
    state: Applied,
    delay: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let js = connect(&url).await;
        let s = js.get_stream(&stream_name).await.unwrap();
        let c = s
            .get_consumer::<consumer::push::Config>(&primary)
            .await
            .unwrap();
        let mut msgs = c.messages().await.unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            apply(&state, &m, delay, false).await;
        }
    })
}

/// The target: restored with `state`, it listens on its control subject only until
/// `START_REPLAY`, consumes the consumer named there until `END_REPLAY` (then leaves
/// it at once, whatever it had received but not processed), and consumes the primary
/// consumer once it exists again.
fn target(
    url: String,
    q: QueueNames,
    state: Applied,
    delay: Duration,
    dedup: bool,
    left_replay: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let js = connect(&url).await;
        let control = js
            .get_or_create_stream(control_stream_config())
            .await
            .unwrap();
        let name = jetstream_name(&q.control);
        let ctl = control
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: q.control.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut ctl = ctl.messages().await.unwrap();
        let next_control = async |ctl: &mut consumer::pull::Stream| {
            let m = ctl
                .next()
                .await
                .expect("control stream open")
                .expect("control message");
            let _ = m.ack().await;
            serde_json::from_slice::<ControlMessage>(&m.payload).expect("control body")
        };
        let replay = match next_control(&mut ctl).await {
            ControlMessage::StartReplay { payload } => payload.queue,
            other => panic!("expected START_REPLAY first, got {other:?}"),
        };
        let s = js.get_stream(&q.exchange).await.unwrap();
        let r = s
            .get_consumer::<consumer::push::Config>(&replay)
            .await
            .unwrap();
        let mut data = r.messages().await.unwrap();
        loop {
            tokio::select! {
                biased;
                c = next_control(&mut ctl) => {
                    assert_eq!(c, ControlMessage::EndReplay);
                    break;
                }
                m = data.next() => {
                    if let Some(Ok(m)) = m {
                        apply(&state, &m, delay, dedup).await;
                    }
                }
            }
        }
        drop(data);
        left_replay.store(true, Ordering::SeqCst);
        let p = loop {
            match s.get_consumer::<consumer::push::Config>(&q.primary).await {
                Ok(p) => break p,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut data = p.messages().await.unwrap();
        while let Some(m) = data.next().await {
            if let Ok(m) = m {
                apply(&state, &m, delay, dedup).await;
            }
        }
    })
}

async fn wait_for(
    b: &dyn Broker,
    q: &QueueNames,
    queue: &str,
    what: &str,
    ok: impl Fn(Option<QueueState>) -> bool,
) {
    let t = Instant::now();
    loop {
        // A server restart makes a read fail for a while: that is what retries are for.
        if let Ok(s) = b.queue_state(q, queue).await
            && ok(s)
        {
            return;
        }
        assert!(t.elapsed() < SETTLE, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Cutoff,
    Drain,
}

struct Run {
    mode: Mode,
    max_ack_pending: i64,
    source_delay: Duration,
    target_delay: Duration,
    pace: Duration,
    dedup: bool,
}

/// Which sequence numbers `applied` holds how often.
fn counts(applied: &[u64]) -> HashMap<u64, usize> {
    let mut c = HashMap::new();
    for s in applied {
        *c.entry(*s).or_insert(0) += 1;
    }
    c
}

/// One hand-over in the engine's order; `mid_replay` runs while the target replays.
/// Returns (messages published, checkpoint residual, applied twice).
async fn hand_over(
    url: &str,
    tag: &str,
    run: Run,
    mid_replay: impl AsyncFnOnce(),
) -> (u64, usize, usize) {
    let js = connect(url).await;
    let (q, subject) = setup(&js, tag, run.max_ack_pending).await;
    let b: Arc<dyn Broker> = Arc::new(NatsMessaging::new(url, tag).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let latest = Arc::new(AtomicU64::new(0));
    let published = producer(js.clone(), subject, stop.clone(), latest.clone(), run.pace);
    let source_state: Applied = Arc::default();
    let src = source(
        url.to_owned(),
        q.exchange.clone(),
        q.primary.clone(),
        source_state.clone(),
        run.source_delay,
    );
    // Let the source build up a backlog of held deliveries first.
    wait_for(&*b, &q, &q.primary, "the source consumes", |s| {
        s.is_some_and(|s| s.consumers == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 1-2. Replay consumer; the pre-checkpoint check moves it to the latest ack floor.
    b.ensure_replay_topology(&q).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let check = b.pre_binding_backlog(&q, 50).await.unwrap();
    assert!(check.settled, "JetStream never waits before the checkpoint");
    // 3. The freeze: the source's applied state, taken under the lock it applies under.
    let checkpoint = source_state.lock().unwrap().clone();
    let stream = js.get_stream(&q.exchange).await.unwrap();
    let replay_info = stream
        .consumer_info(jetstream_name(&q.replay))
        .await
        .unwrap();
    let consumer::DeliverPolicy::ByStartSequence { start_sequence } =
        replay_info.config.deliver_policy
    else {
        panic!("the replay consumer starts at a stream sequence");
    };
    let primary_info = stream.consumer_info(&q.primary).await.unwrap();
    eprintln!(
        "{tag}: freeze: source applied {} (last {:?}), replay starts at {start_sequence}, \
         primary holds {} unacknowledged",
        checkpoint.len(),
        checkpoint.last(),
        primary_info.num_ack_pending
    );
    // Every message below the replay start is in the checkpoint (it was acknowledged,
    // hence applied, before the freeze): the proof's premise, checked.
    let in_checkpoint = counts(&checkpoint);
    assert!(
        (1..start_sequence).all(|s| in_checkpoint.contains_key(&s)),
        "a message before the replay start is missing from the checkpoint"
    );

    // 4. Transfer and restore take a while: the replay consumer's backlog grows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 5. The target, restored with the checkpoint, gets START_REPLAY.
    let target_state: Applied = Arc::new(Mutex::new(checkpoint.clone()));
    let left = Arc::new(AtomicBool::new(false));
    let tgt = target(
        url.to_owned(),
        q.clone(),
        target_state.clone(),
        run.target_delay,
        run.dedup,
        left.clone(),
    );
    b.send_control(&q.control, &ControlMessage::start_replay(&q.replay))
        .await
        .unwrap();
    wait_for(&*b, &q, &q.replay, "the target consumes", |s| {
        s.is_some_and(|s| s.consumers >= 1)
    })
    .await;
    if let Ok(Some(r)) = b.queue_state(&q, &q.replay).await {
        eprintln!(
            "{tag}: replaying, {} messages still owed to the target",
            r.ready
        );
    }
    mid_replay().await;
    // 6. The source stops once the target consumes: at once (Drain) or caught up (Cutoff).
    match run.mode {
        Mode::Drain => {
            wait_for(&*b, &q, &q.replay, "the target consumes", |s| {
                s.is_some_and(|s| s.consumers >= 1)
            })
            .await
        }
        Mode::Cutoff => {
            wait_for(&*b, &q, &q.replay, "the target catches up", |s| {
                s.is_some_and(|s| s.consumers >= 1 && s.ready == 0)
            })
            .await
        }
    }
    src.abort();
    let _ = src.await;
    // 7. The fence, once the source's subscription is gone.
    wait_for(
        &*b,
        &q,
        &q.primary,
        "the source's subscription closes",
        |s| s.is_none_or(|s| s.consumers == 0),
    )
    .await;
    let withheld = b.fence_primary(&q).await.unwrap();
    eprintln!("{tag}: fence withheld {withheld} messages the primary would have delivered again");
    // 8-9. Caught up alone, the cut-over.
    wait_for(&*b, &q, &q.replay, "the target catches up alone", |s| {
        s.is_some_and(|s| s.consumers >= 1 && s.ready == 0)
    })
    .await;
    b.cut_over(&q).await.unwrap();
    // 10. END_REPLAY; the target leaves the replay consumer; the cut; the replay goes.
    b.send_control(&q.control, &ControlMessage::EndReplay)
        .await
        .unwrap();
    wait_for(
        &*b,
        &q,
        &q.replay,
        "the target leaves the replay consumer",
        |s| s.is_some_and(|s| s.consumers == 0 && s.ready == 0),
    )
    .await;
    assert!(
        left.load(Ordering::SeqCst),
        "unbound only once the target left"
    );
    b.delete_replay(&q).await.unwrap();
    assert!(
        b.queue_state(&q, &q.replay).await.unwrap().is_none(),
        "the replay consumer is gone"
    );
    // The producer keeps going through the cut: some messages reach the target through
    // the re-created primary consumer only.
    let at_cut = latest.load(Ordering::SeqCst);
    let t = Instant::now();
    while latest.load(Ordering::SeqCst) < at_cut + 20 {
        assert!(t.elapsed() < SETTLE, "the producer stalled after the cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let last = published.await.unwrap();

    let t = Instant::now();
    loop {
        if target_state.lock().unwrap().contains(&last) {
            break;
        }
        assert!(
            t.elapsed() < SETTLE,
            "the target never applied message {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a late duplicate, if any, show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tgt.abort();
    let applied = target_state.lock().unwrap().clone();
    let c = counts(&applied);
    let lost: Vec<u64> = (1..=last).filter(|s| !c.contains_key(s)).collect();
    assert!(lost.is_empty(), "{} messages lost: {lost:?}", lost.len());
    let twice: Vec<u64> = {
        let mut v: Vec<u64> = c.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
        v.sort_unstable();
        v
    };
    assert!(c.values().all(|n| *n <= 2), "a message applied three times");
    let residual: Vec<u64> = {
        let mut v: Vec<u64> = checkpoint
            .iter()
            .copied()
            .filter(|s| *s >= start_sequence)
            .collect();
        v.sort_unstable();
        v
    };
    if run.dedup {
        assert!(twice.is_empty(), "applied twice: {twice:?}");
    } else {
        // Exactly the checkpoint's messages the replay delivers again; nothing from the
        // hand-over (fence, cut) itself.
        assert_eq!(
            twice, residual,
            "applied twice beyond the checkpoint residual"
        );
    }
    eprintln!(
        "{tag}: {last} messages, 0 lost, {} applied twice (checkpoint residual {})",
        twice.len(),
        residual.len()
    );
    (last, residual.len(), twice.len())
}

#[tokio::test]
async fn cutoff_hands_over_every_message_once_beyond_the_checkpoint_residual() {
    let url = env::nats_url();
    let tag = env::unique("cut");
    let run = Run {
        mode: Mode::Cutoff,
        max_ack_pending: 50,
        source_delay: Duration::from_millis(1),
        target_delay: Duration::ZERO,
        pace: Duration::from_millis(2),
        dedup: false,
    };
    let (_, residual, twice) = hand_over(&url, &tag, run, async || ()).await;
    assert_eq!(twice, residual);
}

#[tokio::test]
async fn drain_with_a_large_max_ack_pending_loses_nothing_the_source_held() {
    let url = env::nats_url();
    let tag = env::unique("drain");
    let run = Run {
        mode: Mode::Drain,
        max_ack_pending: 20_000,
        // Slower than the producer: hundreds delivered and unacknowledged at the freeze.
        source_delay: Duration::from_millis(10),
        target_delay: Duration::ZERO,
        pace: Duration::from_micros(500),
        dedup: false,
    };
    let (_, residual, twice) = hand_over(&url, &tag, run, async || ()).await;
    assert_eq!(twice, residual);
}

#[tokio::test]
async fn a_server_restart_mid_replay_loses_nothing_on_file_storage() {
    let server = PrivateServer::start();
    let url = server.url();
    let tag = env::unique("restart");
    let run = Run {
        mode: Mode::Cutoff,
        max_ack_pending: 50,
        source_delay: Duration::from_millis(1),
        // A target only a little faster than the producer: the restart hits a replay
        // in progress.
        target_delay: Duration::from_millis(1),
        pace: Duration::from_millis(2),
        dedup: true,
    };
    let restart = async || {
        server.run("nats-stop");
        server.run("nats-start");
    };
    let (_, _, twice) = hand_over(&url, &tag, run, restart).await;
    assert_eq!(twice, 0);
}

/// A nats-server of this test's own (scripts/services.sh with a private run dir and
/// port), so that restarting it disturbs nobody else.
struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
            port,
        };
        s.run("nats-start");
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&self, action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(action)
            .env("MS2M_RUN_DIR", self.dir.path())
            .env("MS2M_NATS_PORT", self.port.to_string())
            .output()
            .unwrap_or_else(|e| panic!("running {script}: {e}"));
        assert!(
            out.status.success(),
            "scripts/services.sh {action} failed (nats-server installed? scripts/setup.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.run("nats-stop");
    }
}
