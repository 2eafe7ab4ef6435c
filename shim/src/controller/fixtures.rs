//! Test helpers: an `ApiServerVerifier` over kube's mocked API service (tower-test) that
//! checks each request the controller makes, in order, and answers as the API server
//! would; objects in realistic shapes; and a scripted stand-in for the agents and the
//! broker (those are exercised for real by tests/tests/shim_messaging.rs and the agent's
//! own tests; here only the Kubernetes side is under test).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use super::Context;
use super::api_calls;
use super::backends::{Backends, MigrationRef};
use crate::crd::{StatefulMigration, StatefulMigrationStatus};
use crate::driver::WorldError;
use crate::engine::{JobView, Progress};
use crate::messaging::{ControlMessage, QueueState};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct ApiServerVerifier {
    handle: Handle,
    rv: u64,
}

/// A request as received, for assertions on its body and query.
pub struct Seen {
    pub body: Value,
    pub query: String,
}

impl ApiServerVerifier {
    /// Takes the next request, asserts method and path (and that the call is in the
    /// RBAC table), and answers with `status` and `answer` (`None`: echo the body back
    /// with a new resourceVersion, as a successful write does).
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        answer: Option<Value>,
    ) -> Seen {
        let (req, send) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.handle.next_request(),
        )
        .await
        .unwrap_or_else(|_| panic!("the controller never sent {method} {path}"))
        .expect("service not called");
        assert_eq!(
            (req.method().clone(), req.uri().path().to_owned()),
            (method.clone(), path.to_owned()),
            "unexpected request (query: {:?})",
            req.uri().query()
        );
        assert!(
            api_calls::classify(method.as_str(), path).is_some(),
            "{method} {path} is not in the API call table (deploy/base/rbac.yaml would refuse it)"
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let answer = match answer {
            Some(a) => a,
            None => {
                self.rv += 1;
                let mut echo = body.clone();
                echo["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                echo
            }
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        Seen { body, query }
    }

    /// Takes the next request whatever it is (it must still be in the RBAC table) and
    /// answers with what `answer(method, path, body)` returns (`None`: echo the body as a
    /// successful write). For tests that check outcomes, not the request sequence.
    pub async fn respond(
        &mut self,
        answer: impl FnOnce(&Method, &str, &Value) -> Option<(StatusCode, Value)>,
    ) -> (Method, String, Value) {
        let (req, send) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.handle.next_request(),
        )
        .await
        .expect("the controller sent another request")
        .expect("service not called");
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        assert!(
            api_calls::classify(method.as_str(), &path).is_some(),
            "{method} {path} is not in the API call table"
        );
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (status, answer) = answer(&method, &path, &body).unwrap_or_else(|| {
            self.rv += 1;
            let mut echo = body.clone();
            echo["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            (StatusCode::OK, echo)
        });
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        (method, path, body)
    }

    /// A status write; returns the status the controller wrote.
    pub async fn status_put(&mut self, name: &str) -> StatefulMigrationStatus {
        let seen = self
            .expect(
                Method::PUT,
                &format!("/apis/migration.ms2m.io/v1alpha1/namespaces/default/statefulmigrations/{name}/status"),
                StatusCode::OK,
                None,
            )
            .await;
        serde_json::from_value(seen.body["status"].clone()).expect("a valid status")
    }

    /// An event; returns its reason.
    pub async fn event(&mut self) -> (String, String) {
        let seen = self
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
                StatusCode::CREATED,
                None,
            )
            .await;
        (
            seen.body["reason"].as_str().unwrap_or_default().to_owned(),
            seen.body["note"].as_str().unwrap_or_default().to_owned(),
        )
    }

    pub async fn get(&mut self, path: &str, answer: Value) -> Seen {
        self.expect(Method::GET, path, StatusCode::OK, Some(answer))
            .await
    }

    pub async fn not_found(&mut self, method: Method, path: &str) -> Seen {
        self.expect(
            method,
            path,
            StatusCode::NOT_FOUND,
            Some(status_body(404, "NotFound", "not found")),
        )
        .await
    }

    /// Nothing further may be asked of the API server.
    pub async fn done(mut self) {
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            self.handle.next_request(),
        )
        .await;
        if let Ok(Some((req, _))) = more {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

/// One call to the scripted backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Topology,
    Depth(String),
    Backlog,
    Fence,
    CutOver,
    DeleteReplay,
    Control(String, ControlMessage),
    StartCheckpoint {
        node: String,
        pod: String,
        container: String,
        id: String,
    },
    CheckpointJob(Option<String>),
    StartPush {
        node: String,
        id: String,
        image: String,
    },
    PushJob(Option<String>),
    StartDirectSend {
        node: String,
        target_node: String,
        id: String,
        reference: String,
    },
    DirectSendJob(Option<String>),
    DeleteImage {
        node: String,
        reference: String,
    },
    DeleteCheckpoint {
        node: String,
        id: String,
    },
}

#[derive(Default)]
pub struct ScriptedBackends {
    pub calls: Mutex<Vec<Call>>,
    /// Ready depths of the replay queue, one per observation that asks.
    pub depths: Mutex<VecDeque<Option<u64>>>,
    /// `END_REPLAY` was sent: the target has left the replay queue.
    pub end_replay_sent: Mutex<bool>,
    pub checkpoint_jobs: Mutex<VecDeque<JobView>>,
    pub push_jobs: Mutex<VecDeque<JobView>>,
    pub direct_jobs: Mutex<VecDeque<JobView>>,
    /// Set: `delete_image` fails with this (transient) error.
    pub delete_image_error: Mutex<Option<String>>,
    /// Set: `delete_checkpoint` fails with this (transient) error.
    pub delete_checkpoint_error: Mutex<Option<String>>,
    /// Nodes with an agent, for choosing a target node.
    pub agent_nodes: Mutex<std::collections::BTreeSet<String>>,
}

impl ScriptedBackends {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

#[async_trait::async_trait]
impl Backends for ScriptedBackends {
    async fn ensure_replay_topology(&self, _: &MigrationRef) -> Result<(), WorldError> {
        self.record(Call::Topology);
        Ok(())
    }
    /// The replay queue: a scripted depth, consumed by the target until `END_REPLAY`.
    /// The primary queue: empty and without consumers (not recorded), as once the source
    /// is gone.
    async fn queue_state(
        &self,
        m: &MigrationRef,
        queue: &str,
    ) -> Result<Option<QueueState>, WorldError> {
        if queue != m.queues.replay {
            return Ok(Some(QueueState {
                ready: 0,
                consumers: 0,
            }));
        }
        self.record(Call::Depth(queue.to_owned()));
        let depth = self
            .depths
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted depth");
        let consumers = u32::from(!*self.end_replay_sent.lock().unwrap());
        Ok(depth.map(|ready| QueueState { ready, consumers }))
    }
    async fn pre_binding_backlog_settled(&self, _: &MigrationRef) -> Result<bool, WorldError> {
        self.record(Call::Backlog);
        Ok(true)
    }
    async fn fence_primary(&self, _: &MigrationRef) -> Result<u64, WorldError> {
        self.record(Call::Fence);
        Ok(0)
    }
    async fn cut_over(&self, _: &MigrationRef) -> Result<(), WorldError> {
        self.record(Call::CutOver);
        Ok(())
    }
    async fn delete_replay(&self, _: &MigrationRef) -> Result<(), WorldError> {
        self.record(Call::DeleteReplay);
        Ok(())
    }
    async fn send_control(
        &self,
        _: &MigrationRef,
        q: &str,
        msg: &ControlMessage,
    ) -> Result<(), WorldError> {
        self.record(Call::Control(q.into(), msg.clone()));
        if *msg == ControlMessage::EndReplay {
            *self.end_replay_sent.lock().unwrap() = true;
        }
        Ok(())
    }
    async fn start_checkpoint(
        &self,
        _: &MigrationRef,
        node: &str,
        pod: &str,
        container: &str,
        id: &str,
    ) -> Result<Option<String>, WorldError> {
        self.record(Call::StartCheckpoint {
            node: node.into(),
            pod: pod.into(),
            container: container.into(),
            id: id.into(),
        });
        Ok(Some("job-ckpt-1".into()))
    }
    async fn checkpoint_job(
        &self,
        _: &MigrationRef,
        _: &str,
        job: Option<&str>,
        _: &str,
    ) -> Result<JobView, WorldError> {
        self.record(Call::CheckpointJob(job.map(str::to_owned)));
        Ok(self
            .checkpoint_jobs
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted checkpoint job"))
    }
    async fn start_push(
        &self,
        _: &MigrationRef,
        node: &str,
        id: &str,
        image: &str,
    ) -> Result<String, WorldError> {
        self.record(Call::StartPush {
            node: node.into(),
            id: id.into(),
            image: image.into(),
        });
        Ok("job-push-1".into())
    }
    async fn push_job(
        &self,
        _: &MigrationRef,
        _: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError> {
        self.record(Call::PushJob(job.map(str::to_owned)));
        Ok(self
            .push_jobs
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted push job"))
    }
    async fn start_direct_send(
        &self,
        _: &MigrationRef,
        node: &str,
        target_node: &str,
        id: &str,
        reference: &str,
    ) -> Result<String, WorldError> {
        self.record(Call::StartDirectSend {
            node: node.into(),
            target_node: target_node.into(),
            id: id.into(),
            reference: reference.into(),
        });
        Ok("job-direct-1".into())
    }
    async fn direct_send_job(
        &self,
        _: &MigrationRef,
        _: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError> {
        self.record(Call::DirectSendJob(job.map(str::to_owned)));
        Ok(self
            .direct_jobs
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted direct send job"))
    }
    async fn delete_image(
        &self,
        _: &MigrationRef,
        node: &str,
        reference: &str,
    ) -> Result<(), WorldError> {
        self.record(Call::DeleteImage {
            node: node.into(),
            reference: reference.into(),
        });
        match self.delete_image_error.lock().unwrap().clone() {
            Some(e) => Err(WorldError::transient(e)),
            None => Ok(()),
        }
    }
    async fn delete_checkpoint(
        &self,
        _: &MigrationRef,
        node: &str,
        id: &str,
    ) -> Result<(), WorldError> {
        self.record(Call::DeleteCheckpoint {
            node: node.into(),
            id: id.into(),
        });
        match self.delete_checkpoint_error.lock().unwrap().clone() {
            Some(e) => Err(WorldError::transient(e)),
            None => Ok(()),
        }
    }
    async fn forget(&self, _: &MigrationRef) {}
    async fn agent_nodes(&self) -> Result<std::collections::BTreeSet<String>, WorldError> {
        Ok(self.agent_nodes.lock().unwrap().clone())
    }
}

/// A kube client whose every request goes to the returned verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Client::new(svc, "default"),
        ApiServerVerifier { handle, rv: 100 },
    )
}

/// A Secret as the API server returns it (data base64-encoded).
pub fn secret(namespace: &str, name: &str, key: &str, value: &str) -> Value {
    let s = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            [(
                key.to_owned(),
                k8s_openapi::ByteString(value.as_bytes().to_vec()),
            )]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    let mut v = serde_json::to_value(s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

pub fn test_context() -> (Arc<Context>, ApiServerVerifier, Arc<ScriptedBackends>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let backends = Arc::new(ScriptedBackends::default());
    let ctx = Arc::new(Context::new(client, backends.clone()));
    (ctx, ApiServerVerifier { handle, rv: 100 }, backends)
}

pub const UID: &str = "0c5e9a7d-1111-2222-3333-444455556666";

/// A migration of `default/counter-0` to `node-b`, finalizer in place.
pub fn migration(progress: Option<Progress>) -> StatefulMigration {
    let mut m: StatefulMigration = serde_json::from_value(json!({
        "apiVersion": "migration.ms2m.io/v1alpha1",
        "kind": "StatefulMigration",
        "metadata": {"name": "mig", "namespace": "default", "uid": UID, "resourceVersion": "7",
            "generation": 1, "finalizers": ["migration.ms2m.io/cleanup"]},
        "spec": {
            "sourcePod": "counter-0",
            "targetNode": "node-b",
            "checkpointImageRepository": "registry:5000/ms2m/checkpoints",
            "replayCutoffSeconds": 60,
            "phaseTimeoutSeconds": 300,
            "messageQueueConfig": {"brokerUrl": "amqp://guest:guest@rabbit:5672/%2f",
                "queueName": "orders", "exchangeName": "orders.fanout"}
        }
    }))
    .unwrap();
    m.status = progress.map(|progress| StatefulMigrationStatus {
        progress,
        ..Default::default()
    });
    m
}

/// The source pod: Running on node-a, owned by `owner_kind`.
pub fn source_pod(owner_kind: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "counter-0", "namespace": "default", "resourceVersion": "42",
            "labels": {"app": "counter", "pod-template-hash": "abc12"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": "counter",
                "uid": "o1", "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "counter", "image": "counter:1"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.5"}
    })
}

pub fn node(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

pub fn pod_in_phase(name: &str, phase: &str, waiting: Option<&str>) -> Value {
    let mut statuses = json!([]);
    if let Some(reason) = waiting {
        statuses = json!([{"name": "counter", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": reason}}}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "node-b", "containers": [{"name": "counter", "image": "x"}]},
        "status": {"phase": phase, "containerStatuses": statuses}
    })
}
