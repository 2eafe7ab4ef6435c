//! The `StatefulMigration` controller: kube-rs reconciler driving the phase engine.
//!
//! Each reconcile re-runs rounds of the engine (observe → decide → persist → act) until
//! the engine asks to wait. Status is written with `PUT .../status` carrying the last
//! seen `resourceVersion`: a controller holding stale progress gets a 409 and retries
//! from the current object instead of overwriting it. A finalizer makes a deleted
//! in-flight migration roll back before it disappears. Each phase change is an Event.

pub mod api_calls;
mod backends;
pub mod target_node;
pub mod target_pod;
mod world;

#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
#[cfg(test)]
mod reference_crs_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        watcher::Config,
    },
};
use tokio::sync::Mutex;
use tracing::{info, warn};

pub use backends::{AgentDiscovery, Backends, ClusterBackends, MigrationRef};

use crate::crd::{FINALIZER, StatefulMigration};
use crate::driver::{self, WorldError};
use crate::engine::{Next, Phase, Plan, QueueNames, Strategy, TransferMode, Transition};
use world::KubeWorld;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    World(#[from] WorldError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("migration object lacks {0}")]
    Incomplete(&'static str),
    #[error(
        "the API server has no StatefulMigration resource: install ms2m with `kubectl apply -k deploy/overlays/<yours>` (or just deploy/base/crd.yaml)"
    )]
    CrdMissing,
    /// Anything but a 404 says nothing about the CRD: no API server, no permission.
    #[error("listing StatefulMigrations through the Kubernetes API")]
    ApiUnavailable(#[source] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub backends: Arc<dyn Backends>,
    /// Permanent action failures waiting to be seen by the engine, by migration uid.
    fatal: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(client: Client, backends: Arc<dyn Backends>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from("ms2m-shim"));
        Self {
            client,
            recorder,
            backends,
            fatal: Mutex::new(HashMap::new()),
        }
    }
}

/// Most engine rounds one reconcile runs before handing back to the queue.
const MAX_ROUNDS: usize = 16;

/// Derives the engine's plan and names from the object. Names depend on the uid so a
/// re-created migration never collides with the leftovers of an earlier one, except a
/// Sequential target: it is the StatefulSet's pod, under the source's name (so its
/// control queue is `ms2m.control.<source>`, which is also what the restored consumer,
/// reading its hostname, listens on).
pub fn plan_for(m: &StatefulMigration) -> Result<(Plan, MigrationRef)> {
    let progress = m.status.as_ref().map(|s| &s.progress);
    let resolved = progress.and_then(|p| p.strategy);
    let chosen = progress.and_then(|p| p.target_node.as_deref());
    plan_with(m, resolved, chosen)
}

/// [`plan_for`] with the strategy resolved so far (`None`: not yet) and the target node
/// chosen so far (used when the spec names none; `None`: not yet, the plan's node is
/// empty).
fn plan_with(
    m: &StatefulMigration,
    resolved: Option<Strategy>,
    chosen_target: Option<&str>,
) -> Result<(Plan, MigrationRef)> {
    let ns = m.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = m.name_any();
    let uid = m.uid().ok_or(Error::Incomplete("a uid"))?;
    let short: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let spec = &m.spec;
    let src: String = spec.source_pod.chars().take(50).collect();
    let target_name = if resolved.or(spec.migration_strategy) == Some(Strategy::Sequential) {
        spec.source_pod.clone()
    } else {
        format!(
            "{}-m{}",
            src.trim_end_matches(['-', '.']),
            &short[..5.min(short.len())]
        )
    };
    let checkpoint_id: String = format!("{ns}.{name}-{short}").chars().take(128).collect();
    let tag: String = format!("{ns}.{name}-{short}").chars().take(128).collect();
    let mq = &spec.message_queue_config;
    let queues = QueueNames::new(
        &mq.exchange_name,
        &mq.queue_name,
        &mq.routing_key,
        &target_name,
    );
    let import_reference = (spec.transfer_mode == TransferMode::Direct)
        .then(|| target_pod::local_image_reference(&ns, &name, &checkpoint_id));
    let plan = Plan {
        replay_mode: spec.replay_mode,
        replay_cutoff: spec.replay_cutoff(),
        phase_timeout: spec.phase_timeout(),
        transfer_mode: spec.transfer_mode,
        strategy: spec.migration_strategy,
        target_node: spec
            .target_node
            .as_deref()
            .or(chosen_target)
            .unwrap_or_default()
            .to_owned(),
        target_name,
        checkpoint_id,
        checkpoint_image: format!("{}:{tag}", spec.checkpoint_image_repository),
        import_reference,
        queues: queues.clone(),
    };
    let mref = MigrationRef {
        namespace: ns,
        name,
        uid,
        spec: spec.clone(),
        queues,
    };
    Ok((plan, mref))
}

pub async fn reconcile(m: Arc<StatefulMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = m.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let api: Api<StatefulMigration> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, m, |event| async {
        match event {
            Finalizer::Apply(m) => drive(&m, &ctx, false).await,
            Finalizer::Cleanup(m) => drive(&m, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Runs engine rounds for one migration. `deleting`: roll back and return once terminal
/// (the finalizer is removed after that).
async fn drive(m: &StatefulMigration, ctx: &Arc<Context>, deleting: bool) -> Result<Action> {
    let (mut plan, mut mref) = plan_for(m)?;
    let mut progress = m.status.clone().map(|s| s.progress).unwrap_or_default();
    let mut named_for = progress.strategy;
    if progress.phase.is_terminal() {
        ctx.backends.forget(&mref).await;
        return Ok(Action::await_change());
    }
    let mut world = KubeWorld::new(ctx.clone(), m, mref.clone(), deleting);
    let mut fatal = ctx.fatal.lock().await.remove(&mref.uid);
    if progress.target_node.is_none() {
        if !plan.target_node.is_empty() {
            progress.target_node = Some(plan.target_node.clone());
        } else if progress.phase == Phase::Pending && !deleting {
            match choose_target_node(ctx, m, &mref).await? {
                Some(target_node::Choice::Node(n)) => {
                    info!(migration = %mref.name, node = %n, "chose the target node");
                    progress.target_node = Some(n);
                    (plan, mref) = plan_with(m, named_for, progress.target_node.as_deref())?;
                    world.set_ref(mref.clone());
                }
                Some(target_node::Choice::NoneEligible(why)) => {
                    fatal.get_or_insert(why);
                }
                // No source to measure against: the engine fails the migration on it.
                None => {}
            }
        }
    }
    for _ in 0..MAX_ROUNDS {
        if progress.strategy != named_for {
            named_for = progress.strategy;
            (plan, mref) = plan_with(m, named_for, progress.target_node.as_deref())?;
            world.set_ref(mref.clone());
        }
        // The engine records the name when it starts, before the strategy is resolved.
        if progress.target_pod_name.is_some() {
            progress.target_pod_name = Some(plan.target_name.clone());
        }
        let res = driver::round(&mut world, &plan, &mut progress, &mut fatal).await;
        if let Some(f) = fatal.take() {
            ctx.fatal.lock().await.insert(mref.uid.clone(), f);
        }
        let decision = res?;
        for t in &decision.transitions {
            publish(ctx, m, t).await;
        }
        match decision.next {
            Next::Now => {
                if let Some(f) = ctx.fatal.lock().await.remove(&mref.uid) {
                    fatal = Some(f);
                }
                continue;
            }
            Next::After(d) => return Ok(Action::requeue(d)),
            Next::Stop => {
                world.release_checkpoints(&plan, &progress).await;
                ctx.backends.forget(&mref).await;
                info!(migration = %mref.name, phase = %progress.phase, "migration finished");
                return Ok(Action::await_change());
            }
        }
    }
    Ok(Action::requeue(Duration::from_millis(100)))
}

/// Applies the target-node rule ([`target_node`]) for a spec that names no node; `None`
/// when the source pod is gone or unscheduled (nothing to choose against).
async fn choose_target_node(
    ctx: &Context,
    m: &StatefulMigration,
    mref: &MigrationRef,
) -> Result<Option<target_node::Choice>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &mref.namespace);
    let Some(source) = pods.get_opt(&m.spec.source_pod).await? else {
        return Ok(None);
    };
    let Some(source_node) = source.spec.and_then(|s| s.node_name) else {
        return Ok(None);
    };
    let agents = ctx.backends.agent_nodes().await?;
    Ok(Some(
        target_node::choose_in_cluster(&ctx.client, &source_node, &agents).await?,
    ))
}

async fn publish(ctx: &Context, m: &StatefulMigration, t: &Transition) {
    let type_ = match t.to {
        Phase::Failed | Phase::RollingBack => EventType::Warning,
        _ => EventType::Normal,
    };
    let ev = Event {
        type_,
        reason: t.to.as_str().to_owned(),
        note: Some(truncate(&t.note, 1000)),
        action: "Migrate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &m.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn error_policy(m: Arc<StatefulMigration>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(migration = %m.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process is told to stop.
pub async fn run(client: Client, discovery: AgentDiscovery) -> Result<()> {
    let migrations: Api<StatefulMigration> = Api::all(client.clone());
    migrations
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.is_not_found() => Error::CrdMissing,
            e => Error::ApiUnavailable(e),
        })?;
    let backends = Arc::new(ClusterBackends::new(client.clone(), discovery));
    let ctx = Arc::new(Context::new(client, backends));
    Controller::new(migrations, Config::default().any_semantic())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile error");
            }
        })
        .await;
    Ok(())
}
