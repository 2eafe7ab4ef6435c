//! transferMode Direct through the controller's cluster backends, on real agents except
//! for the API server: node-a's agent streams a checkpoint to node-b's, which imports it
//! into its node's image store (a private containers-storage, checked with skopeo); the
//! rollback removes the image; a target whose store tool is broken fails the job and the
//! backends report it as failed.
//!
//! The backends find each agent through the (mocked) API's pod list and reach it at
//! `<pod IP>:<one port>`, as they do a DaemonSet's pods: the two agents listen on the
//! same port on two loopback addresses.

mod agent_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use agent_common::{Agent, AgentOptions};
use http::{Method, StatusCode};
use ms2m_agent::config::Overrides;
use ms2m_agent::image_store::StoreKind;
use ms2m_shim::controller::fixtures::{ApiServerVerifier, mock_client, secret};
use ms2m_shim::controller::{AgentDiscovery, Backends, ClusterBackends, MigrationRef};
use ms2m_shim::crd::{MessageQueueConfig, StatefulMigrationSpec};
use ms2m_shim::driver::WorldError;
use ms2m_shim::engine::{JobView, QueueNames, ReplayMode, TransferMode};
use ms2m_tests::env;
use ms2m_tests::image_store::PrivateStorage;
use ms2m_tests::transfer::synthetic_checkpoint;
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/ms2m-system/pods";
const TOKEN_SECRET: &str = "/api/v1/namespaces/ms2m-system/secrets/ms2m-agent-token";
const CRIO_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
const SOURCE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const TARGET_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn node_ip(node: &str) -> Ipv4Addr {
    match node {
        "node-a" => SOURCE_IP,
        "node-b" => TARGET_IP,
        _ => panic!("no agent on {node} in this test"),
    }
}

/// Two agents with TCP listeners on one port: node-a's on 127.0.0.1, node-b's (with
/// `target` settings) on 127.0.0.2.
fn two_nodes(target: Overrides) -> (Agent, Agent, u16) {
    let source = Agent::start(AgentOptions {
        tcp: true,
        ..Default::default()
    });
    let port = source.tcp.expect("node-a's TCP listener").port();
    let target = Agent::start(AgentOptions {
        tcp_addr: Some(SocketAddr::new(IpAddr::V4(TARGET_IP), port)),
        overrides: target,
        ..Default::default()
    });
    (source, target, port)
}

fn storage_overrides(storage: &PrivateStorage) -> Overrides {
    Overrides {
        image_store: Some(StoreKind::ContainersStorage),
        containers_storage: Some(storage.spec.clone()),
        ..Default::default()
    }
}

fn migration() -> MigrationRef {
    let spec = StatefulMigrationSpec {
        source_pod: "counter-0".into(),
        container_name: None,
        target_node: Some("node-b".into()),
        checkpoint_image_repository: "localhost/ms2m/default/mig".into(),
        replay_cutoff_seconds: 60,
        replay_mode: ReplayMode::Cutoff,
        migration_strategy: None,
        identity_swap_mode: Default::default(),
        transfer_mode: TransferMode::Direct,
        phase_timeout_seconds: 300,
        // The broker is not asked here.
        message_queue_config: MessageQueueConfig {
            broker: None,
            broker_url: None,
            management_url: None,
            source_prefetch: None,
            tls_secret_ref: None,
            broker_secret_ref: None,
            queue_name: "q".into(),
            exchange_name: "x".into(),
            routing_key: String::new(),
        },
    };
    MigrationRef {
        namespace: "default".into(),
        name: "mig".into(),
        uid: env::unique("uid-"),
        queues: QueueNames::new("x", "q", "", "counter-0-m1"),
        spec,
    }
}

/// What the backends ask the API server during one call.
#[derive(Clone, Copy)]
enum Lookup {
    /// The agent pod on this node.
    Agent(&'static str),
    /// The token Secret (read once per backends).
    Token,
}

/// The mocked API server, answering as a cluster with one agent pod per node would.
struct Api {
    verifier: Option<ApiServerVerifier>,
    token: String,
}

impl Api {
    /// Runs one backends call while the API server answers exactly `lookups`, in order.
    /// A failed call is reported as itself, not as the lookups it never made.
    async fn during<T>(
        &mut self,
        what: &str,
        lookups: &[Lookup],
        call: impl Future<Output = Result<T, WorldError>>,
    ) -> T {
        let mut api = self.verifier.take().expect("API server in use");
        let (lookups, token) = (lookups.to_vec(), self.token.clone());
        let server = tokio::spawn(async move {
            for l in lookups {
                match l {
                    Lookup::Agent(node) => {
                        let ip = node_ip(node).to_string();
                        let seen = api
                            .expect(
                                Method::GET,
                                PODS,
                                StatusCode::OK,
                                Some(agent_pods(node, &ip)),
                            )
                            .await;
                        assert!(
                            seen.query
                                .contains(&format!("fieldSelector=spec.nodeName%3D{node}")),
                            "looked for the agent on {node}: {}",
                            seen.query
                        );
                    }
                    Lookup::Token => {
                        api.get(
                            TOKEN_SECRET,
                            secret("ms2m-system", "ms2m-agent-token", "token", &token),
                        )
                        .await;
                    }
                }
            }
            api
        });
        let out = call
            .await
            .unwrap_or_else(|e| panic!("{what}: {} (permanent: {})", e.message, e.permanent));
        self.verifier = Some(
            server
                .await
                .unwrap_or_else(|e| panic!("{what}: the API server saw other requests: {e}")),
        );
        out
    }

    async fn done(mut self) {
        self.verifier.take().unwrap().done().await;
    }
}

fn agent_pods(node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
        "items": [{"metadata": {"name": format!("ms2m-agent-{node}"), "namespace": "ms2m-system",
            "labels": {"app.kubernetes.io/name": "ms2m-agent"}},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "ms2m-agent"}]},
            "status": {"phase": "Running", "podIP": ip}}]})
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn backends(port: u16) -> (ClusterBackends, Api, String) {
    let (client, verifier) = mock_client();
    let b = ClusterBackends::new(
        client,
        AgentDiscovery {
            port,
            ..AgentDiscovery::default()
        },
    );
    // Every agent of this process has the same token (agent_common), as from one Secret.
    let token = format!("test-token-{}", std::process::id());
    (
        b,
        Api {
            verifier: Some(verifier),
            token: token.clone(),
        },
        token,
    )
}

/// Starts a Direct send of `checkpoint_id` from node-a to node-b and polls it as the
/// controller does until it ends; returns the job id and how it ended.
async fn send(
    b: &ClusterBackends,
    api: &mut Api,
    m: &MigrationRef,
    checkpoint_id: &str,
    reference: &str,
    first: bool,
) -> (String, JobView) {
    // The target first (its stale checkpoint is removed), then the source.
    let lookups: &[Lookup] = if first {
        &[
            Lookup::Agent("node-b"),
            Lookup::Token,
            Lookup::Agent("node-a"),
        ]
    } else {
        &[Lookup::Agent("node-b"), Lookup::Agent("node-a")]
    };
    let job = api
        .during(
            "start_direct_send",
            lookups,
            b.start_direct_send(m, "node-a", "node-b", checkpoint_id, reference),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = api
            .during(
                "direct_send_job",
                &[Lookup::Agent("node-a")],
                b.direct_send_job(m, "node-a", Some(&job)),
            )
            .await;
        match v {
            JobView::Running => {
                assert!(Instant::now() < deadline, "direct send {job} still running");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            v => return (job, v),
        }
    }
}

#[test]
fn direct_send_imports_on_the_target_node_and_the_rollback_removes_the_image() {
    let storage = PrivateStorage::new();
    let (source, target, port) = two_nodes(storage_overrides(&storage));
    synthetic_checkpoint(&source.checkpoints_dir().join("ckpt-1"), "counter", 4 << 20);
    let reference = "localhost/ms2m/default/mig:ckpt-1";
    let m = migration();
    runtime().block_on(async {
        let (b, mut api, token) = backends(port);
        assert_eq!(token, source.token);

        let (job, view) = send(&b, &mut api, &m, "ckpt-1", reference, true).await;
        assert!(
            matches!(&view, JobView::Succeeded { output, finished_at: Some(_) } if output == reference),
            "{view:?}"
        );
        // The source agent's own record of the job: sent to node-b's address, imported there.
        let j = source.wait_job(&job);
        assert_eq!(j["kind"], "direct_send", "{j}");
        let imported = &j["result"]["received"]["imported"];
        assert_eq!(imported["reference"], reference, "{j}");
        assert_eq!(imported["store"], "containers-storage", "{j}");
        let recv = target
            .call("GET", "/v1/jobs?kind=direct_receive", None)
            .json();
        assert_eq!(recv["jobs"][0]["status"], "succeeded", "{recv}");
        assert_eq!(recv["jobs"][0]["result"]["checkpoint_id"], "ckpt-1");
        assert!(
            target
                .checkpoints_dir()
                .join("ckpt-1/checkpoint/pages-1.img")
                .is_file()
        );

        // node-b's store holds it as a CRI-O checkpoint image.
        let inspected = storage
            .inspect(reference, false)
            .unwrap_or_else(|| panic!("{reference} not in node-b's store"));
        assert_eq!(
            inspected["Digest"], imported["manifest_digest"],
            "{inspected}"
        );
        let manifest = storage.inspect(reference, true).unwrap();
        assert_eq!(manifest["annotations"][CRIO_NAME], "counter", "{manifest}");
        assert_eq!(storage.image_ids().len(), 1, "{:?}", storage.image_ids());

        // Rollback: removed, and removing again is fine.
        for _ in 0..2 {
            api.during(
                "delete_image",
                &[Lookup::Agent("node-b")],
                b.delete_image(&m, "node-b", reference),
            )
            .await;
            assert!(storage.inspect(reference, false).is_none());
            assert!(storage.image_ids().is_empty(), "{:?}", storage.image_ids());
        }

        // A send repeated (a source agent that forgot the first one) goes through although
        // node-b still holds the first one's checkpoint.
        let (_, view) = send(&b, &mut api, &m, "ckpt-1", reference, false).await;
        assert!(
            matches!(&view, JobView::Succeeded { output, finished_at: Some(_) } if output == reference),
            "{view:?}"
        );
        assert!(storage.inspect(reference, false).is_some());
        api.during(
            "delete_image",
            &[Lookup::Agent("node-b")],
            b.delete_image(&m, "node-b", reference),
        )
        .await;
        assert!(storage.inspect(reference, false).is_none());

        // Once the migration is over, both copies of the checkpoint go; twice is fine.
        for _ in 0..2 {
            for node in ["node-a", "node-b"] {
                api.during(
                    "delete_checkpoint",
                    &[Lookup::Agent(node)],
                    b.delete_checkpoint(&m, node, "ckpt-1"),
                )
                .await;
            }
            assert!(!source.checkpoints_dir().join("ckpt-1").exists());
            assert!(!target.checkpoints_dir().join("ckpt-1").exists());
        }
        api.done().await;
    });
}

#[test]
fn a_target_whose_image_store_fails_fails_the_direct_send() {
    let storage = PrivateStorage::new();
    let (source, target, port) = two_nodes(Overrides {
        skopeo_path: Some("/nonexistent/skopeo".into()),
        ..storage_overrides(&storage)
    });
    synthetic_checkpoint(&source.checkpoints_dir().join("ckpt-1"), "counter", 1 << 20);
    let reference = "localhost/ms2m/default/mig:ckpt-1";
    let m = migration();
    runtime().block_on(async {
        let (b, mut api, _) = backends(port);
        let (job, view) = send(&b, &mut api, &m, "ckpt-1", reference, true).await;
        let JobView::Failed { reason } = view else {
            panic!("the send should have failed: {view:?}");
        };
        assert!(reason.contains("image_store_error"), "{reason}");
        assert!(reason.contains("/nonexistent/skopeo"), "{reason}");
        assert!(reason.contains(reference), "{reason}");
        // Sent where the backends found node-b's agent.
        assert!(reason.contains(&format!("{TARGET_IP}:{port}")), "{reason}");
        let j = source.wait_job(&job);
        assert_eq!(j["status"], "failed", "{j}");
        let recv = target
            .call("GET", "/v1/jobs?kind=direct_receive", None)
            .json();
        assert_eq!(
            recv["jobs"][0]["error"]["code"], "image_store_error",
            "{recv}"
        );
        assert!(storage.image_ids().is_empty(), "{:?}", storage.image_ids());
        api.done().await;
    });
}
