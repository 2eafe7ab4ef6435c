//! The two-node harness itself: pods on both nodes get distinct addresses, reach the
//! shared broker through the cluster's services address (a real AMQP exchange of
//! frames from inside each pod netns), and everything is gone after drop.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ms2m_tests::e2e::{amqp_port, amqp_url_at, sample_binaries};
use ms2m_tests::env::{amqp_url, require_root, unique};
use ms2m_tests::nodes::{Cluster, NodeId};
use ms2m_tests::process::{run, stdout};

#[test]
fn pods_on_both_nodes_reach_the_broker_and_teardown_leaves_nothing() {
    require_root();
    let amqp = amqp_url();
    let control = sample_binaries().control;
    let cluster = Cluster::new();
    let port = amqp_port(&amqp);
    let relay = cluster.forward(port, port);
    let pod_url = amqp_url_at(&amqp, relay);
    let pod_a = cluster.pod(NodeId::A, "a");
    let pod_b = cluster.pod(NodeId::B, "b");
    assert_ne!(pod_a.addr(), pod_b.addr());
    assert_ne!(
        cluster.node(NodeId::A).addr(),
        cluster.node(NodeId::B).addr()
    );

    let names: Vec<String> = [pod_a.netns_path(), pod_b.netns_path()]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .chain([
            cluster.node(NodeId::A).netns().name().to_string(),
            cluster.node(NodeId::B).netns().name().to_string(),
        ])
        .collect();

    for pod in [&pod_a, &pod_b] {
        // The pod's only way out is its node: its own address on eth0, default via node.
        let addrs = stdout(
            pod.command("ip")
                .args(["-4", "-o", "addr", "show", "dev", "eth0"]),
        );
        assert!(addrs.contains(&pod.addr().to_string()), "{addrs}");
        let q = unique("harness-");
        let out = stdout(pod.command(control.to_str().unwrap()).args([
            "--amqp-url",
            &pod_url,
            "prepare-replay",
            "--exchange",
            &q,
            "--queue",
            &q,
        ]));
        assert_eq!(
            out,
            format!("{q}.ms2m-replay"),
            "AMQP from pod {} through {relay}",
            pod.name()
        );
        run(Command::new(&control).args(["--amqp-url", &amqp, "delete-queue", "--queue", &out]));
        run(Command::new(&control).args([
            "--amqp-url",
            &amqp,
            "delete-exchange",
            "--exchange",
            &q,
        ]));
    }

    drop(pod_a);
    drop(pod_b);
    drop(cluster);
    for name in &names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "netns {name} left behind"
        );
    }
    assert!(
        TcpStream::connect_timeout(&relay, Duration::from_millis(500)).is_err(),
        "relay {relay} still answers after drop"
    );
}
