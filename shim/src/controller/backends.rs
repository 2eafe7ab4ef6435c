//! What the controller asks of things other than the Kubernetes API: the node agents
//! (checkpoint, push or Direct send with import, image removal) and the broker. The cluster implementation finds the agent on a
//! node through its DaemonSet pod and authenticates with the shared token Secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client, api::ListParams};
use tokio::sync::Mutex;

use ms2m_api::{
    CheckpointRequest, CheckpointResult, DirectSendRequest, JobStatus, PushRequest, PushResult,
    SendResult,
};

use crate::adapters::{AgentJob, agent_err, job_view, kube_err, mq_err};
use crate::agent_client::{AgentAddr, AgentClient};
use crate::crd::StatefulMigrationSpec;
use crate::driver::WorldError;
use crate::engine::{JobView, QueueNames};
use crate::messaging::{Broker, BrokerTls, ControlMessage, QueueState};

use super::api_calls::{self, ApiCall};

/// The migration an operation belongs to.
#[derive(Clone, Debug)]
pub struct MigrationRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub spec: StatefulMigrationSpec,
    pub queues: QueueNames,
}

#[async_trait::async_trait]
pub trait Backends: Send + Sync {
    async fn ensure_replay_topology(&self, m: &MigrationRef) -> Result<(), WorldError>;
    /// Ready messages and consumers of `queue` (current); `None` when it does not exist.
    async fn queue_state(
        &self,
        m: &MigrationRef,
        queue: &str,
    ) -> Result<Option<QueueState>, WorldError>;
    /// The pre-checkpoint condition (messaging's backlog probe).
    async fn pre_binding_backlog_settled(&self, m: &MigrationRef) -> Result<bool, WorldError>;
    /// Unbinds and purges the primary queue; returns the messages purged.
    async fn fence_primary(&self, m: &MigrationRef) -> Result<u64, WorldError>;
    async fn cut_over(&self, m: &MigrationRef) -> Result<(), WorldError>;
    async fn delete_replay(&self, m: &MigrationRef) -> Result<(), WorldError>;
    async fn send_control(
        &self,
        m: &MigrationRef,
        queue: &str,
        msg: &ControlMessage,
    ) -> Result<(), WorldError>;
    /// Starts a kubelet checkpoint on `node`; `None` when the agent already has (or is
    /// making) a checkpoint with this id.
    async fn start_checkpoint(
        &self,
        m: &MigrationRef,
        node: &str,
        pod: &str,
        container: &str,
        checkpoint_id: &str,
    ) -> Result<Option<String>, WorldError>;
    async fn checkpoint_job(
        &self,
        m: &MigrationRef,
        node: &str,
        job: Option<&str>,
        checkpoint_id: &str,
    ) -> Result<JobView, WorldError>;
    async fn start_push(
        &self,
        m: &MigrationRef,
        node: &str,
        checkpoint_id: &str,
        image: &str,
    ) -> Result<String, WorldError>;
    async fn push_job(
        &self,
        m: &MigrationRef,
        node: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError>;
    /// Starts a Direct send of `checkpoint_id` from the agent on `node` to the agent on
    /// `target_node`, which imports it into its node's image store as `reference`.
    async fn start_direct_send(
        &self,
        m: &MigrationRef,
        node: &str,
        target_node: &str,
        checkpoint_id: &str,
        reference: &str,
    ) -> Result<String, WorldError>;
    /// A Direct send job on `node`; its output is the reference the target imported.
    async fn direct_send_job(
        &self,
        m: &MigrationRef,
        node: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError>;
    /// Removes an imported image from `node`'s image store; an absent one is fine.
    async fn delete_image(
        &self,
        m: &MigrationRef,
        node: &str,
        reference: &str,
    ) -> Result<(), WorldError>;
    /// Deletes a checkpoint from `node`'s agent store; an absent one is fine.
    async fn delete_checkpoint(
        &self,
        m: &MigrationRef,
        node: &str,
        checkpoint_id: &str,
    ) -> Result<(), WorldError>;
    /// Lets go of per-migration state (broker connection) once it is finished.
    async fn forget(&self, m: &MigrationRef);
    /// The nodes an agent runs on (a target node must have one).
    async fn agent_nodes(&self) -> Result<std::collections::BTreeSet<String>, WorldError>;
}

/// Where the agents are and how to reach them.
#[derive(Clone, Debug)]
pub struct AgentDiscovery {
    pub namespace: String,
    /// Label selector of the agent DaemonSet's pods.
    pub selector: String,
    pub port: u16,
    /// Secret (in `namespace`) whose `token` key is the agents' bearer token.
    pub token_secret: String,
    /// The shim's mounted TLS Secret (`tls.crt`, `tls.key`, `ca.crt`): agents are then
    /// reached over https with mutual TLS, and the token is not used.
    pub tls_dir: Option<std::path::PathBuf>,
}

impl Default for AgentDiscovery {
    fn default() -> Self {
        Self {
            namespace: "ms2m-system".into(),
            selector: "app.kubernetes.io/name=ms2m-agent".into(),
            port: 9411,
            token_secret: "ms2m-agent-token".into(),
            tls_dir: None,
        }
    }
}

/// The real thing: agents over TCP, the broker over AMQP.
pub struct ClusterBackends {
    client: Client,
    discovery: AgentDiscovery,
    token: Mutex<Option<String>>,
    brokers: Mutex<HashMap<String, Arc<dyn Broker>>>,
}

/// Documents which table entry a call site uses.
fn uses(_: ApiCall) {}

impl ClusterBackends {
    pub fn new(client: Client, discovery: AgentDiscovery) -> Self {
        Self {
            client,
            discovery,
            token: Mutex::new(None),
            brokers: Mutex::new(HashMap::new()),
        }
    }

    async fn agent(&self, node: &str) -> Result<AgentClient, WorldError> {
        let base = self.agent_base(node).await?;
        if let Some(tls_dir) = &self.discovery.tls_dir {
            return Ok(AgentClient::new(AgentAddr::Tls {
                base,
                tls_dir: tls_dir.clone(),
            }));
        }
        let token = self.token().await?;
        Ok(AgentClient::new(AgentAddr::Tcp { base, token }))
    }

    /// The agent job `job` on `node`, as it is now; `None` when no job was started or
    /// the agent no longer knows it (it restarted).
    async fn agent_job(
        &self,
        node: &str,
        job: Option<&str>,
    ) -> Result<Option<AgentJob>, WorldError> {
        let Some(id) = job else {
            return Ok(None);
        };
        self.agent(node)
            .await?
            .job(id, Duration::ZERO)
            .await
            .map_err(agent_err)
    }

    /// `http://<pod IP>:<port>` of the agent on `node`.
    async fn agent_base(&self, node: &str) -> Result<String, WorldError> {
        uses(api_calls::POD_LIST);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.discovery.namespace);
        let lp = ListParams::default()
            .labels(&self.discovery.selector)
            .fields(&format!("spec.nodeName={node}"));
        let list = pods
            .list(&lp)
            .await
            .map_err(|e| kube_err("listing agent pods", e))?;
        let ip = list
            .items
            .iter()
            .find_map(|p| p.status.as_ref()?.pod_ip.clone())
            .ok_or_else(|| {
                WorldError::transient(format!("no ready ms2m-agent pod on node {node}"))
            })?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        let scheme = if self.discovery.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(format!("{scheme}://{host}:{}", self.discovery.port))
    }

    async fn token(&self) -> Result<String, WorldError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        let t = self
            .secret_key(
                &self.discovery.namespace,
                &self.discovery.token_secret,
                "token",
            )
            .await?;
        *cached = Some(t.clone());
        Ok(t)
    }

    async fn secret_key(&self, ns: &str, name: &str, key: &str) -> Result<String, WorldError> {
        uses(api_calls::SECRET_GET);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = secrets
            .get_opt(name)
            .await
            .map_err(|e| kube_err("reading a Secret", e))?
            .ok_or_else(|| WorldError::permanent(format!("Secret {ns}/{name} not found")))?;
        let bytes = s
            .data
            .and_then(|mut d| d.remove(key))
            .ok_or_else(|| WorldError::permanent(format!("Secret {ns}/{name} has no key {key}")))?;
        String::from_utf8(bytes.0)
            .map(|s| s.trim().to_owned())
            .map_err(|_| {
                WorldError::permanent(format!("Secret {ns}/{name} key {key} is not UTF-8"))
            })
    }

    /// The broker TLS material of `messageQueueConfig.tlsSecretRef`, if any.
    async fn broker_tls(&self, m: &MigrationRef) -> Result<Option<BrokerTls>, WorldError> {
        let Some(r) = &m.spec.message_queue_config.tls_secret_ref else {
            return Ok(None);
        };
        uses(api_calls::SECRET_GET);
        let ns = &m.namespace;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| kube_err("reading a Secret", e))?
            .ok_or_else(|| WorldError::permanent(format!("Secret {ns}/{} not found", r.name)))?;
        let data = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        BrokerTls::from_secret(&format!("{ns}/{}", r.name), &data)
            .map(Some)
            .map_err(mq_err)
    }

    async fn broker(&self, m: &MigrationRef) -> Result<Arc<dyn Broker>, WorldError> {
        let mut brokers = self.brokers.lock().await;
        if let Some(b) = brokers.get(&m.uid) {
            return Ok(b.clone());
        }
        let mq = &m.spec.message_queue_config;
        let url = match (&mq.broker_url, &mq.broker_secret_ref) {
            (Some(url), _) => url.clone(),
            (None, Some(r)) => self.secret_key(&m.namespace, &r.name, &r.key).await?,
            (None, None) => return Err(WorldError::permanent("no broker configured")),
        };
        let tls = self.broker_tls(m).await?;
        let b = crate::messaging::connect(
            &url,
            mq.broker,
            &format!("{}/{}", m.namespace, m.name),
            &mq.management(),
            tls.as_ref(),
        )
        .map_err(mq_err)?;
        brokers.insert(m.uid.clone(), b.clone());
        Ok(b)
    }
}

#[async_trait::async_trait]
impl Backends for ClusterBackends {
    async fn ensure_replay_topology(&self, m: &MigrationRef) -> Result<(), WorldError> {
        self.broker(m)
            .await?
            .ensure_replay_topology(&m.queues)
            .await
            .map_err(mq_err)
    }

    async fn queue_state(
        &self,
        m: &MigrationRef,
        queue: &str,
    ) -> Result<Option<QueueState>, WorldError> {
        self.broker(m)
            .await?
            .queue_state(&m.queues, queue)
            .await
            .map_err(mq_err)
    }

    async fn pre_binding_backlog_settled(&self, m: &MigrationRef) -> Result<bool, WorldError> {
        let check = self
            .broker(m)
            .await?
            .pre_binding_backlog(&m.queues, m.spec.message_queue_config.source_prefetch())
            .await
            .map_err(mq_err)?;
        Ok(check.settled)
    }

    async fn fence_primary(&self, m: &MigrationRef) -> Result<u64, WorldError> {
        self.broker(m)
            .await?
            .fence_primary(&m.queues)
            .await
            .map_err(mq_err)
    }

    async fn cut_over(&self, m: &MigrationRef) -> Result<(), WorldError> {
        self.broker(m)
            .await?
            .cut_over(&m.queues)
            .await
            .map_err(mq_err)
    }

    async fn delete_replay(&self, m: &MigrationRef) -> Result<(), WorldError> {
        self.broker(m)
            .await?
            .delete_replay(&m.queues)
            .await
            .map_err(mq_err)
    }

    async fn send_control(
        &self,
        m: &MigrationRef,
        queue: &str,
        msg: &ControlMessage,
    ) -> Result<(), WorldError> {
        self.broker(m)
            .await?
            .send_control(queue, msg)
            .await
            .map_err(mq_err)
    }

    async fn start_checkpoint(
        &self,
        m: &MigrationRef,
        node: &str,
        pod: &str,
        container: &str,
        checkpoint_id: &str,
    ) -> Result<Option<String>, WorldError> {
        let agent = self.agent(node).await?;
        let req = CheckpointRequest::Kubelet {
            namespace: m.namespace.clone(),
            pod: pod.into(),
            container: container.into(),
            timeout_seconds: Some(u64::from(m.spec.phase_timeout_seconds)),
            checkpoint_id: Some(checkpoint_id.into()),
        };
        match agent.start_checkpoint(&req).await {
            Ok(job) => Ok(Some(job.id)),
            Err(e) if e.status() == Some(409) => Ok(None),
            Err(e) => Err(agent_err(e)),
        }
    }

    async fn checkpoint_job(
        &self,
        _m: &MigrationRef,
        node: &str,
        job: Option<&str>,
        checkpoint_id: &str,
    ) -> Result<JobView, WorldError> {
        let agent = self.agent(node).await?;
        if let Some(id) = job
            && let Some(j) = agent.job(id, Duration::ZERO).await.map_err(agent_err)?
        {
            return Ok(job_view(Some(&j), |r: CheckpointResult| {
                Some(r.checkpoint_id)
            }));
        }
        // No job to ask (a 409 on start, or the agent restarted): the checkpoint itself says.
        Ok(
            if agent
                .checkpoint_exists(checkpoint_id)
                .await
                .map_err(agent_err)?
            {
                JobView::Succeeded {
                    output: checkpoint_id.into(),
                    finished_at: None,
                }
            } else if job.is_some() {
                JobView::NotStarted
            } else {
                JobView::Running
            },
        )
    }

    async fn start_push(
        &self,
        _m: &MigrationRef,
        node: &str,
        checkpoint_id: &str,
        image: &str,
    ) -> Result<String, WorldError> {
        let agent = self.agent(node).await?;
        let req = PushRequest {
            checkpoint_id: checkpoint_id.into(),
            image: image.into(),
            compression: Some("zstd".into()),
            ..Default::default()
        };
        agent
            .start_push(&req)
            .await
            .map(|j| j.id)
            .map_err(agent_err)
    }

    async fn push_job(
        &self,
        _m: &MigrationRef,
        node: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError> {
        let j = self.agent_job(node, job).await?;
        Ok(job_view(j.as_ref(), |r: PushResult| Some(r.image)))
    }

    async fn start_direct_send(
        &self,
        _m: &MigrationRef,
        node: &str,
        target_node: &str,
        checkpoint_id: &str,
        reference: &str,
    ) -> Result<String, WorldError> {
        let target = self.agent(target_node).await?;
        // A send repeated after the source agent forgot the first one (restart) would be
        // refused by the target while it holds the checkpoint the first one delivered.
        // Only this migration writes that id there; the imported image does not depend
        // on it. 409 (a receive still running) is transient: retried later.
        target
            .delete_checkpoint(checkpoint_id)
            .await
            .map_err(agent_err)?;
        let req = DirectSendRequest {
            checkpoint_id: checkpoint_id.into(),
            target: target.addr().to_string(),
            target_checkpoint_id: Some(checkpoint_id.into()),
            target_node: Some(target_node.into()),
            import_reference: Some(reference.into()),
        };
        let source = self.agent(node).await?;
        source
            .start_direct_send(&req)
            .await
            .map(|j| j.id)
            .map_err(agent_err)
    }

    async fn direct_send_job(
        &self,
        _m: &MigrationRef,
        node: &str,
        job: Option<&str>,
    ) -> Result<JobView, WorldError> {
        let Some(j) = self.agent_job(node, job).await? else {
            return Ok(JobView::NotStarted);
        };
        let imported = |r: SendResult| r.received.imported.map(|i| i.reference);
        if j.status == JobStatus::Succeeded
            && j.result::<SendResult>()
                .ok()
                .flatten()
                .and_then(imported)
                .is_none()
        {
            // Restoring needs the image in the node's store; an archive alone is useless.
            return Ok(JobView::Failed {
                reason: format!(
                    "direct send job {} succeeded without importing the checkpoint into the target node's image store (target agent without image import?)",
                    j.id
                ),
            });
        }
        Ok(job_view(Some(&j), imported))
    }

    async fn delete_image(
        &self,
        _m: &MigrationRef,
        node: &str,
        reference: &str,
    ) -> Result<(), WorldError> {
        self.agent(node)
            .await?
            .delete_image(reference)
            .await
            .map(drop)
            .map_err(agent_err)
    }

    async fn delete_checkpoint(
        &self,
        _m: &MigrationRef,
        node: &str,
        checkpoint_id: &str,
    ) -> Result<(), WorldError> {
        self.agent(node)
            .await?
            .delete_checkpoint(checkpoint_id)
            .await
            .map_err(agent_err)
    }

    async fn agent_nodes(&self) -> Result<std::collections::BTreeSet<String>, WorldError> {
        uses(api_calls::POD_LIST);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.discovery.namespace);
        let lp = ListParams::default().labels(&self.discovery.selector);
        let list = pods
            .list(&lp)
            .await
            .map_err(|e| kube_err("listing agent pods", e))?;
        // An agent counts once it has an address: that is when the shim can reach it.
        Ok(list
            .items
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect())
    }

    async fn forget(&self, m: &MigrationRef) {
        self.brokers.lock().await.remove(&m.uid);
    }
}
