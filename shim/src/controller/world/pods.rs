//! Pods and nodes: the source, the ShadowPod target, node readiness.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
};

use super::super::api_calls as calls;
use super::super::target_pod;
use crate::adapters::kube_err;
use crate::driver::WorldError;
use crate::engine::{Observation, Plan, SourceView, Strategy, TargetView};

use super::{KubeWorld, uses};

impl KubeWorld {
    /// The source pod as last observed in this reconcile (for building requests), or
    /// fetched now.
    pub(super) async fn get_source(&mut self) -> Result<Option<Pod>, WorldError> {
        if let Some(p) = &self.source_pod {
            return Ok(Some(p.clone()));
        }
        self.fetch_source().await
    }

    pub(super) async fn fetch_source(&mut self) -> Result<Option<Pod>, WorldError> {
        uses(calls::POD_GET);
        let pod = self
            .pods()
            .get_opt(&self.m.spec.source_pod)
            .await
            .map_err(|e| kube_err("reading the source pod", e))?;
        self.source_pod.clone_from(&pod);
        Ok(pod)
    }

    pub(super) async fn source_view(&mut self) -> Result<Option<SourceView>, WorldError> {
        let Some(pod) = self.fetch_source().await? else {
            return Ok(None);
        };
        // A Sequential target carries the source's name: that pod is not the source.
        if target_pod::is_target_of(&pod, &self.m.name) {
            return Ok(None);
        }
        let container = self.container_name(Some(&pod));
        let spec = pod.spec.as_ref();
        let has_container = match (&container, spec) {
            (Some(c), Some(s)) => s.containers.iter().any(|x| &x.name == c),
            _ => false,
        };
        let owned_by_sts = pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
        Ok(Some(SourceView {
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            running: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.metadata.deletion_timestamp.is_none(),
            has_container,
            natural_strategy: if owned_by_sts {
                Strategy::Sequential
            } else {
                Strategy::ShadowPod
            },
        }))
    }

    pub(super) async fn node_ready(&self, node: &str) -> Result<Option<bool>, WorldError> {
        uses(calls::NODE_GET);
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let Some(n) = nodes
            .get_opt(node)
            .await
            .map_err(|e| kube_err("reading the target node", e))?
        else {
            return Ok(None);
        };
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let schedulable = !n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        Ok(Some(ready && schedulable))
    }

    pub(super) async fn target_view(
        &self,
        name: &str,
        strategy: Strategy,
    ) -> Result<TargetView, WorldError> {
        let Some(pod) = self.get_pod(name).await? else {
            return Ok(TargetView::Absent);
        };
        // Under the source's name, a pod that is not ours is the StatefulSet's.
        if strategy == Strategy::Sequential && !target_pod::is_target_of(&pod, &self.m.name) {
            return Ok(TargetView::Absent);
        }
        let status = pod.status.unwrap_or_default();
        let waiting = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.state?.waiting?.reason);
        Ok(match status.phase.as_deref() {
            Some("Running") => TargetView::Running,
            Some("Failed") | Some("Succeeded") => TargetView::Failed {
                reason: status
                    .message
                    .or(status.reason)
                    .unwrap_or_else(|| "the target pod exited".into()),
            },
            _ => match waiting.as_deref() {
                // Restoring again would fail the same way: stop now, not at the timeout.
                // ErrImageNeverPull: the imported image is not in the node's store, and
                // with `imagePullPolicy: Never` it never will be.
                Some(
                    r @ ("CrashLoopBackOff"
                    | "CreateContainerError"
                    | "InvalidImageName"
                    | "ErrImageNeverPull"),
                ) => TargetView::Failed {
                    reason: r.to_owned(),
                },
                _ => TargetView::Pending { reason: waiting },
            },
        })
    }

    pub(super) async fn get_pod(&self, name: &str) -> Result<Option<Pod>, WorldError> {
        uses(calls::POD_GET);
        self.pods()
            .get_opt(name)
            .await
            .map_err(|e| kube_err("reading the target pod", e))
    }

    pub(super) async fn delete_pod(
        &self,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), WorldError> {
        uses(calls::POD_DELETE);
        let dp = match uid {
            Some(uid) => DeleteParams::default().preconditions(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            None => DeleteParams::default(),
        };
        match self.pods().delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_err("deleting a pod", e)),
        }
    }

    /// Ready depth and consumers of the replay queue, and with `primary` the consumers
    /// of the primary queue: current counts, not statistics.
    pub(super) async fn observe_queues(
        &self,
        plan: &Plan,
        obs: &mut Observation,
        primary: bool,
    ) -> Result<(), WorldError> {
        let b = &self.ctx.backends;
        let replay = b.queue_state(&self.m, &plan.queues.replay).await?;
        obs.replay_depth = replay.map(|q| q.ready);
        obs.replay_consumers = replay.map(|q| q.consumers);
        if primary {
            obs.primary_consumers = b
                .queue_state(&self.m, &plan.queues.primary)
                .await?
                .map(|q| q.consumers);
        }
        Ok(())
    }

    /// The pod a ShadowPod target is built from.
    pub(super) async fn template(&mut self) -> Result<Pod, WorldError> {
        self.get_source().await?.ok_or_else(|| {
            WorldError::permanent("the source pod disappeared before the target was created")
        })
    }

    pub(super) fn container_name(&self, pod: Option<&Pod>) -> Option<String> {
        if let Some(c) = &self.m.spec.container_name {
            return Some(c.clone());
        }
        pod?.spec
            .as_ref()?
            .containers
            .first()
            .map(|c| c.name.clone())
    }

    pub(super) fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.m.namespace)
    }
}
