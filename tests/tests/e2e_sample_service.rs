//! The reference service and the two-node harness on real parts: the consumer runs
//! as a runc container in a pod netns on nodeA, the producer publishes from the host,
//! and the migration is done by hand — what the shim automates: bind the replay
//! queue, `runc checkpoint --leave-running --tcp-established` (CRIU 4.2), restore
//! under a new id into a pod netns on nodeB, START_REPLAY, stop the source,
//! END_REPLAY, delete the replay queue. The final state must equal the state computed
//! from everything produced: nothing lost, nothing applied twice.

use std::process::Command;
use std::time::{Duration, Instant};

use ms2m_tests::container::Container;
use ms2m_tests::e2e::{
    Broker, ConsumerSpec, Producer, QueueCleanup, amqp_port, amqp_url_at, consumer_bundle,
    criu_tcp_close, dir_size, get_state, restore_with_log, sample_binaries, u64_of, wait_state,
};
use ms2m_tests::env::{amqp_url, criu, require_root, tool, unique};
use ms2m_tests::nodes::{Cluster, NodeId};
use ms2m_tests::process::run;

const HTTP_PORT: u16 = 8080;
const RATE: f64 = 10.0;
const TOTAL: u64 = 300;

#[test]
fn consumer_migrates_between_nodes_by_hand_without_loss_or_double_application() {
    require_root();
    let amqp = amqp_url();
    let criu = criu();
    tool("runc", "runc");
    tool("iptables-restore", "iptables");
    let _ = sample_binaries();

    let cluster = Cluster::new();
    let port = amqp_port(&amqp);
    let pod_amqp = amqp_url_at(&amqp, cluster.forward(port, port));
    let name = unique("e2e-sample-");
    let (exchange, queue) = (name.clone(), name.clone());
    let (pod_a_name, pod_b_name) = (format!("{name}-a"), format!("{name}-b"));
    let broker = Broker {
        amqp_url: amqp.clone(),
    };
    let replay = format!("{queue}.ms2m-replay");
    let _cleanup = QueueCleanup {
        broker: Broker {
            amqp_url: amqp.clone(),
        },
        queues: vec![
            queue.clone(),
            replay.clone(),
            format!("ms2m.control.{pod_a_name}"),
            format!("ms2m.control.{pod_b_name}"),
        ],
        exchanges: vec![exchange.clone()],
    };
    let tmp = tempfile::tempdir().unwrap();

    // Source pod on nodeA.
    let pod_a = cluster.pod(NodeId::A, "src");
    let spec_a = ConsumerSpec {
        pod: pod_a_name.clone(),
        amqp_url: pod_amqp.clone(),
        exchange: exchange.clone(),
        queue: queue.clone(),
        delay_ms: 50,
        ballast_mib: 16,
        http_port: HTTP_PORT,
        behaviour: Default::default(),
    };
    let bundle_a = consumer_bundle(&tmp.path().join("a"), &spec_a, &pod_a.netns_path());
    let source = Container::run(&bundle_a, &unique("ms2m-e2e-a-"));
    let a0 = wait_state(
        pod_a.addr(),
        HTTP_PORT,
        Duration::from_secs(30),
        "the source to connect",
        |v| u64_of(v, "connections") >= 1,
    );
    assert_eq!(
        a0["pod"],
        pod_a_name.as_str(),
        "pod name comes from the bind-mounted /etc/hostname"
    );

    let producer = Producer::start(&amqp, &exchange, &queue, RATE, TOTAL);
    wait_state(
        pod_a.addr(),
        HTTP_PORT,
        Duration::from_secs(30),
        "30 messages applied by the source",
        |v| u64_of(v, "count") >= 30,
    );

    // Checkpointing: from the binding on, every message also lands in the replay queue.
    assert_eq!(broker.prepare_replay(&exchange, &queue), replay);
    broker.wait_pre_binding_backlog_applied(&queue, &replay);
    let images = tmp.path().join("images");
    let t = Instant::now();
    run(Command::new("runc")
        .arg("--criu")
        .arg(&criu)
        .args([
            "checkpoint",
            "--leave-running",
            "--tcp-established",
            "--image-path",
        ])
        .arg(&images)
        .arg("--work-path")
        .arg(tmp.path().join("work-dump"))
        .arg(source.id()));
    let dump_time = t.elapsed();
    let image_bytes = dir_size(&images);
    let at_dump = get_state(pod_a.addr(), HTTP_PORT).expect("source answers after the checkpoint");
    assert_eq!(
        source.status().as_deref(),
        Some("running"),
        "--leave-running keeps the source"
    );
    // ShadowPod: the source keeps applying while the target is restored.
    wait_state(
        pod_a.addr(),
        HTTP_PORT,
        Duration::from_secs(30),
        "the source to keep applying",
        |v| u64_of(v, "count") >= u64_of(&at_dump, "count") + 5,
    );

    // Restoring: new id, pod netns on nodeB (new IP), new /etc/hostname.
    let pod_b = cluster.pod(NodeId::B, "dst");
    let spec_b = ConsumerSpec {
        pod: pod_b_name.clone(),
        ..spec_a.clone()
    };
    let bundle_b = consumer_bundle(&tmp.path().join("b"), &spec_b, &pod_b.netns_path());
    criu_tcp_close(&bundle_b);
    let t = Instant::now();
    let target = restore_with_log(
        &bundle_b,
        &unique("ms2m-e2e-b-"),
        &images,
        &tmp.path().join("work-restore"),
        &["--tcp-established"],
    );
    let restore_time = t.elapsed();
    let b0 = wait_state(
        pod_b.addr(),
        HTTP_PORT,
        Duration::from_secs(30),
        "the target to notice the restore",
        |v| {
            v["mode"] == "awaiting_replay"
                && v["pod"] == pod_b_name.as_str()
                && u64_of(v, "connections") >= 1
        },
    );
    assert_eq!(u64_of(&b0, "restores"), 1, "{b0}");
    assert_eq!(
        b0["ballast_checksum"], a0["ballast_checksum"],
        "the ballast came along"
    );
    assert!(
        u64_of(&b0, "last_seq") <= u64_of(&at_dump, "last_seq") + 1,
        "the target holds the checkpoint's state (at most the in-flight message on top): {b0} vs {at_dump}"
    );
    // Waiting for START_REPLAY means consuming nothing: the primary queue keeps
    // flowing to the source meanwhile.
    let a_before = u64_of(&get_state(pod_a.addr(), HTTP_PORT).unwrap(), "last_seq");
    wait_state(
        pod_a.addr(),
        HTTP_PORT,
        Duration::from_secs(30),
        "the source to apply 5 more",
        |v| u64_of(v, "last_seq") >= a_before + 5,
    );
    let b_idle = get_state(pod_b.addr(), HTTP_PORT).unwrap();
    assert_eq!(
        b_idle["last_seq"], b0["last_seq"],
        "the target consumed before START_REPLAY: {b_idle}"
    );
    assert_eq!(b_idle["mode"], "awaiting_replay");

    // Replaying: the target catches up from the replay queue.
    broker.start_replay(&pod_b_name, &replay);
    wait_state(
        pod_b.addr(),
        HTTP_PORT,
        Duration::from_secs(60),
        "the target to catch up with the source",
        |b| {
            let a = get_state(pod_a.addr(), HTTP_PORT)
                .map(|a| u64_of(&a, "last_seq"))
                .unwrap_or(u64::MAX);
            b["mode"] == "replaying" && u64_of(b, "last_seq") >= a
        },
    );

    // Finalizing: stop the source, let the target finish the replay queue, switch it
    // to the primary queue, drop the replay queue.
    let a_last = get_state(pod_a.addr(), HTTP_PORT).expect("source state");
    drop(source);
    broker.end_replay(&pod_b_name);
    wait_state(
        pod_b.addr(),
        HTTP_PORT,
        Duration::from_secs(60),
        "the target back on the primary queue",
        |v| v["mode"] == "primary",
    );
    broker.delete_queue(&replay);

    let produced = producer.finish();
    let total = produced["produced"].as_u64().unwrap();
    assert_eq!(total, TOTAL);
    assert_eq!(produced["confirmed"].as_u64(), Some(TOTAL), "{produced}");
    let fin = wait_state(
        pod_b.addr(),
        HTTP_PORT,
        Duration::from_secs(120),
        "the target to apply the last message",
        |v| u64_of(v, "last_seq") >= total,
    );
    assert_eq!(broker.depth(&queue), 0, "primary queue drained");

    // Exactly once: count and checksum equal those of 1..=TOTAL.
    assert_eq!(u64_of(&fin, "count"), total, "{fin}");
    assert_eq!(
        fin["sum"].as_i64(),
        produced["sum"].as_i64(),
        "sum differs: {fin} vs {produced}"
    );
    assert_eq!(u64_of(&fin, "gaps"), 0, "{fin}");
    assert_eq!(u64_of(&fin, "missing"), 0, "{fin}");
    assert_eq!(fin["pod"], pod_b_name.as_str());
    assert_eq!(target.status().as_deref(), Some("running"));

    eprintln!(
        "e2e_sample_service: checkpoint {:?} ({} bytes of images), restore {:?}, source last_seq {} at stop, \
         target skipped {} duplicates, {} applied unacked after restore",
        dump_time,
        image_bytes,
        restore_time,
        a_last["last_seq"],
        fin["skipped_duplicates"],
        fin["applied_unacked_after_restore"],
    );
}
