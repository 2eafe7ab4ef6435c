//! `tcp_established`: a container streaming a counter over an established TCP
//! connection to a server on the host is checkpointed through the agent (stopping it),
//! its node's network namespace is replaced by another one with the same address (as a
//! node reboot or a move that keeps the pod IP), and the agent restores it there: the
//! same connection carries on — one accepted connection, no gap, no repeat.

mod agent_common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use agent_common::{Agent, AgentOptions, copy_tree, eventually};
use ms2m_tests::bundle::Bundle;
use ms2m_tests::container::Container;
use ms2m_tests::env;
use ms2m_tests::netns::Netns;
use serde_json::json;

#[test]
fn established_tcp_connection_survives_checkpoint_and_restore() {
    let agent = Agent::start(AgentOptions::default());
    let work = tempfile::tempdir().unwrap();
    // A test-only /30 of 10.232.0.0/16 (the harness's clusters use 10.231.0.0/16).
    let k = (std::process::id() % 250) as u8;
    let host_addr = format!("10.232.{k}.1");
    let ns_addr = format!("10.232.{k}.2");
    let tag = std::process::id() % 100_000;

    let ns_a = Netns::new(&env::unique("ms2m-tcp-a"));
    ns_a.connect_to_host(&format!("ms2mta{tag}"), &host_addr, &ns_addr, 30);
    let server = TcpListener::bind(format!("{host_addr}:0")).unwrap();
    let port = server.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<u64>>> = Arc::default();
    let accepted = Arc::new(Mutex::new(0u32));
    {
        let (received, accepted) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in server.incoming() {
                let Ok(conn) = conn else { break };
                *accepted.lock().unwrap() += 1;
                let received = received.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { break };
                        if let Ok(n) = line.trim().parse() {
                            received.lock().unwrap().push(n);
                        }
                    }
                });
            }
        });
    }

    let script = format!(
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done | nc {host_addr} {port}"
    );
    let b = Bundle::busybox(&work.path().join("b"), &["sh", "-c", &script]);
    let image = agent.images_dir().join("busybox");
    copy_tree(&b.rootfs(), &image);
    b.use_netns(&ns_a.path());
    let id = env::unique("ms2m-agtcp");
    let source = Container::run(&b, &id);
    eventually(10, "numbers over TCP", || {
        (received.lock().unwrap().len() >= 5).then_some(())
    });

    let ck = agent.run_job(
        "/v1/checkpoints",
        &json!({"backend": "runc", "container_id": id, "checkpoint_id": "tcp-ck",
                "leave_running": false, "tcp_established": true, "rootfs_image": image}),
    );
    assert_eq!(ck["status"], "succeeded", "{ck}");
    drop(source);
    let info = agent.call("GET", "/v1/checkpoints/tcp-ck", None).json();
    let conns = info["tcp_connections"].as_array().unwrap();
    assert!(
        conns
            .iter()
            .any(|c| c["remote"] == format!("{host_addr}:{port}") && c["state"] == "established"),
        "inspect does not show the connection: {info}"
    );
    let before = received.lock().unwrap().len();

    // Replace the node: same address, new namespace and veth.
    drop(ns_a);
    let ns_b = Netns::new(&env::unique("ms2m-tcp-b"));
    ns_b.connect_to_host(&format!("ms2mtb{tag}"), &host_addr, &ns_addr, 30);
    let new_id = env::unique("ms2m-agtcpr");
    let r = agent.run_job(
        "/v1/restores",
        &json!({"checkpoint_id": "tcp-ck", "container_id": new_id, "netns_path": ns_b.path(),
                "tcp_established": true}),
    );
    let _restored = Container::adopt(&new_id);
    assert_eq!(r["status"], "succeeded", "{r}");

    eventually(15, "numbers on the restored connection", || {
        (received.lock().unwrap().len() >= before + 10).then_some(())
    });
    let got = received.lock().unwrap().clone();
    assert_eq!(
        *accepted.lock().unwrap(),
        1,
        "the restored process opened a new connection"
    );
    assert_eq!(got[0], 1);
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "the stream has a gap or a repeat around the migration: {got:?}"
    );
}
