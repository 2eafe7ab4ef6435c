//! The controller's way to the agents and the broker, on real parts except the API
//! server: the agent pod on a node is found through the (mocked) API by label and node,
//! the token comes from a (mocked) Secret and is checked by a real agent on TCP, and the
//! broker URL from a `brokerSecretRef` reaches the real RabbitMQ.

mod agent_common;

use agent_common::{Agent, AgentOptions};
use http::{Method, StatusCode};
use ms2m_shim::controller::fixtures::{mock_client, secret};
use ms2m_shim::controller::{AgentDiscovery, Backends, ClusterBackends, MigrationRef};
use ms2m_shim::crd::{MessageQueueConfig, SecretKeyRef, StatefulMigrationSpec};
use ms2m_shim::engine::{JobView, QueueNames, ReplayMode, TransferMode};
use ms2m_tests::env;
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/ms2m-system/pods";
const TOKEN_SECRET: &str = "/api/v1/namespaces/ms2m-system/secrets/ms2m-agent-token";

fn agent_pods(ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
        "items": [{"metadata": {"name": "ms2m-agent-x1", "namespace": "ms2m-system",
            "labels": {"app.kubernetes.io/name": "ms2m-agent"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "agent", "image": "ms2m-agent"}]},
            "status": {"phase": "Running", "podIP": ip}}]})
}

fn migration(queue: &str, exchange: &str) -> MigrationRef {
    let spec = StatefulMigrationSpec {
        source_pod: "counter-0".into(),
        container_name: None,
        target_node: Some("node-b".into()),
        checkpoint_image_repository: "registry:5000/x".into(),
        replay_cutoff_seconds: 60,
        replay_mode: ReplayMode::Cutoff,
        migration_strategy: None,
        identity_swap_mode: Default::default(),
        transfer_mode: TransferMode::Registry,
        phase_timeout_seconds: 300,
        message_queue_config: MessageQueueConfig {
            broker: None,
            broker_url: None,
            management_url: env::management().url,
            source_prefetch: None,
            tls_secret_ref: None,
            broker_secret_ref: Some(SecretKeyRef {
                name: "rabbit".into(),
                key: "url".into(),
            }),
            queue_name: queue.into(),
            exchange_name: exchange.into(),
            routing_key: String::new(),
        },
    };
    MigrationRef {
        namespace: "default".into(),
        name: "mig".into(),
        uid: env::unique("uid-"),
        queues: QueueNames::new(exchange, queue, "", "counter-0-m1"),
        spec,
    }
}

#[test]
fn agents_are_found_by_node_and_reached_with_the_token_from_the_secret() {
    let amqp = env::amqp_url();
    let agent = Agent::start(AgentOptions {
        tcp: true,
        ..Default::default()
    });
    let port = agent.tcp.expect("agent TCP listener").port();
    let token = agent.token.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = env::unique("shim-cb-");
    let (queue, exchange) = (format!("{base}.q"), format!("{base}.x"));
    let m = migration(&queue, &exchange);
    rt.block_on(async {
        let (client, mut api) = mock_client();
        let discovery = AgentDiscovery {
            port,
            ..AgentDiscovery::default()
        };
        let backends = ClusterBackends::new(client, discovery);
        let amqp2 = amqp.clone();
        let scenario = tokio::spawn(async move {
            // 1: find the agent on node-a; the token Secret is read once.
            let seen = api
                .expect(
                    Method::GET,
                    PODS,
                    StatusCode::OK,
                    Some(agent_pods("127.0.0.1")),
                )
                .await;
            assert!(
                seen.query
                    .contains("labelSelector=app.kubernetes.io%2Fname%3Dms2m-agent"),
                "{}",
                seen.query
            );
            assert!(
                seen.query.contains("fieldSelector=spec.nodeName%3Dnode-a"),
                "{}",
                seen.query
            );
            api.get(
                TOKEN_SECRET,
                secret("ms2m-system", "ms2m-agent-token", "token", &token),
            )
            .await;
            // 2: again, token cached.
            api.expect(
                Method::GET,
                PODS,
                StatusCode::OK,
                Some(agent_pods("127.0.0.1")),
            )
            .await;
            // 3: the broker URL from the migration's Secret.
            api.get(
                "/api/v1/namespaces/default/secrets/rabbit",
                secret("default", "rabbit", "url", &format!("{amqp2}\n")),
            )
            .await;
            // 4: a node without an agent pod.
            api.expect(
                Method::GET,
                PODS,
                StatusCode::OK,
                Some(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
            )
            .await;
            api.done().await;
        });

        // A checkpoint the agent doesn't have and no job: still being made.
        let v = backends
            .checkpoint_job(&m, "node-a", None, "no-such-checkpoint")
            .await
            .expect("the agent answered with the Secret's token");
        assert_eq!(v, JobView::Running);
        // A job the agent doesn't know (it restarted): start again.
        let v = backends
            .push_job(&m, "node-a", Some("job-unknown"))
            .await
            .unwrap();
        assert_eq!(v, JobView::NotStarted);
        // The broker, through the Secret's URL (trailing newline trimmed).
        let declare = async {
            let c = amqprs::connection::Connection::open(
                &ms2m_shim::messaging::connection_args(&amqp).unwrap(),
            )
            .await
            .unwrap();
            let ch = c.open_channel(None).await.unwrap();
            ch.queue_declare(amqprs::channel::QueueDeclareArguments::durable_client_named(&queue))
                .await
                .unwrap();
            (c, ch)
        };
        let (c, ch) = declare.await;
        backends.ensure_replay_topology(&m).await.unwrap();
        assert_eq!(
            backends
                .queue_state(&m, &m.queues.replay)
                .await
                .unwrap()
                .map(|q| q.ready),
            Some(0)
        );
        backends.delete_replay(&m).await.unwrap();
        assert_eq!(
            backends.queue_state(&m, &m.queues.replay).await.unwrap(),
            None
        );
        let err = backends
            .checkpoint_job(&m, "node-c", None, "x")
            .await
            .expect_err("no agent on node-c");
        assert!(
            err.message
                .contains("no ready ms2m-agent pod on node node-c"),
            "{}",
            err.message
        );
        assert!(!err.permanent, "an agent pod may still come up");
        tokio::time::timeout(std::time::Duration::from_secs(10), scenario)
            .await
            .unwrap()
            .unwrap();
        backends.forget(&m).await;
        let _ = ch
            .queue_delete(amqprs::channel::QueueDeleteArguments::new(&queue))
            .await;
        let _ = ch.close().await;
        let _ = c.close().await;
    });
}

#[test]
fn a_wrong_token_is_refused_by_the_agent_and_is_permanent() {
    let agent = Agent::start(AgentOptions {
        tcp: true,
        ..Default::default()
    });
    let port = agent.tcp.unwrap().port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, mut api) = mock_client();
        let backends = ClusterBackends::new(
            client,
            AgentDiscovery {
                port,
                ..AgentDiscovery::default()
            },
        );
        let scenario = tokio::spawn(async move {
            api.expect(
                Method::GET,
                PODS,
                StatusCode::OK,
                Some(agent_pods("127.0.0.1")),
            )
            .await;
            api.get(
                TOKEN_SECRET,
                secret("ms2m-system", "ms2m-agent-token", "token", "not-the-token"),
            )
            .await;
            api.done().await;
        });
        let m = migration("q", "x");
        let err = backends
            .checkpoint_job(&m, "node-a", None, "c")
            .await
            .expect_err("a wrong token is refused");
        assert!(err.message.contains("401"), "{}", err.message);
        assert!(err.permanent);
        scenario.await.unwrap();
    });
}
