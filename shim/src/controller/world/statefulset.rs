//! StatefulSet operations of the Sequential strategy: scale down, create the ordinal's
//! pod, hand it back.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::super::api_calls as calls;
use super::super::target_pod::{self, ImageSource};
use crate::adapters::kube_err;
use crate::driver::WorldError;
use crate::engine::Strategy;

use super::{DELETION_COST, KubeWorld, uses};

impl KubeWorld {
    pub(super) fn statefulsets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.ctx.client.clone(), &self.m.namespace)
    }

    /// Sequential target: the StatefulSet's pod, built from its template (the source pod
    /// is gone by now). A 409 is an earlier attempt's pod only if it is ours: under the
    /// source's name it may be a pod the StatefulSet made after someone scaled it up.
    pub(super) async fn create_sequential_target(
        &self,
        node: &str,
        image: &str,
        from: ImageSource,
    ) -> Result<(), WorldError> {
        let (sts, ordinal) = self.statefulset_of()?;
        uses(calls::STATEFULSET_GET);
        let set = self
            .statefulsets()
            .get(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?;
        let first = set
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let container = self
            .m
            .spec
            .container_name
            .clone()
            .or(first)
            .ok_or_else(|| WorldError::permanent("the StatefulSet's template has no container"))?;
        let pod = target_pod::build_for_statefulset(
            &set,
            ordinal,
            &container,
            node,
            image,
            from,
            &self.m.name,
        );
        uses(calls::POD_CREATE);
        match self.pods().create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = pod.metadata.name.unwrap_or_default();
                match self.get_pod(&name).await? {
                    Some(p) if !target_pod::is_target_of(&p, &self.m.name) => {
                        Err(WorldError::permanent(format!(
                            "pod {name} exists and is not this migration's target (was {sts} scaled up?)"
                        )))
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => Err(kube_err("creating the target pod", e)),
        }
    }

    /// Gives the Sequential target back to its StatefulSet. Scale-up first: the
    /// controller's attempt to create `<sts>-<ordinal>` fails while the target holds the
    /// name, so no second instance can appear. Then the selector's labels: the
    /// StatefulSet adopts the orphan whose name matches an ordinal it wants. The reverse
    /// order would let it adopt the pod while the ordinal is above its replica count and
    /// delete it.
    pub(super) async fn hand_back_to_statefulset(&self, target: &str) -> Result<(), WorldError> {
        let (sts, ordinal) = self.statefulset_of()?;
        self.scale_statefulset(ordinal + 1).await?;
        uses(calls::STATEFULSET_GET);
        let set = self
            .statefulsets()
            .get(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?;
        let labels = target_pod::selector_labels(&set);
        uses(calls::POD_PATCH);
        self.pods()
            .patch(
                target,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .map_err(|e| kube_err("handing the target to its StatefulSet", e))?;
        Ok(())
    }

    /// Deletes the target; under a Sequential source's name only if the pod is ours (uid
    /// precondition, so a pod re-made in between is not hit).
    pub(super) async fn delete_target(
        &self,
        name: &str,
        strategy: Strategy,
    ) -> Result<(), WorldError> {
        if strategy != Strategy::Sequential {
            return self.delete_pod(name, None).await;
        }
        match self.get_pod(name).await? {
            Some(p) if target_pod::is_target_of(&p, &self.m.name) => {
                self.delete_pod(name, p.metadata.uid).await
            }
            _ => Ok(()),
        }
    }

    /// `<sts>-<ordinal>` → (`<sts>`, ordinal).
    pub(super) fn statefulset_of(&self) -> Result<(String, i32), WorldError> {
        let pod = &self.m.spec.source_pod;
        pod.rsplit_once('-')
            .and_then(|(sts, ord)| Some((sts.to_owned(), ord.parse::<i32>().ok()?)))
            .ok_or_else(|| {
                WorldError::permanent(format!(
                    "{pod} is not named like a StatefulSet pod (<name>-<ordinal>)"
                ))
            })
    }

    /// Scaling a StatefulSet down removes its highest ordinals: only the highest one can
    /// be migrated Sequentially without taking its siblings down too.
    pub(super) async fn sequential_precondition(&self) -> Result<Option<String>, WorldError> {
        let (sts, ordinal) = match self.statefulset_of() {
            Ok(x) => x,
            Err(e) => return Ok(Some(e.message)),
        };
        uses(calls::STATEFULSET_GET);
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.m.namespace);
        let Some(s) = api
            .get_opt(&sts)
            .await
            .map_err(|e| kube_err("reading the source StatefulSet", e))?
        else {
            return Ok(Some(format!("StatefulSet {sts} not found")));
        };
        let spec = s.spec.unwrap_or_default();
        let deletes_claims = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        if deletes_claims
            && spec
                .volume_claim_templates
                .as_ref()
                .is_some_and(|v| !v.is_empty())
        {
            return Ok(Some(format!(
                "StatefulSet {sts} deletes its claims when scaled down (persistentVolumeClaimRetentionPolicy.whenScaled: Delete): a Sequential migration would lose {}'s volumes",
                self.m.spec.source_pod
            )));
        }
        let replicas = spec.replicas.unwrap_or(1);
        Ok((replicas != ordinal + 1).then(|| {
            format!(
                "a Sequential migration moves the StatefulSet's highest ordinal ({sts}-{}), not {}",
                replicas - 1,
                self.m.spec.source_pod
            )
        }))
    }

    pub(super) async fn scale_statefulset(&self, replicas: i32) -> Result<(), WorldError> {
        let (sts, _) = self.statefulset_of()?;
        uses(calls::STATEFULSET_SCALE_PATCH);
        let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.m.namespace);
        api.patch_scale(
            &sts,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map_err(|e| kube_err("scaling the source StatefulSet", e))?;
        Ok(())
    }

    /// Stops a ShadowPod source. A ReplicaSet-owned source would be replaced by a fresh
    /// pod (a second consumer without the state), so the target takes its place in the
    /// ReplicaSet first: the source gets the lowest deletion cost (should the ReplicaSet
    /// trim a surplus pod, it picks the source), the target gets the labels that make
    /// the ReplicaSet adopt it, then the source goes. Each step is idempotent; a source
    /// already gone has nothing to hand over.
    pub(super) async fn hand_over_and_stop_source(
        &mut self,
        target: &str,
    ) -> Result<(), WorldError> {
        let Some(source) = self.fetch_source().await? else {
            return Ok(());
        };
        let owned_by_rs = source
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.kind == "ReplicaSet");
        if owned_by_rs {
            uses(calls::POD_PATCH);
            let pods = self.pods();
            let cost = json!({"metadata": {"annotations": {DELETION_COST: i32::MIN.to_string()}}});
            pods.patch(
                &self.m.spec.source_pod,
                &PatchParams::default(),
                &Patch::Merge(cost),
            )
            .await
            .map_err(|e| kube_err("lowering the source's deletion cost", e))?;
            let labels = json!({"metadata": {"labels": source.labels()}});
            pods.patch(target, &PatchParams::default(), &Patch::Merge(labels))
                .await
                .map_err(|e| kube_err("handing the source's labels to the target", e))?;
        }
        self.delete_pod(&self.m.spec.source_pod, None).await
    }
}
