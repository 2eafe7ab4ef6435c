//! Scenario tests of the reconciler against the mocked API service: each asserts the
//! exact requests of a phase and answers as the API server would.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::fixtures::*;
use super::{Error, reconcile};
use crate::engine::{JobView, Phase, PhaseTiming, Progress, StepState, Strategy, TransferMode};
use crate::messaging::ControlMessage;

const MIG_STATUS: &str = "mig";
const REPLAY: &str = "orders.ms2m-replay";
const PODS: &str = "/api/v1/namespaces/default/pods";
const TARGET: &str = "counter-0-m0c5e9";
const IMAGE: &str = "registry:5000/ms2m/checkpoints:default.mig-0c5e9a7d";

/// What a finished migration's calls end with: its checkpoint deleted on both nodes.
fn then_checkpoints_deleted(mut calls: Vec<Call>) -> Vec<Call> {
    for node in ["node-a", "node-b"] {
        calls.push(Call::DeleteCheckpoint {
            node: node.into(),
            id: CKPT.into(),
        });
    }
    calls
}

fn progress_at(phase: Phase, strategy: Strategy, started_secs_ago: i64) -> Progress {
    let started = Timestamp::now() - SignedDuration::from_secs(started_secs_ago);
    let mut p = Progress {
        phase,
        start_time: Some(started),
        phase_started_at: Some(started),
        source_node: Some("node-a".into()),
        strategy: Some(strategy),
        target_pod_name: Some(TARGET.into()),
        checkpoint_id: Some("default.mig-0c5e9a7d".into()),
        phase_timings: vec![PhaseTiming {
            phase,
            started_at: started,
            duration_ms: None,
        }],
        ..Progress::default()
    };
    p.steps.replay_topology = StepState::Done;
    p.steps.checkpoint = StepState::Done;
    if phase != Phase::Checkpointing {
        p.steps.transfer = StepState::Done;
        p.checkpoint_image = Some(IMAGE.into());
    }
    p
}

async fn run(
    obj: crate::crd::StatefulMigration,
    ctx: Arc<super::Context>,
    scenario: tokio::task::JoinHandle<()>,
) -> Result<kube::runtime::controller::Action, Error> {
    let res = reconcile(Arc::new(obj), ctx).await;
    if let Err(e) = &res {
        eprintln!("reconcile ended with: {e}");
    }
    tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("scenario finished")
        .expect("scenario assertions held");
    res
}

#[tokio::test]
async fn a_new_migration_gets_the_finalizer_first() {
    let (ctx, mut api, backends) = test_context();
    let mut obj = migration(None);
    obj.metadata.finalizers = None;
    let scenario = tokio::spawn(async move {
        let seen = api
            .expect(
                Method::PATCH,
                "/apis/migration.ms2m.io/v1alpha1/namespaces/default/statefulmigrations/mig",
                StatusCode::OK,
                Some(serde_json::to_value(migration(None)).unwrap()),
            )
            .await;
        assert_eq!(
            seen.body[1],
            json!({"op": "add", "path": "/metadata/finalizers", "value": ["migration.ms2m.io/cleanup"]})
        );
        api.done().await;
    });
    run(obj, ctx, scenario).await.unwrap();
    assert!(
        backends.calls().is_empty(),
        "nothing happens before the finalizer is in place"
    );
}

#[tokio::test]
async fn pending_validates_then_binds_the_replay_queue_before_the_checkpoint() {
    let (ctx, mut api, backends) = test_context();
    backends
        .checkpoint_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Running);
    // After the binding: 3 pre-binding messages left in the primary queue, 5 in the
    // replay queue, so the source has moved past the pre-binding backlog.
    backends.depths.lock().unwrap().extend([Some(3), Some(5)]);
    let b2 = backends.clone();
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Checkpointing);
        assert_eq!(st.progress.source_node.as_deref(), Some("node-a"));
        assert_eq!(st.progress.strategy, Some(Strategy::ShadowPod));
        assert_eq!(st.progress.steps.replay_topology, StepState::Intended);
        assert_eq!(st.conditions[0].type_, "Succeeded");
        assert_eq!(st.conditions[0].status, "Unknown");
        assert!(
            b2.calls().is_empty(),
            "status is written before any side effect"
        );
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.replay_topology, StepState::Done);
        assert_eq!(b2.calls(), vec![Call::Topology]);
        assert_eq!(api.event().await.0, "Checkpointing");
        // Next round: depths say the backlog is consumed; the checkpoint starts.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.checkpoint, StepState::Intended);
        assert!(st.progress.replay.backlog_drained_at.is_some());
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.checkpoint, StepState::Done);
        assert_eq!(st.progress.checkpoint_job.as_deref(), Some("job-ckpt-1"));
        api.done().await;
    });
    run(migration(None), ctx, scenario).await.unwrap();
    assert_eq!(
        backends.calls(),
        vec![
            Call::Topology,
            Call::Backlog,
            Call::StartCheckpoint {
                node: "node-a".into(),
                pod: "counter-0".into(),
                container: "counter".into(),
                id: "default.mig-0c5e9a7d".into()
            },
            Call::CheckpointJob(Some("job-ckpt-1".into())),
        ]
    );
}

#[tokio::test]
async fn a_missing_source_pod_fails_the_migration_without_side_effects() {
    let (ctx, mut api, backends) = test_context();
    let scenario = tokio::spawn(async move {
        api.not_found(Method::GET, &format!("{PODS}/counter-0"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert_eq!(st.conditions[0].status, "False");
        assert!(
            st.progress
                .failure
                .unwrap()
                .reason
                .contains("source not found")
        );
        let (reason, note) = api.event().await;
        assert_eq!(reason, "Failed");
        assert!(note.contains("source not found"));
        api.done().await;
    });
    run(migration(None), ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty());
}

#[tokio::test]
async fn sequential_refuses_a_statefulset_pod_that_is_not_the_highest_ordinal() {
    let (ctx, mut api, backends) = test_context();
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("StatefulSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        api.get(
            "/apis/apps/v1/namespaces/default/statefulsets/counter",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "counter", "namespace": "default"},
                "spec": {"replicas": 3, "serviceName": "counter",
                    "selector": {"matchLabels": {"app": "counter"}},
                    "template": {"spec": {"containers": [{"name": "counter"}]}}}}),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        let reason = st.progress.failure.unwrap().reason;
        assert!(reason.contains("highest ordinal (counter-2)"), "{reason}");
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(migration(None), ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty());
}

#[tokio::test]
async fn sequential_refuses_a_statefulset_that_deletes_its_claims_on_scale_down() {
    let (ctx, mut api, backends) = test_context();
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("StatefulSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let mut sts = statefulset(1);
        sts["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenScaled": "Delete"});
        api.get(STS, sts).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        let reason = st.progress.failure.unwrap().reason;
        assert!(reason.contains("whenScaled: Delete"), "{reason}");
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(migration(None), ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty());
}

#[tokio::test]
async fn a_stale_status_write_gets_409_and_nothing_else_happens() {
    let (ctx, mut api, backends) = test_context();
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        api.expect(
            Method::PUT,
            "/apis/migration.ms2m.io/v1alpha1/namespaces/default/statefulmigrations/mig/status",
            StatusCode::CONFLICT,
            Some(status_body(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            )),
        )
        .await;
        api.done().await;
    });
    let res = run(migration(None), ctx, scenario).await;
    let err = res.expect_err("a conflict fails the reconcile, which is retried from fresh state");
    assert!(err.to_string().contains("modified"), "{err}");
    assert!(
        backends.calls().is_empty(),
        "no side effect without a written status"
    );
}

#[tokio::test]
async fn a_finished_push_moves_to_restoring_and_creates_the_target_pod() {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Transferring, Strategy::ShadowPod, 3);
    p.checkpoint_image = None;
    p.transfer_job = Some("job-push-1".into());
    backends
        .push_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Succeeded {
            output: IMAGE.into(),
            finished_at: None,
        });
    let scenario = tokio::spawn(async move {
        // Entering Restoring, the target is known to be absent: no GET before creating.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Restoring);
        assert_eq!(st.progress.checkpoint_image.as_deref(), Some(IMAGE));
        assert_eq!(st.progress.steps.create_target, StepState::Intended);
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        let created = api
            .expect(Method::POST, PODS, StatusCode::CREATED, None)
            .await;
        let pod = created.body;
        assert_eq!(pod["metadata"]["name"], TARGET);
        assert_eq!(pod["spec"]["nodeName"], "node-b");
        assert_eq!(pod["spec"]["containers"][0]["image"], IMAGE);
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"app": "counter",
            "migration.ms2m.io/migration": "mig", "migration.ms2m.io/role": "target"})
        );
        assert!(pod["metadata"].get("ownerReferences").is_none());
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.create_target, StepState::Done);
        assert_eq!(api.event().await.0, "Restoring");
        // Next round: the pod is being created.
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Pending", Some("ContainerCreating")),
        )
        .await;
        api.done().await;
    });
    let action = run(migration(Some(p)), ctx, scenario).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(crate::engine::POLL)
    );
    assert_eq!(
        backends.calls(),
        vec![Call::PushJob(Some("job-push-1".into()))]
    );
}

#[tokio::test]
async fn a_target_pod_that_already_exists_counts_as_created() {
    let (ctx, mut api, _backends) = test_context();
    let p = progress_at(Phase::Restoring, Strategy::ShadowPod, 1);
    let scenario = tokio::spawn(async move {
        api.not_found(Method::GET, &format!("{PODS}/{TARGET}"))
            .await;
        api.status_put(MIG_STATUS).await;
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.expect(
            Method::POST,
            PODS,
            StatusCode::CONFLICT,
            Some(status_body(409, "AlreadyExists", "pods already exists")),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.create_target, StepState::Done);
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Running", None),
        )
        .await;
        // Running: on to Replaying, START_REPLAY after the status says so.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Replaying);
        assert_eq!(st.progress.steps.start_replay, StepState::Intended);
        assert_eq!(st.progress.replay.depth_at_start, None);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.start_replay, StepState::Done);
        assert_eq!(api.event().await.0, "Replaying");
        // The next round samples the depth: the backlog since the checkpoint.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.replay.depth_at_start, Some(9));
        assert_eq!(st.progress.replay.last_depth, Some(9));
        api.done().await;
    });
    // Replaying's first observation reads the depth; the second round waits.
    let b = _backends.clone();
    b.depths.lock().unwrap().extend([Some(9), Some(9)]);
    run(migration(Some(p)), ctx, scenario).await.unwrap();
    assert!(b.calls().contains(&Call::Control(
        format!("ms2m.control.{TARGET}"),
        ControlMessage::start_replay("orders.ms2m-replay")
    )));
}

#[tokio::test]
async fn a_target_pod_that_never_becomes_running_is_rolled_back() {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Restoring, Strategy::ShadowPod, 400);
    p.steps.create_target = StepState::Done;
    let scenario = tokio::spawn(async move {
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Pending", Some("ImagePullBackOff")),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        let reason = st.progress.failure.unwrap().reason;
        assert!(
            reason.contains("ImagePullBackOff") && reason.contains("300 s"),
            "{reason}"
        );
        api.expect(
            Method::DELETE,
            &format!("{PODS}/{TARGET}"),
            StatusCode::OK,
            Some(pod_in_phase(TARGET, "Pending", None)),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_target, StepState::Done);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_replay, StepState::Done);
        let (reason, _) = api.event().await;
        assert_eq!(reason, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert!(st.progress.failure.unwrap().rolled_back);
        assert_eq!(st.conditions[0].reason, "Failed");
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    let action = run(migration(Some(p)), ctx, scenario).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![Call::DeleteReplay])
    );
}

#[tokio::test]
async fn replay_cutoff_stops_the_source_then_finalizes() {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Replaying, Strategy::ShadowPod, 100);
    p.steps.create_target = StepState::Done;
    p.steps.start_replay = StepState::Done;
    p.replay.started_at = Some(Timestamp::now() - SignedDuration::from_secs(90));
    // Past the 60 s cutoff with 4 left; then caught up alone, then gone.
    backends.depths.lock().unwrap().extend([
        Some(4),
        Some(4),
        Some(0),
        Some(0),
        Some(0),
        None,
        None,
    ]);
    let scenario = tokio::spawn(async move {
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.replay.stop_reason.as_deref(), Some("Cutoff"));
        assert_eq!(st.progress.steps.stop_source, StepState::Intended);
        // The ReplicaSet-owned source hands its place to the target before it goes.
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        let cost = api
            .expect(
                Method::PATCH,
                &format!("{PODS}/counter-0"),
                StatusCode::OK,
                Some(source_pod("ReplicaSet")),
            )
            .await;
        assert_eq!(
            cost.body,
            json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-2147483648"}}})
        );
        let adopt = api
            .expect(
                Method::PATCH,
                &format!("{PODS}/{TARGET}"),
                StatusCode::OK,
                Some(pod_in_phase(TARGET, "Running", None)),
            )
            .await;
        assert_eq!(
            adopt.body,
            json!({"metadata": {"labels": {"app": "counter", "pod-template-hash": "abc12"}}})
        );
        api.expect(
            Method::DELETE,
            &format!("{PODS}/counter-0"),
            StatusCode::OK,
            Some(source_pod("ReplicaSet")),
        )
        .await;
        api.status_put(MIG_STATUS).await; // stop_source done
        // Next round: fence the primary queue only once the source pod is gone.
        api.not_found(Method::GET, &format!("{PODS}/counter-0"))
            .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.fence_primary, StepState::Intended);
        api.status_put(MIG_STATUS).await; // fence done
        // Caught up alone: Finalizing, which cuts over first.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Finalizing);
        assert_eq!(st.progress.steps.cut_over, StepState::Intended);
        api.status_put(MIG_STATUS).await; // cut over
        assert_eq!(api.event().await.0, "Finalizing");
        api.status_put(MIG_STATUS).await; // END_REPLAY intended
        api.status_put(MIG_STATUS).await; // END_REPLAY done
        api.status_put(MIG_STATUS).await; // delete intended (the target left)
        api.status_put(MIG_STATUS).await; // replay queue deleted
        api.status_put(MIG_STATUS).await; // remove source intended
        // The source is already gone: a 404 is fine.
        api.not_found(Method::DELETE, &format!("{PODS}/counter-0"))
            .await;
        api.status_put(MIG_STATUS).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Completed);
        assert_eq!(st.conditions[0].status, "True");
        assert!(st.progress.completion_time.is_some());
        assert_eq!(api.event().await.0, "Completed");
        api.done().await;
    });
    run(migration(Some(p)), ctx, scenario).await.unwrap();
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![
            Call::Depth(REPLAY.into()),
            Call::Depth(REPLAY.into()),
            Call::Fence,
            Call::Depth(REPLAY.into()),
            Call::CutOver,
            Call::Depth(REPLAY.into()),
            Call::Control(format!("ms2m.control.{TARGET}"), ControlMessage::EndReplay),
            Call::Depth(REPLAY.into()),
            Call::DeleteReplay,
            Call::Depth(REPLAY.into()),
            Call::Depth(REPLAY.into()),
        ])
    );
}

const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/counter";

/// StatefulSet `counter` with 2 replicas (so `counter-1` is its highest ordinal), a
/// claim template and a settled revision.
fn statefulset(replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "counter", "namespace": "default"},
        "spec": {"replicas": replicas, "serviceName": "counter",
            "selector": {"matchLabels": {"app": "counter"}},
            "template": {"metadata": {"labels": {"app": "counter", "tier": "backend"}},
                "spec": {"containers": [{"name": "counter", "image": "counter:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
        "status": {"replicas": replicas, "currentRevision": "counter-7f9c", "updateRevision": "counter-7f9c"}
    })
}

/// The Sequential target as the API server returns it: the StatefulSet's pod name, ours.
fn sequential_target(phase: &str) -> serde_json::Value {
    let mut pod = pod_in_phase("counter-1", phase, None);
    pod["metadata"]["uid"] = json!("target-uid");
    pod["metadata"]["labels"] = json!({"tier": "backend", "statefulset.kubernetes.io/pod-name": "counter-1",
        "migration.ms2m.io/migration": "mig", "migration.ms2m.io/role": "target"});
    pod
}

fn sequential_migration(p: Progress) -> crate::crd::StatefulMigration {
    let mut obj = migration(Some(p));
    obj.spec.source_pod = "counter-1".into();
    obj
}

#[test]
fn a_sequential_target_takes_the_source_name_and_its_control_queue() {
    let mut p = progress_at(Phase::Restoring, Strategy::Sequential, 1);
    p.target_pod_name = None;
    let (plan, _) = super::plan_for(&sequential_migration(p)).unwrap();
    assert_eq!(plan.target_name, "counter-1");
    assert_eq!(plan.queues.control, "ms2m.control.counter-1");
    let (plan, _) = super::plan_for(&sequential_migration(progress_at(
        Phase::Restoring,
        Strategy::ShadowPod,
        1,
    )))
    .unwrap();
    assert_eq!(plan.target_name, "counter-1-m0c5e9");
}

#[tokio::test]
async fn sequential_scales_the_statefulset_down_and_creates_its_pod_on_the_target_node() {
    let (ctx, mut api, backends) = test_context();
    let obj = sequential_migration(progress_at(Phase::Restoring, Strategy::Sequential, 1));
    let scenario = tokio::spawn(async move {
        let mut sts_pod = source_pod("StatefulSet");
        sts_pod["metadata"]["name"] = json!("counter-1");
        // The pod under the name is the StatefulSet's (the source), not a target.
        api.get(&format!("{PODS}/counter-1"), sts_pod.clone()).await;
        api.get(&format!("{PODS}/counter-1"), sts_pod).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.stop_source, StepState::Intended);
        assert_eq!(st.progress.target_pod_name.as_deref(), Some("counter-1"));
        let scale = api
            .expect(Method::PATCH, &format!("{STS}/scale"), StatusCode::OK,
                Some(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "counter"},
                    "spec": {"replicas": 1}})))
            .await;
        assert_eq!(scale.body, json!({"spec": {"replicas": 1}}));
        api.status_put(MIG_STATUS).await;
        // Next round: the source is gone; the name is free for the target.
        api.not_found(Method::GET, &format!("{PODS}/counter-1"))
            .await;
        api.not_found(Method::GET, &format!("{PODS}/counter-1"))
            .await;
        api.status_put(MIG_STATUS).await;
        api.get(STS, statefulset(1)).await;
        let created = api
            .expect(Method::POST, PODS, StatusCode::CREATED, None)
            .await;
        let pod = &created.body;
        assert_eq!(pod["metadata"]["name"], "counter-1");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert!(pod["metadata"].get("ownerReferences").is_none());
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"tier": "backend", "controller-revision-hash": "counter-7f9c",
                "statefulset.kubernetes.io/pod-name": "counter-1", "apps.kubernetes.io/pod-index": "1",
                "migration.ms2m.io/migration": "mig", "migration.ms2m.io/role": "target"}),
            "the selector's label (app) waits for the hand-back, else the StatefulSet adopts and deletes the pod"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["containers"][0]["image"], IMAGE);
        assert_eq!(spec["nodeName"], "node-b");
        assert_eq!(spec["hostname"], "counter-1");
        assert_eq!(spec["subdomain"], "counter");
        assert_eq!(
            spec["volumes"],
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-counter-1"}}])
        );
        api.status_put(MIG_STATUS).await;
        // Our pod under the source's name: the target, and no source any more.
        api.get(&format!("{PODS}/counter-1"), sequential_target("Pending"))
            .await;
        api.get(&format!("{PODS}/counter-1"), sequential_target("Pending"))
            .await;
        api.done().await;
    });
    run(obj, ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty());
}

#[tokio::test]
async fn sequential_finalizing_hands_the_target_back_to_its_statefulset() {
    let (ctx, mut api, backends) = test_context();
    // The replay queue is gone already.
    backends.depths.lock().unwrap().extend([None, None, None]);
    let mut p = progress_at(Phase::Finalizing, Strategy::Sequential, 1);
    for step in [
        &mut p.steps.stop_source,
        &mut p.steps.create_target,
        &mut p.steps.start_replay,
        &mut p.steps.fence_primary,
        &mut p.steps.cut_over,
        &mut p.steps.end_replay,
        &mut p.steps.delete_replay,
    ] {
        *step = StepState::Done;
    }
    let scenario = tokio::spawn(async move {
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.remove_source, StepState::Intended);
        // Scale up first: the StatefulSet's own create of counter-1 fails on the taken name.
        let scale = api
            .expect(Method::PATCH, &format!("{STS}/scale"), StatusCode::OK,
                Some(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "counter"},
                    "spec": {"replicas": 2}})))
            .await;
        assert_eq!(scale.body, json!({"spec": {"replicas": 2}}));
        api.get(STS, statefulset(2)).await;
        // Then the selector's labels: the StatefulSet adopts the running target.
        let adopt = api
            .expect(
                Method::PATCH,
                &format!("{PODS}/counter-1"),
                StatusCode::OK,
                Some(sequential_target("Running")),
            )
            .await;
        assert_eq!(
            adopt.body,
            json!({"metadata": {"labels": {"app": "counter"}}})
        );
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.remove_source, StepState::Done);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Completed);
        assert_eq!(api.event().await.0, "Completed");
        // Deleting the checkpoints fails on both nodes: said in one event, nothing
        // retried (the agents' retention expiry removes them).
        let (reason, note) = api.event().await;
        assert_eq!(reason, "CheckpointCleanupFailed");
        for node in ["node-a", "node-b"] {
            assert!(
                note.contains(&format!("node {node} (")) && note.contains("unreachable"),
                "{note}"
            );
        }
        // No pod is deleted: api.done() refuses any further request.
        api.done().await;
    });
    *backends.delete_checkpoint_error.lock().unwrap() = Some("agent unreachable".into());
    run(sequential_migration(p), ctx, scenario).await.unwrap();
    let replay = || Call::Depth(REPLAY.into());
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![replay(), replay()])
    );
}

#[tokio::test]
async fn a_sequential_rollback_deletes_only_its_own_target_and_scales_the_statefulset_back_up() {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Restoring, Strategy::Sequential, 400);
    p.steps.stop_source = StepState::Done;
    p.steps.create_target = StepState::Done;
    let scenario = tokio::spawn(async move {
        let mut stuck = sequential_target("Pending");
        stuck["status"]["containerStatuses"] = json!([{"name": "counter", "ready": false, "restartCount": 0,
            "image": "x", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]);
        api.get(&format!("{PODS}/counter-1"), stuck.clone()).await;
        api.get(&format!("{PODS}/counter-1"), stuck.clone()).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        // The pod under the source's name is checked to be ours, and deleted by uid.
        api.get(&format!("{PODS}/counter-1"), stuck.clone()).await;
        let del = api
            .expect(
                Method::DELETE,
                &format!("{PODS}/counter-1"),
                StatusCode::OK,
                Some(stuck),
            )
            .await;
        assert_eq!(del.body["preconditions"]["uid"], "target-uid");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_target, StepState::Done);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_replay, StepState::Done);
        // Back to two replicas: the StatefulSet re-creates counter-1 from its template once
        // the target is gone; unacked messages wait in the primary queue.
        let scale = api
            .expect(Method::PATCH, &format!("{STS}/scale"), StatusCode::OK,
                Some(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "counter"},
                    "spec": {"replicas": 2}})))
            .await;
        assert_eq!(scale.body, json!({"spec": {"replicas": 2}}));
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.resume_source, StepState::Done);
        assert_eq!(api.event().await.0, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert!(st.progress.failure.unwrap().rolled_back);
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(sequential_migration(p), ctx, scenario).await.unwrap();
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![Call::DeleteReplay])
    );
}

#[tokio::test]
async fn a_sequential_rollback_leaves_a_pod_the_statefulset_made_alone() {
    let (ctx, mut api, _backends) = test_context();
    let mut p = progress_at(Phase::Restoring, Strategy::Sequential, 400);
    p.steps.stop_source = StepState::Done;
    p.steps.create_target = StepState::Intended;
    let scenario = tokio::spawn(async move {
        // Someone scaled the StatefulSet up: counter-1 is its fresh pod, not our target.
        let mut theirs = source_pod("StatefulSet");
        theirs["metadata"]["name"] = json!("counter-1");
        api.get(&format!("{PODS}/counter-1"), theirs.clone()).await;
        api.get(&format!("{PODS}/counter-1"), theirs.clone()).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        api.get(&format!("{PODS}/counter-1"), theirs).await;
        // No DELETE: the next request is the status write.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_target, StepState::Done);
        api.status_put(MIG_STATUS).await; // replay queue deleted
        api.expect(Method::PATCH, &format!("{STS}/scale"), StatusCode::OK,
            Some(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "counter"},
                "spec": {"replicas": 2}})))
            .await;
        api.status_put(MIG_STATUS).await;
        assert_eq!(api.event().await.0, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(sequential_migration(p), ctx, scenario).await.unwrap();
}

#[tokio::test]
async fn deleting_an_in_flight_migration_rolls_back_and_releases_the_finalizer() {
    let (ctx, mut api, backends) = test_context();
    let mut obj = migration(Some(progress_at(
        Phase::Transferring,
        Strategy::ShadowPod,
        5,
    )));
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    let scenario = tokio::spawn(async move {
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        assert!(st.progress.failure.unwrap().reason.contains("deleted"));
        api.status_put(MIG_STATUS).await; // replay queue deleted
        assert_eq!(api.event().await.0, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert_eq!(api.event().await.0, "Failed");
        let seen = api
            .expect(
                Method::PATCH,
                "/apis/migration.ms2m.io/v1alpha1/namespaces/default/statefulmigrations/mig",
                StatusCode::OK,
                Some(serde_json::to_value(migration(None)).unwrap()),
            )
            .await;
        assert_eq!(seen.body[1]["op"], "remove");
        api.done().await;
    });
    // Transferring observes the push job first.
    backends
        .push_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Running);
    run(obj, ctx, scenario).await.unwrap();
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![Call::PushJob(None), Call::DeleteReplay])
    );
}

#[tokio::test]
async fn completed_migrations_are_left_alone() {
    let (ctx, api, backends) = test_context();
    let mut p = progress_at(Phase::Completed, Strategy::ShadowPod, 5);
    p.completion_time = Some(Timestamp::now());
    let scenario = tokio::spawn(async move { api.done().await });
    let action = run(migration(Some(p)), ctx, scenario).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(backends.calls().is_empty());
}

// ---------- Direct: agent to agent, imported into the target node's image store ----------

const CKPT: &str = "default.mig-0c5e9a7d";
const LOCAL_IMAGE: &str = "localhost/ms2m/default/mig:default.mig-0c5e9a7d";

fn direct_migration(p: Option<Progress>) -> crate::crd::StatefulMigration {
    let mut obj = migration(p);
    obj.spec.transfer_mode = TransferMode::Direct;
    obj
}

/// Runs one reconcile against a scenario that hands the verifier (and what it saw) back,
/// so a test can follow a migration over several reconciles.
async fn reconcile_with<T>(
    obj: crate::crd::StatefulMigration,
    ctx: Arc<super::Context>,
    scenario: tokio::task::JoinHandle<T>,
) -> (kube::runtime::controller::Action, T) {
    let res = reconcile(Arc::new(obj), ctx).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("scenario finished")
        .expect("scenario assertions held");
    (res.expect("reconcile succeeded"), seen)
}

#[test]
fn direct_mode_plans_an_import_under_a_local_reference() {
    let (plan, _) = super::plan_for(&direct_migration(None)).unwrap();
    assert_eq!(plan.import_reference.as_deref(), Some(LOCAL_IMAGE));
    assert_eq!(plan.checkpoint_id, CKPT);
    let (plan, _) = super::plan_for(&migration(None)).unwrap();
    assert_eq!(plan.import_reference, None, "Registry imports nothing");
}

#[tokio::test]
async fn a_direct_migration_imports_on_the_target_node_and_runs_the_local_image() {
    let (ctx, mut api, backends) = test_context();
    backends.depths.lock().unwrap().extend([Some(0), Some(0)]);
    backends
        .checkpoint_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Succeeded {
            output: CKPT.into(),
            finished_at: None,
        });
    backends
        .direct_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Running);

    // 1: Pending → Checkpointing → Transferring: the direct send, announced first.
    let b = backends.clone();
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(
            st.progress.phase,
            Phase::Checkpointing,
            "Direct is accepted"
        );
        api.status_put(MIG_STATUS).await; // replay topology done
        assert_eq!(api.event().await.0, "Checkpointing");
        api.status_put(MIG_STATUS).await; // checkpoint intended
        api.status_put(MIG_STATUS).await; // checkpoint done
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Transferring);
        assert_eq!(st.progress.steps.transfer, StepState::Intended);
        assert_eq!(
            st.progress.checkpoint_image.as_deref(),
            Some(LOCAL_IMAGE),
            "the reference is in the status before the send starts"
        );
        assert!(
            !b.calls()
                .iter()
                .any(|c| matches!(c, Call::StartDirectSend { .. })),
            "status is written before the side effect"
        );
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.transfer, StepState::Done);
        assert_eq!(st.progress.transfer_job.as_deref(), Some("job-direct-1"));
        assert_eq!(api.event().await.0, "Transferring");
        (api, st)
    });
    let (action, (mut api, st)) =
        reconcile_with(direct_migration(None), ctx.clone(), scenario).await;
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(crate::engine::POLL)
    );
    assert_eq!(
        backends.calls(),
        vec![
            Call::Topology,
            Call::Backlog,
            Call::StartCheckpoint {
                node: "node-a".into(),
                pod: "counter-0".into(),
                container: "counter".into(),
                id: CKPT.into()
            },
            Call::CheckpointJob(Some("job-ckpt-1".into())),
            Call::StartDirectSend {
                node: "node-a".into(),
                target_node: "node-b".into(),
                id: CKPT.into(),
                reference: LOCAL_IMAGE.into()
            },
            Call::DirectSendJob(Some("job-direct-1".into())),
        ]
    );

    // 2: the import is done → Restoring: the target pod runs the local image, never pulled.
    backends
        .direct_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Succeeded {
            output: LOCAL_IMAGE.into(),
            finished_at: None,
        });
    let scenario = tokio::spawn(async move {
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Restoring);
        assert_eq!(st.progress.checkpoint_image.as_deref(), Some(LOCAL_IMAGE));
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        let created = api
            .expect(Method::POST, PODS, StatusCode::CREATED, None)
            .await;
        let pod = created.body;
        assert_eq!(pod["metadata"]["name"], TARGET);
        assert_eq!(pod["spec"]["nodeName"], "node-b");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["name"], "counter");
        assert_eq!(c["image"], LOCAL_IMAGE);
        assert_eq!(c["imagePullPolicy"], "Never");
        assert_eq!(
            pod["metadata"]["annotations"]["migration.ms2m.io/checkpoint-image"],
            LOCAL_IMAGE
        );
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.create_target, StepState::Done);
        assert_eq!(api.event().await.0, "Restoring");
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Pending", Some("ContainerCreating")),
        )
        .await;
        (api, st)
    });
    let (_, (mut api, st)) =
        reconcile_with(direct_migration(Some(st.progress)), ctx.clone(), scenario).await;

    // 3: Running → replay, stop the source once caught up, finalize; the image stays (the
    // target runs from it).
    backends.depths.lock().unwrap().extend([
        Some(0),
        Some(0),
        Some(0),
        Some(0),
        Some(0),
        None,
        None,
    ]);
    let scenario = tokio::spawn(async move {
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Running", None),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Replaying);
        api.status_put(MIG_STATUS).await; // START_REPLAY sent
        assert_eq!(api.event().await.0, "Replaying");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.replay.stop_reason.as_deref(), Some("CaughtUp"));
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.expect(
            Method::PATCH,
            &format!("{PODS}/counter-0"),
            StatusCode::OK,
            Some(source_pod("ReplicaSet")),
        )
        .await;
        api.expect(
            Method::PATCH,
            &format!("{PODS}/{TARGET}"),
            StatusCode::OK,
            Some(pod_in_phase(TARGET, "Running", None)),
        )
        .await;
        api.expect(
            Method::DELETE,
            &format!("{PODS}/counter-0"),
            StatusCode::OK,
            Some(source_pod("ReplicaSet")),
        )
        .await;
        api.status_put(MIG_STATUS).await; // source stopped
        api.not_found(Method::GET, &format!("{PODS}/counter-0"))
            .await;
        api.status_put(MIG_STATUS).await; // fence intended
        api.status_put(MIG_STATUS).await; // fence done
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Finalizing);
        api.status_put(MIG_STATUS).await; // cut over
        assert_eq!(api.event().await.0, "Finalizing");
        api.status_put(MIG_STATUS).await; // END_REPLAY intended
        api.status_put(MIG_STATUS).await; // END_REPLAY sent
        api.status_put(MIG_STATUS).await; // delete intended
        api.status_put(MIG_STATUS).await; // replay queue deleted
        api.status_put(MIG_STATUS).await; // remove source intended
        api.not_found(Method::DELETE, &format!("{PODS}/counter-0"))
            .await;
        api.status_put(MIG_STATUS).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Completed);
        assert_eq!(st.progress.checkpoint_image.as_deref(), Some(LOCAL_IMAGE));
        assert_eq!(api.event().await.0, "Completed");
        api.done().await;
    });
    let (action, ()) = reconcile_with(direct_migration(Some(st.progress)), ctx, scenario).await;
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let calls: Vec<Call> = backends
        .calls()
        .into_iter()
        .filter(|c| !matches!(c, Call::Depth(_)))
        .collect();
    assert!(
        !calls.iter().any(|c| matches!(c, Call::DeleteImage { .. })),
        "{calls:?}"
    );
    assert_eq!(
        calls[calls.len() - 3..],
        then_checkpoints_deleted(vec![Call::DeleteReplay])[..],
        "no further agent work after the import but deleting both copies of the checkpoint"
    );
}

#[tokio::test]
async fn a_direct_target_without_its_image_is_rolled_back_and_the_image_removed() {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Restoring, Strategy::ShadowPod, 1);
    p.checkpoint_image = Some(LOCAL_IMAGE.into());
    p.steps.create_target = StepState::Done;
    let scenario = tokio::spawn(async move {
        // Never pulled and not in the node's store: it never will be, so no waiting for
        // the phase timeout.
        api.get(
            &format!("{PODS}/{TARGET}"),
            pod_in_phase(TARGET, "Pending", Some("ErrImageNeverPull")),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        let reason = st.progress.failure.unwrap().reason;
        assert!(reason.contains("ErrImageNeverPull"), "{reason}");
        assert_eq!(st.progress.steps.delete_image, StepState::Intended);
        api.expect(
            Method::DELETE,
            &format!("{PODS}/{TARGET}"),
            StatusCode::OK,
            Some(pod_in_phase(TARGET, "Pending", None)),
        )
        .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_target, StepState::Done);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_replay, StepState::Done);
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_image, StepState::Done);
        assert_eq!(api.event().await.0, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert!(st.progress.failure.unwrap().rolled_back);
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    let action = run(direct_migration(Some(p)), ctx, scenario).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![
            Call::DeleteReplay,
            Call::DeleteImage {
                node: "node-b".into(),
                reference: LOCAL_IMAGE.into()
            },
        ]),
        "the image goes after the pod that uses it"
    );
}

#[tokio::test]
async fn deleting_a_direct_migration_mid_transfer_reports_a_failed_image_removal_and_still_finishes()
 {
    let (ctx, mut api, backends) = test_context();
    let mut p = progress_at(Phase::Transferring, Strategy::ShadowPod, 5);
    p.checkpoint_image = Some(LOCAL_IMAGE.into());
    p.transfer_job = Some("job-direct-1".into());
    let mut obj = direct_migration(Some(p));
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    backends
        .direct_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Running);
    *backends.delete_image_error.lock().unwrap() =
        Some("agent at http://10.0.0.12:9411 unreachable".into());
    let scenario = tokio::spawn(async move {
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::RollingBack);
        api.status_put(MIG_STATUS).await; // replay queue deleted
        let ev = api
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
                StatusCode::CREATED,
                None,
            )
            .await;
        assert_eq!(ev.body["type"], "Warning");
        assert_eq!(ev.body["reason"], "ImageCleanupFailed");
        let note = ev.body["note"].as_str().unwrap_or_default();
        assert!(
            note.contains(LOCAL_IMAGE) && note.contains("node-b") && note.contains("unreachable"),
            "{note}"
        );
        // Best effort: recorded as done, never retried.
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.steps.delete_image, StepState::Done);
        assert_eq!(api.event().await.0, "RollingBack");
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        assert!(st.progress.failure.unwrap().rolled_back);
        assert_eq!(api.event().await.0, "Failed");
        let seen = api
            .expect(
                Method::PATCH,
                "/apis/migration.ms2m.io/v1alpha1/namespaces/default/statefulmigrations/mig",
                StatusCode::OK,
                Some(serde_json::to_value(migration(None)).unwrap()),
            )
            .await;
        assert_eq!(seen.body[1]["op"], "remove", "the finalizer is released");
        api.done().await;
    });
    run(obj, ctx, scenario).await.unwrap();
    assert_eq!(
        backends.calls(),
        then_checkpoints_deleted(vec![
            Call::DirectSendJob(Some("job-direct-1".into())),
            Call::DeleteReplay,
            Call::DeleteImage {
                node: "node-b".into(),
                reference: LOCAL_IMAGE.into()
            },
        ])
    );
}

fn node_with_memory(name: &str, memory: &str, unschedulable: bool) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"memory": memory},
            "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn list(kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The reference implementation lets `targetNode` be omitted; the controller then
/// applies the documented rule (controller::target_node) before anything else and
/// records its choice, so every later round and a restarted controller use the same node.
#[tokio::test]
async fn an_omitted_target_node_is_chosen_by_free_memory_and_recorded() {
    let (ctx, mut api, backends) = test_context();
    backends
        .agent_nodes
        .lock()
        .unwrap()
        .extend(["node-a", "node-b", "node-c", "node-d"].map(String::from));
    backends
        .checkpoint_jobs
        .lock()
        .unwrap()
        .push_back(JobView::Running);
    let mut obj = migration(None);
    obj.spec.target_node = None;
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get(
            "/api/v1/nodes",
            list(
                "NodeList",
                vec![
                    node_with_memory("node-a", "64Gi", false),
                    node_with_memory("node-b", "8Gi", false),
                    node_with_memory("node-c", "16Gi", false),
                    node_with_memory("node-d", "64Gi", true),
                    node_with_memory("node-e", "64Gi", false),
                ],
            ),
        )
        .await;
        // Only the eligible nodes' pods are listed: b and c (a runs the source, d is
        // cordoned, e has no agent). c has 16 GiB with 10 GiB requested: b's 8 free win.
        for (node, requested) in [("node-b", "1Gi"), ("node-c", "10Gi")] {
            let seen = api
                .get(
                    "/api/v1/pods",
                    list(
                        "PodList",
                        vec![json!({"metadata": {"name": "p"}, "spec": {"nodeName": node,
                            "containers": [{"name": "c", "resources": {"requests": {"memory": requested}}}]}})],
                    ),
                )
                .await;
            assert!(
                seen.query.contains(&format!("spec.nodeName%3D{node}")),
                "{}",
                seen.query
            );
        }
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Checkpointing);
        assert_eq!(st.progress.target_node.as_deref(), Some("node-b"));
        let seen = serde_json::to_value(&st).unwrap();
        assert_eq!(seen["targetNode"], "node-b", "the Target column reads it");
        assert_eq!(
            seen["phaseTimings"]["Pending"]
                .as_str()
                .map(|s| s.ends_with('s')),
            Some(true)
        );
    });
    // One round is enough to see the choice; the rest of the migration is as usual.
    let _ = tokio::time::timeout(Duration::from_secs(3), reconcile(Arc::new(obj), ctx)).await;
    tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("scenario finished")
        .expect("scenario assertions held");
}

#[tokio::test]
async fn no_eligible_target_node_fails_the_migration_with_the_reasons() {
    let (ctx, mut api, backends) = test_context();
    backends.agent_nodes.lock().unwrap().insert("node-a".into());
    let mut obj = migration(None);
    obj.spec.target_node = None;
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        api.get(
            "/api/v1/nodes",
            list(
                "NodeList",
                vec![
                    node_with_memory("node-a", "64Gi", false),
                    node_with_memory("node-b", "64Gi", false),
                ],
            ),
        )
        .await;
        api.get(&format!("{PODS}/counter-0"), source_pod("ReplicaSet"))
            .await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        let reason = &st.progress.failure.as_ref().unwrap().reason;
        assert!(reason.contains("node-b: no ms2m agent"), "{reason}");
        assert!(reason.contains("set spec.targetNode"), "{reason}");
        let failed = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", "MigrationFailed")
        );
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(obj, ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty(), "nothing was touched");
}

/// The identity swap is accepted in the spec but not built: a ShadowPod migration of a
/// StatefulSet pod that asks for it fails before touching anything, and says so.
#[tokio::test]
async fn an_identity_swap_request_for_a_statefulset_pod_fails_in_pending_untouched() {
    let (ctx, mut api, backends) = test_context();
    let mut obj = migration(None);
    obj.spec.migration_strategy = Some(Strategy::ShadowPod);
    obj.spec.identity_swap_mode = crate::crd::IdentitySwapMode::ExchangeFence;
    let scenario = tokio::spawn(async move {
        api.get(&format!("{PODS}/counter-0"), source_pod("StatefulSet"))
            .await;
        api.get("/api/v1/nodes/node-b", node("node-b", true)).await;
        let st = api.status_put(MIG_STATUS).await;
        assert_eq!(st.progress.phase, Phase::Failed);
        let reason = &st.progress.failure.as_ref().unwrap().reason;
        assert!(
            reason.contains("identitySwapMode ExchangeFence is not implemented"),
            "{reason}"
        );
        assert_eq!(api.event().await.0, "Failed");
        api.done().await;
    });
    run(obj, ctx, scenario).await.unwrap();
    assert!(backends.calls().is_empty(), "nothing was touched");
}
