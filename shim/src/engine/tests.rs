//! Table tests per phase, plus a simulated world that runs whole migrations with a crash
//! injected at every point of the driver loop.

use std::time::Duration;

use jiff::Timestamp;

use super::*;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn plan() -> Plan {
    Plan {
        replay_mode: ReplayMode::Cutoff,
        replay_cutoff: Some(Duration::from_secs(30)),
        phase_timeout: Duration::from_secs(120),
        transfer_mode: TransferMode::Registry,
        strategy: None,
        target_node: "node-b".into(),
        target_name: "counter-ms2m".into(),
        checkpoint_id: "mig-1".into(),
        checkpoint_image: "reg:5000/ckpt/counter:mig-1".into(),
        import_reference: None,
        queues: QueueNames::new("orders", "orders.q", "", "counter-ms2m"),
    }
}

const IMPORTED: &str = "localhost/ms2m/default/mig:mig-1";

/// Kubernetes Direct: the target agent imports the checkpoint into its node's store.
fn direct_plan() -> Plan {
    Plan {
        transfer_mode: TransferMode::Direct,
        import_reference: Some(IMPORTED.into()),
        ..plan()
    }
}

fn src(node: &str) -> SourceView {
    SourceView {
        node: node.into(),
        running: true,
        has_container: true,
        natural_strategy: Strategy::ShadowPod,
    }
}

fn healthy(now: Timestamp) -> Observation {
    Observation {
        source: Some(src("node-a")),
        target_node_ready: Some(true),
        ..Observation::at(now)
    }
}

/// Progress as it stands on entering `phase` at t(0), with the steps before it done.
fn at_phase(phase: Phase, strategy: Strategy) -> Progress {
    let mut p = Progress {
        phase,
        start_time: Some(t(0)),
        phase_started_at: Some(t(0)),
        source_node: Some("node-a".into()),
        strategy: Some(strategy),
        target_pod_name: Some("counter-ms2m".into()),
        phase_timings: vec![PhaseTiming {
            phase,
            started_at: t(0),
            duration_ms: None,
        }],
        ..Progress::default()
    };
    let order = [
        Phase::Checkpointing,
        Phase::Transferring,
        Phase::Restoring,
        Phase::Replaying,
        Phase::Finalizing,
    ];
    let reached = |ph: Phase| {
        order.iter().position(|x| *x == ph).unwrap()
            < order.iter().position(|x| *x == phase).unwrap_or(0)
    };
    if reached(Phase::Checkpointing) {
        p.steps.replay_topology = StepState::Done;
        p.steps.checkpoint = StepState::Done;
        p.checkpoint_id = Some("mig-1".into());
    }
    if reached(Phase::Transferring) {
        p.steps.transfer = StepState::Done;
        p.checkpoint_image = Some("reg:5000/ckpt/counter:mig-1".into());
    }
    if reached(Phase::Restoring) {
        p.steps.create_target = StepState::Done;
        if strategy == Strategy::Sequential {
            p.steps.stop_source = StepState::Done;
        }
    }
    if reached(Phase::Replaying) {
        p.steps.start_replay = StepState::Done;
        p.steps.stop_source = StepState::Done;
        p.steps.fence_primary = StepState::Done;
    }
    p
}

// ---------- Pending ----------

#[test]
fn pending_validates_and_records_source_node() {
    let d = decide(&plan(), &Progress::default(), &healthy(t(0)));
    assert_eq!(d.progress.phase, Phase::Checkpointing);
    assert_eq!(d.progress.source_node.as_deref(), Some("node-a"));
    assert_eq!(d.progress.strategy, Some(Strategy::ShadowPod));
    assert_eq!(d.actions, vec![Action::EnsureReplayTopology]);
    assert_eq!(d.progress.steps.replay_topology, StepState::Intended);
    assert_eq!(d.progress.steps.checkpoint, StepState::NotStarted);
    assert_eq!(d.transitions.len(), 1);
}

#[test]
fn pending_failures_go_straight_to_failed_without_actions() {
    let cases: Vec<(&str, Observation)> = vec![
        (
            "source not found",
            Observation {
                source: None,
                ..healthy(t(0))
            },
        ),
        (
            "source is not running",
            Observation {
                source: Some(SourceView {
                    running: false,
                    ..src("node-a")
                }),
                ..healthy(t(0))
            },
        ),
        (
            "no such container",
            Observation {
                source: Some(SourceView {
                    has_container: false,
                    ..src("node-a")
                }),
                ..healthy(t(0))
            },
        ),
        (
            "node-b not found",
            Observation {
                target_node_ready: None,
                ..healthy(t(0))
            },
        ),
        (
            "not Ready",
            Observation {
                target_node_ready: Some(false),
                ..healthy(t(0))
            },
        ),
        (
            "already runs on the target node",
            Observation {
                source: Some(src("node-b")),
                ..healthy(t(0))
            },
        ),
        (
            "deleted",
            Observation {
                deleting: true,
                ..healthy(t(0))
            },
        ),
        (
            "boom",
            Observation {
                fatal: Some("boom".into()),
                ..healthy(t(0))
            },
        ),
    ];
    for (needle, obs) in cases {
        let d = decide(&plan(), &Progress::default(), &obs);
        assert_eq!(d.progress.phase, Phase::Failed, "{needle}");
        assert!(d.actions.is_empty(), "{needle}: {:?}", d.actions);
        let f = d.progress.failure.expect("failure recorded");
        assert!(f.reason.contains(needle), "{needle} not in {}", f.reason);
        assert_eq!(d.next, Next::Stop);
        assert!(d.progress.completion_time.is_some());
    }
}

#[test]
fn strategy_is_auto_from_owner_unless_given() {
    let sts = Observation {
        source: Some(SourceView {
            natural_strategy: Strategy::Sequential,
            ..src("node-a")
        }),
        ..healthy(t(0))
    };
    assert_eq!(
        decide(&plan(), &Progress::default(), &sts)
            .progress
            .strategy,
        Some(Strategy::Sequential)
    );
    let forced = Plan {
        strategy: Some(Strategy::ShadowPod),
        ..plan()
    };
    assert_eq!(
        decide(&forced, &Progress::default(), &sts)
            .progress
            .strategy,
        Some(Strategy::ShadowPod)
    );
}

// ---------- Checkpointing ----------

#[test]
fn checkpointing_table() {
    struct Case {
        name: &'static str,
        steps_done: bool,
        job: JobView,
        now: i64,
        phase: Phase,
        actions: Vec<Action>,
    }
    let start = vec![Action::EnsureReplayTopology];
    let cases = vec![
        Case {
            name: "fresh",
            steps_done: false,
            job: JobView::NotStarted,
            now: 1,
            phase: Phase::Checkpointing,
            actions: start.clone(),
        },
        Case {
            name: "running",
            steps_done: true,
            job: JobView::Running,
            now: 1,
            phase: Phase::Checkpointing,
            actions: vec![],
        },
        Case {
            name: "agent forgot the job",
            steps_done: true,
            job: JobView::NotStarted,
            now: 1,
            phase: Phase::Checkpointing,
            actions: vec![Action::StartCheckpoint {
                checkpoint_id: "mig-1".into(),
            }],
        },
        Case {
            name: "success",
            steps_done: true,
            job: JobView::Succeeded {
                output: "mig-1".into(),
                finished_at: None,
            },
            now: 2,
            phase: Phase::Transferring,
            actions: vec![Action::StartTransfer {
                checkpoint_id: "mig-1".into(),
                mode: TransferMode::Registry,
                image: "reg:5000/ckpt/counter:mig-1".into(),
            }],
        },
        Case {
            name: "failure rolls back the replay queue",
            steps_done: true,
            job: JobView::Failed {
                reason: "criu_failed".into(),
            },
            now: 2,
            phase: Phase::RollingBack,
            actions: vec![Action::DeleteReplayQueue],
        },
        Case {
            name: "timeout rolls back",
            steps_done: true,
            job: JobView::Running,
            now: 121,
            phase: Phase::RollingBack,
            actions: vec![Action::DeleteReplayQueue],
        },
    ];
    for c in cases {
        let mut p = at_phase(Phase::Checkpointing, Strategy::ShadowPod);
        if c.steps_done {
            p.steps.replay_topology = StepState::Done;
            p.steps.checkpoint = StepState::Done;
        }
        let obs = Observation {
            checkpoint: c.job,
            ..healthy(t(c.now))
        };
        let d = decide(&plan(), &p, &obs);
        assert_eq!(d.progress.phase, c.phase, "{}", c.name);
        assert_eq!(d.actions, c.actions, "{}", c.name);
    }
}

#[test]
fn a_checkpoint_is_never_requested_without_the_replay_topology_first() {
    for topo in [StepState::NotStarted, StepState::Intended] {
        let mut p = at_phase(Phase::Checkpointing, Strategy::ShadowPod);
        p.steps.replay_topology = topo;
        let obs = Observation {
            backlog_settled: Some(true),
            ..healthy(t(1))
        };
        let d = decide(&plan(), &p, &obs);
        assert_eq!(d.actions, vec![Action::EnsureReplayTopology]);
    }
}

#[test]
fn the_checkpoint_waits_for_the_source_to_consume_the_pre_binding_backlog() {
    // The messaging layer's verdict (from fresh statistics) -> checkpoint now?
    for (settled, go) in [(Some(true), true), (Some(false), false), (None, false)] {
        let mut p = at_phase(Phase::Checkpointing, Strategy::ShadowPod);
        p.steps.replay_topology = StepState::Done;
        let obs = Observation {
            backlog_settled: settled,
            ..healthy(t(1))
        };
        let d = decide(&plan(), &p, &obs);
        if go {
            assert_eq!(
                d.actions,
                vec![Action::StartCheckpoint {
                    checkpoint_id: "mig-1".into()
                }],
                "{settled:?}"
            );
            assert_eq!(d.progress.replay.backlog_drained_at, Some(t(1)));
        } else {
            assert!(d.actions.is_empty(), "{settled:?}");
            assert_eq!(d.next, Next::After(REPLAY_POLL));
        }
    }
    // A source that never gets there fails the migration, with the reason.
    let mut p = at_phase(Phase::Checkpointing, Strategy::ShadowPod);
    p.steps.replay_topology = StepState::Done;
    let obs = Observation {
        backlog_settled: Some(false),
        ..healthy(t(200))
    };
    let d = decide(&plan(), &p, &obs);
    assert_eq!(d.progress.phase, Phase::RollingBack);
    assert!(
        d.progress
            .failure
            .unwrap()
            .reason
            .contains("published before the replay queue was bound")
    );
}

#[test]
fn a_phase_ends_when_its_job_finished_not_when_the_driver_noticed() {
    let mut p = at_phase(Phase::Checkpointing, Strategy::ShadowPod);
    p.steps.replay_topology = StepState::Done;
    p.steps.checkpoint = StepState::Done;
    let finished = t(0) + jiff::SignedDuration::from_millis(230);
    let obs = Observation {
        checkpoint: JobView::Succeeded {
            output: "mig-1".into(),
            finished_at: Some(finished),
        },
        ..healthy(t(2))
    };
    let d = decide(&plan(), &p, &obs);
    assert_eq!(d.progress.phase, Phase::Transferring);
    assert_eq!(d.progress.phase_timings[0].duration_ms, Some(230));
    assert_eq!(d.progress.phase_timings[1].started_at, finished);
    assert_eq!(d.progress.phase_started_at, Some(finished));
    // An agent clock ahead of ours, or behind the phase start, is clamped.
    for (skewed, expect_ms) in [(t(9), 2000), (t(-5), 0)] {
        let obs = Observation {
            checkpoint: JobView::Succeeded {
                output: "mig-1".into(),
                finished_at: Some(skewed),
            },
            ..healthy(t(2))
        };
        let d = decide(&plan(), &p, &obs);
        assert_eq!(d.progress.phase_timings[0].duration_ms, Some(expect_ms));
    }
}

// ---------- Transferring ----------

#[test]
fn transferring_table() {
    let cases: Vec<(JobView, i64, Phase, usize)> = vec![
        (JobView::Running, 5, Phase::Transferring, 0),
        (
            JobView::Succeeded {
                output: "reg:5000/ckpt/counter:mig-1".into(),
                finished_at: None,
            },
            5,
            Phase::Restoring,
            1,
        ),
        (
            JobView::Failed {
                reason: "registry_error".into(),
            },
            5,
            Phase::RollingBack,
            1,
        ),
        (JobView::Running, 500, Phase::RollingBack, 1),
        (JobView::NotStarted, 5, Phase::Transferring, 1),
    ];
    for (job, now, phase, n_actions) in cases {
        let mut p = at_phase(Phase::Transferring, Strategy::ShadowPod);
        p.steps.transfer = StepState::Done;
        let obs = Observation {
            transfer: job.clone(),
            ..healthy(t(now))
        };
        let d = decide(&plan(), &p, &obs);
        assert_eq!(d.progress.phase, phase, "{job:?}");
        assert_eq!(d.actions.len(), n_actions, "{job:?}: {:?}", d.actions);
    }
}

#[test]
fn direct_mode_is_passed_to_the_transfer() {
    let pl = Plan {
        transfer_mode: TransferMode::Direct,
        ..plan()
    };
    let d = decide(
        &pl,
        &at_phase(Phase::Transferring, Strategy::ShadowPod),
        &healthy(t(1)),
    );
    assert!(matches!(
        d.actions[0],
        Action::StartTransfer {
            mode: TransferMode::Direct,
            ..
        }
    ));
}

#[test]
fn a_direct_import_records_its_reference_before_the_send() {
    let p = at_phase(Phase::Transferring, Strategy::ShadowPod);
    assert_eq!(p.checkpoint_image, None);
    let d = decide(&direct_plan(), &p, &healthy(t(1)));
    // Persisted with the intent, so it is in the status before the agent hears of it.
    assert_eq!(d.progress.checkpoint_image.as_deref(), Some(IMPORTED));
    assert_eq!(d.progress.steps.transfer, StepState::Intended);
    assert_eq!(
        d.actions,
        vec![Action::StartTransfer {
            checkpoint_id: "mig-1".into(),
            mode: TransferMode::Direct,
            image: IMPORTED.into(),
        }]
    );
    // Registry records the image only once the push says where it is.
    let d = decide(&plan(), &p, &healthy(t(1)));
    assert_eq!(d.progress.checkpoint_image, None);
}

#[test]
fn a_recorded_import_reference_wins_over_the_plan() {
    let mut p = at_phase(Phase::Transferring, Strategy::ShadowPod);
    p.checkpoint_image = Some("localhost/ms2m/default/mig:older".into());
    p.steps.transfer = StepState::Intended;
    // The agent never saw the first request (crash before it was sent): send again.
    let d = decide(&direct_plan(), &p, &healthy(t(1)));
    assert!(matches!(
        &d.actions[..],
        [Action::StartTransfer { image, .. }] if image == "localhost/ms2m/default/mig:older"
    ));
    // Done: the target is created from what the target agent reports it imported.
    p.steps.transfer = StepState::Done;
    let obs = Observation {
        transfer: JobView::Succeeded {
            output: "localhost/ms2m/default/mig:older".into(),
            finished_at: None,
        },
        ..healthy(t(2))
    };
    let d = decide(&direct_plan(), &p, &obs);
    assert_eq!(d.progress.phase, Phase::Restoring);
    assert_eq!(
        d.actions,
        vec![Action::CreateTarget {
            name: "counter-ms2m".into(),
            image: "localhost/ms2m/default/mig:older".into(),
            node: "node-b".into()
        }]
    );
}

// ---------- Restoring ----------

#[test]
fn shadowpod_restoring_creates_the_target_beside_the_source() {
    let d = decide(
        &plan(),
        &at_phase(Phase::Restoring, Strategy::ShadowPod),
        &healthy(t(1)),
    );
    assert_eq!(
        d.actions,
        vec![Action::CreateTarget {
            name: "counter-ms2m".into(),
            image: "reg:5000/ckpt/counter:mig-1".into(),
            node: "node-b".into()
        }]
    );
}

#[test]
fn sequential_restoring_stops_the_source_and_waits_for_it_to_go() {
    let p = at_phase(Phase::Restoring, Strategy::Sequential);
    let d = decide(&plan(), &p, &healthy(t(1)));
    assert_eq!(d.actions, vec![Action::StopSource]);
    let mut p = d.progress;
    mark_done(&mut p, &Action::StopSource);
    // Still there: wait.
    let d = decide(&plan(), &p, &healthy(t(2)));
    assert!(d.actions.is_empty());
    assert_eq!(d.next, Next::After(POLL));
    // Gone: create.
    let d = decide(
        &plan(),
        &p,
        &Observation {
            source: None,
            ..healthy(t(3))
        },
    );
    assert!(matches!(d.actions[..], [Action::CreateTarget { .. }]));
}

#[test]
fn restoring_table() {
    let cases: Vec<(TargetView, i64, Phase, Vec<Action>)> = vec![
        (
            TargetView::Pending {
                reason: Some("ContainerCreating".into()),
            },
            5,
            Phase::Restoring,
            vec![],
        ),
        (
            TargetView::Running,
            5,
            Phase::Replaying,
            vec![Action::SendStartReplay {
                control_queue: "ms2m.control.counter-ms2m".into(),
                replay_queue: "orders.q.ms2m-replay".into(),
            }],
        ),
        (
            TargetView::Failed {
                reason: "CrashLoopBackOff".into(),
            },
            5,
            Phase::RollingBack,
            vec![
                Action::DeleteTarget {
                    name: "counter-ms2m".into(),
                },
                Action::DeleteReplayQueue,
            ],
        ),
        (
            TargetView::Pending {
                reason: Some("ImagePullBackOff".into()),
            },
            121,
            Phase::RollingBack,
            vec![
                Action::DeleteTarget {
                    name: "counter-ms2m".into(),
                },
                Action::DeleteReplayQueue,
            ],
        ),
    ];
    for (target, now, phase, actions) in cases {
        let mut p = at_phase(Phase::Restoring, Strategy::ShadowPod);
        p.steps.create_target = StepState::Done;
        let obs = Observation {
            target: target.clone(),
            ..healthy(t(now))
        };
        let d = decide(&plan(), &p, &obs);
        assert_eq!(d.progress.phase, phase, "{target:?}");
        assert_eq!(d.actions, actions, "{target:?}");
        if now == 121 {
            let reason = &d.progress.failure.unwrap().reason;
            assert!(
                reason.contains("ImagePullBackOff") && reason.contains("120 s"),
                "{reason}"
            );
        }
    }
}

#[test]
fn sequential_rollback_resumes_the_source() {
    let mut p = at_phase(Phase::Restoring, Strategy::Sequential);
    p.steps.stop_source = StepState::Done;
    p.steps.create_target = StepState::Done;
    let obs = Observation {
        target: TargetView::Failed { reason: "x".into() },
        source: None,
        ..healthy(t(5))
    };
    let d = decide(&plan(), &p, &obs);
    assert_eq!(d.progress.phase, Phase::RollingBack);
    assert_eq!(
        d.actions,
        vec![
            Action::DeleteTarget {
                name: "counter-ms2m".into()
            },
            Action::DeleteReplayQueue,
            Action::ResumeSource
        ]
    );
}

// ---------- Replaying ----------

fn replaying(
    mode: ReplayMode,
    depth: Option<u64>,
    now: i64,
    started: bool,
    stopped: bool,
) -> Decision {
    replaying_with(mode, depth, Some(1), now, started, stopped)
}

fn replaying_with(
    mode: ReplayMode,
    depth: Option<u64>,
    replay_consumers: Option<u32>,
    now: i64,
    started: bool,
    stopped: bool,
) -> Decision {
    let pl = Plan {
        replay_mode: mode,
        ..plan()
    };
    let mut p = at_phase(Phase::Replaying, Strategy::ShadowPod);
    p.steps.stop_source = StepState::NotStarted;
    p.steps.fence_primary = StepState::NotStarted;
    if started {
        p.steps.start_replay = StepState::Done;
        p.replay.started_at = Some(t(0));
    }
    if stopped {
        p.steps.stop_source = StepState::Done;
        p.steps.fence_primary = StepState::Done;
        p.replay.source_stopped_at = Some(t(0));
    }
    let obs = Observation {
        replay_depth: depth,
        replay_consumers,
        primary_consumers: Some(1),
        target: TargetView::Running,
        ..healthy(t(now))
    };
    decide(&pl, &p, &obs)
}

#[test]
fn replaying_table() {
    use ReplayMode::*;
    let start = vec![Action::SendStartReplay {
        control_queue: "ms2m.control.counter-ms2m".into(),
        replay_queue: "orders.q.ms2m-replay".into(),
    }];
    let stop = vec![Action::StopSource];
    /// (name, mode, depth, now, started, stopped, expected phase, actions, stop reason)
    type Case<'a> = (
        &'a str,
        ReplayMode,
        Option<u64>,
        i64,
        bool,
        bool,
        Phase,
        Vec<Action>,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "start",
            Cutoff,
            Some(40),
            0,
            false,
            false,
            Phase::Replaying,
            start.clone(),
            None,
        ),
        (
            "catching up",
            Cutoff,
            Some(12),
            10,
            true,
            false,
            Phase::Replaying,
            vec![],
            None,
        ),
        (
            "caught up",
            Cutoff,
            Some(0),
            10,
            true,
            false,
            Phase::Replaying,
            stop.clone(),
            Some("CaughtUp"),
        ),
        (
            "cutoff",
            Cutoff,
            Some(7),
            30,
            true,
            false,
            Phase::Replaying,
            stop.clone(),
            Some("Cutoff"),
        ),
        (
            "drain stops at once",
            Drain,
            Some(7),
            1,
            true,
            false,
            Phase::Replaying,
            stop.clone(),
            Some("Drain"),
        ),
        (
            "catching up alone",
            Cutoff,
            Some(3),
            40,
            true,
            true,
            Phase::Replaying,
            vec![],
            None,
        ),
        (
            "caught up alone: the cut-over comes first",
            Cutoff,
            Some(0),
            40,
            true,
            true,
            Phase::Finalizing,
            vec![Action::CutOver],
            None,
        ),
    ];
    for (name, mode, depth, now, started, stopped, phase, actions, reason) in cases {
        let d = replaying(mode, depth, now, started, stopped);
        assert_eq!(d.progress.phase, phase, "{name}");
        assert_eq!(d.actions, actions, "{name}");
        if let Some(r) = reason {
            assert_eq!(d.progress.replay.stop_reason.as_deref(), Some(r), "{name}");
        }
    }
}

#[test]
fn an_empty_replay_queue_nobody_consumes_is_not_caught_up() {
    // The restored consumer sleeps before it reconnects: depth 0, no consumer. Neither
    // Cutoff nor Drain may stop the source yet, not even past the cutoff.
    for mode in [ReplayMode::Cutoff, ReplayMode::Drain] {
        for (consumers, now) in [(Some(0), 1), (None, 1), (Some(0), 31)] {
            let d = replaying_with(mode, Some(0), consumers, now, true, false);
            assert!(d.actions.is_empty(), "{mode:?} {consumers:?} at {now}");
            assert_eq!(d.progress.replay.stop_reason, None);
        }
        let d = replaying_with(mode, Some(0), Some(1), 1, true, false);
        assert_eq!(d.actions, vec![Action::StopSource], "{mode:?}");
    }
    // A target that never consumes fails the migration before the point of no return.
    let d = replaying_with(ReplayMode::Cutoff, Some(4), Some(0), 121, true, false);
    assert_eq!(d.progress.phase, Phase::RollingBack);
    let f = d.progress.failure.unwrap();
    assert!(f.reason.contains("did not start consuming"), "{f:?}");
}

#[test]
fn the_primary_queue_is_fenced_only_once_the_source_channel_is_gone() {
    let mut p = at_phase(Phase::Replaying, Strategy::ShadowPod);
    p.steps.stop_source = StepState::NotStarted;
    p.steps.fence_primary = StepState::NotStarted;
    p.steps.start_replay = StepState::Done;
    p.replay.started_at = Some(t(0));
    // The stop is decided with the source consuming the primary queue: remembered.
    let obs = Observation {
        replay_depth: Some(0),
        replay_consumers: Some(1),
        primary_consumers: Some(1),
        ..healthy(t(10))
    };
    let d = decide(&plan(), &p, &obs);
    assert_eq!(d.actions, vec![Action::StopSource]);
    let mut p = d.progress;
    assert_eq!(p.replay.primary_consumers_at_stop, Some(1));
    mark_done(&mut p, &Action::StopSource);
    // Terminating (still there): keep going, the target keeps replaying.
    let waiting = |now: i64, source: bool, primary: Option<u32>| Observation {
        replay_depth: Some(3),
        replay_consumers: Some(1),
        primary_consumers: primary,
        source: source.then(|| src("node-a")),
        ..healthy(t(now))
    };
    let d = decide(&plan(), &p, &waiting(11, true, Some(1)));
    assert!(d.actions.is_empty());
    assert_eq!(d.next, Next::After(REPLAY_POLL));
    // Gone, but the broker has not seen its channel close yet: its prefetch would come
    // back to the primary queue after a purge.
    let d = decide(&plan(), &p, &waiting(12, false, Some(1)));
    assert!(d.actions.is_empty());
    // Channel closed: fence.
    let d = decide(&plan(), &p, &waiting(12, false, Some(0)));
    assert_eq!(d.actions, vec![Action::FencePrimary]);
    // Never goes: past the point of no return, fail without rollback.
    let d = decide(&plan(), &p, &waiting(10 + 120, true, Some(1)));
    assert_eq!(d.progress.phase, Phase::Failed);
    let f = d.progress.failure.unwrap();
    assert!(
        f.reason.contains("the source did not stop") && !f.rolled_back,
        "{f:?}"
    );
    let d = decide(&plan(), &p, &waiting(10 + 120, false, Some(1)));
    let f = d.progress.failure.unwrap();
    assert!(
        f.reason.contains("broker connection did not close"),
        "{f:?}"
    );
}

#[test]
fn replay_counters_track_depth() {
    let d = replaying(ReplayMode::Cutoff, Some(40), 0, false, false);
    assert_eq!(d.progress.replay.depth_at_start, Some(40));
    let mut p = d.progress;
    p.steps.start_replay = StepState::Done;
    for (i, depth) in [55u64, 30, 9].into_iter().enumerate() {
        let obs = Observation {
            replay_depth: Some(depth),
            ..healthy(t(1 + i as i64))
        };
        p = decide(&plan(), &p, &obs).progress;
    }
    assert_eq!(p.replay.peak_depth, Some(55));
    assert_eq!(p.replay.last_depth, Some(9));
}

#[test]
fn failure_after_cutoff_keeps_target_and_queue() {
    // The target never catches up alone: past the point of no return, no rollback.
    let d = replaying(ReplayMode::Cutoff, Some(3), 121, true, true);
    assert_eq!(d.progress.phase, Phase::Failed);
    assert!(d.actions.is_empty());
    let f = d.progress.failure.unwrap();
    assert!(!f.rolled_back);
    assert!(f.reason.contains("did not catch up"), "{}", f.reason);
}

#[test]
fn failure_before_cutoff_rolls_back() {
    let pl = Plan {
        replay_cutoff: Some(Duration::from_secs(1000)),
        ..plan()
    };
    let mut p = at_phase(Phase::Replaying, Strategy::ShadowPod);
    p.steps.start_replay = StepState::Done;
    p.replay.started_at = Some(t(0));
    let d = decide(
        &pl,
        &p,
        &Observation {
            replay_depth: Some(5),
            ..healthy(t(121))
        },
    );
    assert_eq!(d.progress.phase, Phase::RollingBack);
    assert_eq!(
        d.actions,
        vec![
            Action::DeleteTarget {
                name: "counter-ms2m".into()
            },
            Action::DeleteReplayQueue
        ]
    );
}

// ---------- Finalizing / RollingBack / terminal ----------

#[test]
fn finalizing_cuts_over_then_ends_replay_then_deletes_the_left_queue() {
    let mut p = at_phase(Phase::Finalizing, Strategy::ShadowPod);
    let at = |now: i64, depth: u64, consumers: u32| Observation {
        replay_depth: Some(depth),
        replay_consumers: Some(consumers),
        ..healthy(t(now))
    };
    let expect = |now: i64, obs: Observation, actions: Vec<Action>, p: &mut Progress| {
        let d = decide(&plan(), p, &obs);
        assert_eq!(d.actions, actions, "at {now}");
        *p = d.progress;
        for a in &d.actions {
            mark_done(p, a);
        }
    };
    expect(1, at(1, 0, 1), vec![Action::CutOver], &mut p);
    expect(
        1,
        at(1, 0, 1),
        vec![Action::SendEndReplay {
            control_queue: "ms2m.control.counter-ms2m".into(),
        }],
        &mut p,
    );
    // The target still holds the replay queue (or gave messages back): keep it.
    expect(2, at(2, 0, 1), vec![], &mut p);
    expect(2, at(2, 2, 0), vec![], &mut p);
    expect(3, at(3, 0, 0), vec![Action::DeleteReplayQueue], &mut p);
    expect(3, at(3, 0, 0), vec![Action::RemoveSource], &mut p);
    let d = decide(&plan(), &p, &healthy(t(4)));
    assert_eq!(d.progress.phase, Phase::Completed);
    assert_eq!(d.next, Next::Stop);
    assert!(d.progress.completion_time.is_some());
    assert!(d.progress.replay.cut_over_at.is_some());
}

#[test]
fn finalizing_failure_does_not_roll_back() {
    let p = at_phase(Phase::Finalizing, Strategy::ShadowPod);
    let d = decide(
        &plan(),
        &p,
        &Observation {
            fatal: Some("broker gone".into()),
            ..healthy(t(1))
        },
    );
    assert_eq!(d.progress.phase, Phase::Failed);
    assert!(!d.progress.failure.unwrap().rolled_back);
}

#[test]
fn deletion_rolls_back_from_every_phase_before_the_point_of_no_return() {
    for phase in [Phase::Checkpointing, Phase::Transferring, Phase::Restoring] {
        for strategy in [Strategy::ShadowPod, Strategy::Sequential] {
            let mut p = at_phase(phase, strategy);
            p.steps.replay_topology = StepState::Intended;
            let d = decide(
                &plan(),
                &p,
                &Observation {
                    deleting: true,
                    ..healthy(t(1))
                },
            );
            assert_eq!(d.progress.phase, Phase::RollingBack, "{phase} {strategy:?}");
            assert!(d.actions.contains(&Action::DeleteReplayQueue), "{phase}");
            let mut p = d.progress;
            for a in &d.actions {
                mark_done(&mut p, a);
            }
            let d = decide(
                &plan(),
                &p,
                &Observation {
                    deleting: true,
                    ..healthy(t(2))
                },
            );
            assert_eq!(d.progress.phase, Phase::Failed, "{phase}");
            assert!(d.progress.failure.unwrap().reason.contains("deleted"));
        }
    }
}

#[test]
fn terminal_phases_do_nothing() {
    for phase in [Phase::Completed, Phase::Failed] {
        let p = Progress {
            phase,
            start_time: Some(t(0)),
            ..Progress::default()
        };
        let d = decide(
            &plan(),
            &p,
            &Observation {
                deleting: true,
                ..healthy(t(9))
            },
        );
        assert!(d.actions.is_empty());
        assert_eq!(d.next, Next::Stop);
        assert_eq!(d.progress, p);
    }
}

#[test]
fn phase_timings_close_on_each_transition() {
    let d = decide(&plan(), &Progress::default(), &healthy(t(0)));
    let mut p = d.progress;
    p.steps.replay_topology = StepState::Done;
    p.steps.checkpoint = StepState::Done;
    let obs = Observation {
        checkpoint: JobView::Succeeded {
            output: "mig-1".into(),
            finished_at: None,
        },
        ..healthy(t(3))
    };
    let p = decide(&plan(), &p, &obs).progress;
    let phases: Vec<_> = p
        .phase_timings
        .iter()
        .map(|x| (x.phase, x.duration_ms))
        .collect();
    assert_eq!(
        phases,
        vec![
            (Phase::Pending, Some(0)),
            (Phase::Checkpointing, Some(3000)),
            (Phase::Transferring, None)
        ]
    );
}

#[test]
fn progress_round_trips_through_json() {
    let d = decide(&plan(), &Progress::default(), &healthy(t(0)));
    let json = serde_json::to_value(&d.progress).unwrap();
    assert_eq!(json["phase"], "Checkpointing");
    assert_eq!(json["steps"]["replayTopology"], "Intended");
    let back: Progress = serde_json::from_value(json).unwrap();
    assert_eq!(back, d.progress);
}

// ---------- Whole migrations in a simulated world, with crashes ----------

/// A deterministic world the actions act on; it checks the protocol's ordering rules
/// as they happen.
#[derive(Clone, Debug, Default)]
struct World {
    tick: i64,
    topology: bool,
    /// The primary queue is unbound and purged.
    fenced: bool,
    /// The exchange feeds the primary queue again, not the replay queue.
    cut_over: bool,
    checkpoint_started_at: Option<i64>,
    transfer_started_at: Option<i64>,
    target_created_at: Option<i64>,
    target_deleted: bool,
    source_alive: bool,
    source_removed: bool,
    start_replay_sent: u32,
    end_replay_sent: u32,
    replay_queue_deleted: bool,
    fail_checkpoint: bool,
    target_never_runs: bool,
    /// What a finished transfer reports: the pushed or the imported reference.
    transfer_output: String,
    images_deleted: u32,
    backlog: u64,
    /// Messages from before the binding still in the primary queue.
    pre_backlog: u64,
    effects: u32,
}

impl World {
    fn new() -> Self {
        Self {
            source_alive: true,
            backlog: 5,
            pre_backlog: 7,
            transfer_output: "reg:5000/ckpt/counter:mig-1".into(),
            ..Self::default()
        }
    }

    fn observe(&self, strategy: Strategy) -> Observation {
        let now = t(self.tick);
        let job = |started: Option<i64>, output: &str, fail: bool| match started {
            None => JobView::NotStarted,
            Some(s) if self.tick - s < 2 => JobView::Running,
            Some(_) if fail => JobView::Failed {
                reason: "criu_failed".into(),
            },
            Some(_) => JobView::Succeeded {
                output: output.into(),
                finished_at: None,
            },
        };
        let target = match self.target_created_at {
            _ if self.target_deleted => TargetView::Absent,
            None => TargetView::Absent,
            Some(_) if self.target_never_runs => TargetView::Pending {
                reason: Some("ContainerCreating".into()),
            },
            Some(c) if self.tick - c < 2 => TargetView::Pending { reason: None },
            Some(_) => TargetView::Running,
        };
        Observation {
            source: self.source_alive.then(|| SourceView {
                natural_strategy: strategy,
                ..src("node-a")
            }),
            target_node_ready: Some(true),
            checkpoint: job(self.checkpoint_started_at, "mig-1", self.fail_checkpoint),
            transfer: job(self.transfer_started_at, &self.transfer_output, false),
            target,
            replay_depth: self.topology.then_some(self.backlog),
            // The restored target subscribes to the replay queue once told, and leaves it
            // after END_REPLAY; the source consumes the primary queue while it lives.
            replay_consumers: Some(u32::from(
                self.start_replay_sent > 0 && self.end_replay_sent == 0,
            )),
            primary_consumers: Some(u32::from(self.source_alive)),
            backlog_settled: Some(self.pre_backlog == 0),
            ..Observation::at(now)
        }
    }

    fn apply(&mut self, a: &Action) {
        self.effects += 1;
        match a {
            Action::EnsureReplayTopology => self.topology = true,
            Action::StartCheckpoint { .. } => {
                assert!(
                    self.topology,
                    "checkpoint before the replay queue was bound"
                );
                self.checkpoint_started_at.get_or_insert(self.tick);
            }
            Action::StartTransfer { .. } => {
                assert!(self.checkpoint_started_at.is_some());
                self.transfer_started_at.get_or_insert(self.tick);
            }
            Action::StopSource => self.source_alive = false,
            Action::CreateTarget { .. } => {
                assert!(self.transfer_started_at.is_some(), "target before transfer");
                self.target_created_at.get_or_insert(self.tick);
                self.target_deleted = false;
            }
            Action::SendStartReplay { .. } => {
                assert!(self.target_created_at.is_some());
                self.start_replay_sent += 1;
            }
            Action::FencePrimary => {
                assert!(
                    !self.source_alive,
                    "primary purged while the source still consumes"
                );
                self.fenced = true;
            }
            Action::CutOver => {
                assert!(
                    self.fenced && self.backlog == 0,
                    "cut over before the target caught up alone"
                );
                self.cut_over = true;
            }
            Action::SendEndReplay { .. } => {
                assert!(self.cut_over, "END_REPLAY before the cut-over");
                self.end_replay_sent += 1;
            }
            Action::DeleteReplayQueue => {
                self.replay_queue_deleted = true;
                self.topology = false;
            }
            Action::RemoveSource => self.source_removed = true,
            Action::DeleteTarget { .. } => self.target_deleted = true,
            Action::ResumeSource => self.source_alive = true,
            Action::DeleteImportedImage { reference } => {
                assert!(self.transfer_started_at.is_some(), "no import to undo");
                assert_eq!(reference, &self.transfer_output);
                assert!(
                    self.target_created_at.is_none() || self.target_deleted,
                    "image removed while the target pod still uses it"
                );
                self.images_deleted += 1;
            }
        }
    }

    fn advance(&mut self) {
        self.tick += 1;
        self.pre_backlog = self.pre_backlog.saturating_sub(1);
        if self.start_replay_sent > 0 && self.backlog > 0 {
            self.backlog -= 1;
        }
    }
}

/// Runs a migration; `crash_at` = the n-th driver operation after which the in-memory
/// progress is lost and reloaded from what was persisted last.
fn simulate(
    pl: &Plan,
    mut world: World,
    strategy: Strategy,
    crash_at: Option<u32>,
) -> (Progress, World, u32) {
    let mut persisted = Progress::default();
    let mut ops = 0u32;
    let mut crashed = false;
    for _ in 0..200 {
        let mut mem = persisted.clone();
        let d = decide(pl, &mem, &world.observe(strategy));
        persisted = d.progress.clone();
        mem = d.progress;
        ops += 1;
        let mut lost = false;
        for a in &d.actions {
            world.apply(a);
            ops += 1;
            if !crashed && crash_at == Some(ops) {
                crashed = true;
                lost = true;
                break;
            }
            mark_done(&mut mem, a);
            persisted = mem.clone();
        }
        if d.next == Next::Stop {
            return (persisted, world, ops);
        }
        if matches!(d.next, Next::After(_)) || lost {
            world.advance();
        }
    }
    panic!("migration did not finish: {persisted:?}");
}

/// The simulated world of a Kubernetes Direct transfer: the transfer reports the import.
fn direct_world() -> World {
    World {
        transfer_output: IMPORTED.into(),
        ..World::new()
    }
}

#[test]
fn whole_migration_completes_for_every_strategy_and_mode() {
    let transfers = [(plan(), World::new()), (direct_plan(), direct_world())];
    for strategy in [Strategy::ShadowPod, Strategy::Sequential] {
        for mode in [ReplayMode::Cutoff, ReplayMode::Drain] {
            for (base, world) in transfers.clone() {
                let pl = Plan {
                    replay_mode: mode,
                    ..base
                };
                let (p, w, _) = simulate(&pl, world, strategy, None);
                let what = format!("{strategy:?} {mode:?} {:?}", pl.transfer_mode);
                assert_eq!(p.phase, Phase::Completed, "{what}: {p:?}");
                assert_eq!(
                    p.checkpoint_image.as_deref(),
                    Some(w.transfer_output.as_str())
                );
                assert_eq!(
                    w.images_deleted, 0,
                    "{what}: the target runs from the image"
                );
                assert_eq!(w.start_replay_sent, 1);
                assert_eq!(w.end_replay_sent, 1);
                assert!(w.replay_queue_deleted && w.source_removed && !w.source_alive);
                let phases: Vec<_> = p.phase_timings.iter().map(|x| x.phase).collect();
                assert_eq!(
                    phases,
                    vec![
                        Phase::Pending,
                        Phase::Checkpointing,
                        Phase::Transferring,
                        Phase::Restoring,
                        Phase::Replaying,
                        Phase::Finalizing
                    ]
                );
            }
        }
    }
}

#[test]
fn a_crash_at_any_point_still_completes_and_repeats_at_most_one_effect() {
    let transfers = [(plan(), World::new()), (direct_plan(), direct_world())];
    for strategy in [Strategy::ShadowPod, Strategy::Sequential] {
        for (pl, world) in &transfers {
            let (_, clean, total_ops) = simulate(pl, world.clone(), strategy, None);
            for crash_at in 1..=total_ops {
                let (p, w, _) = simulate(pl, world.clone(), strategy, Some(crash_at));
                assert_eq!(
                    p.phase,
                    Phase::Completed,
                    "{strategy:?} {:?} crash at {crash_at}: {p:?}",
                    pl.transfer_mode
                );
                assert_eq!(
                    p.checkpoint_image.as_deref(),
                    Some(w.transfer_output.as_str())
                );
                assert!(
                    w.effects <= clean.effects + 1,
                    "crash at {crash_at} repeated more than one effect ({} vs {})",
                    w.effects,
                    clean.effects
                );
                assert!(w.start_replay_sent >= 1 && w.end_replay_sent >= 1);
            }
        }
    }
}

#[test]
fn a_crash_at_any_point_of_a_failing_migration_still_rolls_back() {
    let failing = World {
        fail_checkpoint: true,
        ..World::new()
    };
    let (_, _, total_ops) = simulate(&plan(), failing.clone(), Strategy::ShadowPod, None);
    for crash_at in 1..=total_ops {
        let (p, w, _) = simulate(
            &plan(),
            failing.clone(),
            Strategy::ShadowPod,
            Some(crash_at),
        );
        assert_eq!(p.phase, Phase::Failed, "crash at {crash_at}");
        assert!(
            w.replay_queue_deleted,
            "crash at {crash_at}: replay queue left behind"
        );
        assert!(w.source_alive, "source must keep serving");
        assert!(p.failure.unwrap().rolled_back);
    }
}

#[test]
fn a_target_that_never_runs_is_rolled_back_after_the_timeout() {
    let transfers = [
        (plan(), World::new(), 0),
        (direct_plan(), direct_world(), 1),
    ];
    for strategy in [Strategy::ShadowPod, Strategy::Sequential] {
        for (base, world, images_deleted) in transfers.clone() {
            let pl = Plan {
                phase_timeout: Duration::from_secs(10),
                ..base
            };
            let w = World {
                target_never_runs: true,
                ..world
            };
            let (p, w, _) = simulate(&pl, w, strategy, None);
            assert_eq!(p.phase, Phase::Failed);
            assert!(
                w.target_deleted && w.replay_queue_deleted && w.source_alive,
                "{strategy:?}: {w:?}"
            );
            assert_eq!(w.start_replay_sent, 0);
            assert_eq!(w.images_deleted, images_deleted, "{strategy:?}: {w:?}");
        }
    }
}

#[test]
fn a_crash_at_any_point_of_a_direct_rollback_still_removes_the_image() {
    let pl = Plan {
        phase_timeout: Duration::from_secs(10),
        ..direct_plan()
    };
    let failing = World {
        target_never_runs: true,
        ..direct_world()
    };
    let (_, _, total_ops) = simulate(&pl, failing.clone(), Strategy::ShadowPod, None);
    for crash_at in 1..=total_ops {
        let (p, w, _) = simulate(&pl, failing.clone(), Strategy::ShadowPod, Some(crash_at));
        assert_eq!(p.phase, Phase::Failed, "crash at {crash_at}");
        assert!(
            (1..=2).contains(&w.images_deleted),
            "crash at {crash_at}: image removed {} times",
            w.images_deleted
        );
        assert!(w.target_deleted && w.replay_queue_deleted && w.source_alive);
    }
}

#[test]
fn a_direct_rollback_also_removes_the_imported_image_last() {
    use Strategy::*;
    let del_image = || Action::DeleteImportedImage {
        reference: IMPORTED.into(),
    };
    let del_target = || Action::DeleteTarget {
        name: "counter-ms2m".into(),
    };
    // (phase, strategy, transfer step, source stopped, rollback actions)
    let cases: Vec<(Phase, Strategy, StepState, bool, Vec<Action>)> = vec![
        // Nothing was sent yet.
        (
            Phase::Checkpointing,
            ShadowPod,
            StepState::NotStarted,
            false,
            vec![Action::DeleteReplayQueue],
        ),
        // Asked for: the import may have happened (the delete is idempotent).
        (
            Phase::Transferring,
            ShadowPod,
            StepState::Intended,
            false,
            vec![Action::DeleteReplayQueue, del_image()],
        ),
        (
            Phase::Restoring,
            ShadowPod,
            StepState::Done,
            false,
            vec![Action::DeleteReplayQueue, del_image()],
        ),
        (
            Phase::Restoring,
            Sequential,
            StepState::Done,
            true,
            vec![Action::DeleteReplayQueue, Action::ResumeSource, del_image()],
        ),
        (
            Phase::Replaying,
            ShadowPod,
            StepState::Done,
            false,
            vec![del_target(), Action::DeleteReplayQueue, del_image()],
        ),
        // Past the point of no return the target keeps running from the image.
        (Phase::Replaying, ShadowPod, StepState::Done, true, vec![]),
    ];
    for (phase, strategy, transfer, stopped, actions) in cases {
        let mut p = at_phase(phase, strategy);
        p.steps.replay_topology = StepState::Done;
        p.steps.transfer = transfer;
        if transfer != StepState::NotStarted {
            p.checkpoint_image = Some(IMPORTED.into());
        }
        p.steps.stop_source = if stopped {
            StepState::Done
        } else {
            StepState::NotStarted
        };
        let obs = Observation {
            fatal: Some("agent refused".into()),
            ..healthy(t(1))
        };
        let d = decide(&direct_plan(), &p, &obs);
        let what = format!("{phase} {strategy:?} transfer={transfer:?} stopped={stopped}");
        assert_eq!(d.actions, actions, "{what}");
        if actions.is_empty() {
            assert_eq!(d.progress.phase, Phase::Failed, "{what}");
            continue;
        }
        assert_eq!(d.progress.phase, Phase::RollingBack, "{what}");
        if transfer != StepState::NotStarted {
            assert_eq!(d.progress.steps.delete_image, StepState::Intended, "{what}");
        }
        let mut p = d.progress;
        for a in &d.actions {
            mark_done(&mut p, a);
        }
        let d = decide(&direct_plan(), &p, &healthy(t(2)));
        assert_eq!(d.progress.phase, Phase::Failed, "{what}");
        assert!(d.actions.is_empty(), "{what}: each step runs once");
    }
    // Registry: nothing lives on the target node besides the pod.
    let mut p = at_phase(Phase::Restoring, ShadowPod);
    p.steps.transfer = StepState::Done;
    let obs = Observation {
        fatal: Some("agent refused".into()),
        ..healthy(t(1))
    };
    let d = decide(&plan(), &p, &obs);
    assert_eq!(d.actions, vec![Action::DeleteReplayQueue]);
}

#[test]
fn a_failure_in_every_phase_undoes_exactly_what_was_done() {
    use Strategy::*;
    let del_target = || Action::DeleteTarget {
        name: "counter-ms2m".into(),
    };
    // (phase, strategy, source stopped, expected phase, rolled back, rollback actions)
    type Case = (Phase, Strategy, bool, Phase, bool, Vec<Action>);
    let cases: Vec<Case> = vec![
        (
            Phase::Checkpointing,
            ShadowPod,
            false,
            Phase::RollingBack,
            true,
            vec![Action::DeleteReplayQueue],
        ),
        (
            Phase::Transferring,
            ShadowPod,
            false,
            Phase::RollingBack,
            true,
            vec![Action::DeleteReplayQueue],
        ),
        (
            Phase::Restoring,
            ShadowPod,
            false,
            Phase::RollingBack,
            true,
            vec![Action::DeleteReplayQueue],
        ),
        (
            Phase::Restoring,
            Sequential,
            true,
            Phase::RollingBack,
            true,
            vec![Action::DeleteReplayQueue, Action::ResumeSource],
        ),
        (
            Phase::Replaying,
            ShadowPod,
            false,
            Phase::RollingBack,
            true,
            vec![del_target(), Action::DeleteReplayQueue],
        ),
        (
            Phase::Replaying,
            Sequential,
            true,
            Phase::RollingBack,
            true,
            vec![
                del_target(),
                Action::DeleteReplayQueue,
                Action::ResumeSource,
            ],
        ),
        (
            Phase::Replaying,
            ShadowPod,
            true,
            Phase::Failed,
            false,
            vec![],
        ),
        (
            Phase::Finalizing,
            ShadowPod,
            true,
            Phase::Failed,
            false,
            vec![],
        ),
        (
            Phase::Finalizing,
            Sequential,
            true,
            Phase::Failed,
            false,
            vec![],
        ),
    ];
    for (phase, strategy, stopped, to, rolled_back, actions) in cases {
        let mut p = at_phase(phase, strategy);
        p.steps.stop_source = if stopped {
            StepState::Done
        } else {
            StepState::NotStarted
        };
        if phase == Phase::Checkpointing {
            p.steps.replay_topology = StepState::Done;
        }
        let obs = Observation {
            fatal: Some("broker refused".into()),
            ..healthy(t(1))
        };
        let d = decide(&plan(), &p, &obs);
        let what = format!("{phase} {strategy:?} stopped={stopped}");
        assert_eq!(d.progress.phase, to, "{what}");
        assert_eq!(d.actions, actions, "{what}");
        let f = d.progress.failure.clone().expect("failure recorded");
        assert_eq!(f.rolled_back, rolled_back, "{what}");
        assert_eq!(f.phase, phase, "{what}");
        assert!(f.reason.contains("broker refused"), "{what}");
        // Carrying out the rollback ends in Failed.
        if to == Phase::RollingBack {
            let mut p = d.progress;
            for a in &d.actions {
                mark_done(&mut p, a);
            }
            let d = decide(&plan(), &p, &healthy(t(2)));
            assert_eq!(d.progress.phase, Phase::Failed, "{what}");
            assert!(d.actions.is_empty());
        }
    }
}

#[test]
fn a_finished_migration_leaves_checkpoints_to_delete_except_for_an_operator() {
    let leftover = |node: &str| LeftoverCheckpoint {
        node: node.into(),
        checkpoint_id: "mig-1".into(),
    };
    let failed = |rolled_back| Failure {
        phase: Phase::Replaying,
        reason: "x".into(),
        rolled_back,
    };
    // (what, phase, checkpoint step, transfer step, failure, expected)
    type Case = (
        &'static str,
        Phase,
        StepState,
        StepState,
        Option<Failure>,
        Vec<LeftoverCheckpoint>,
    );
    let cases: Vec<Case> = vec![
        (
            "completed",
            Phase::Completed,
            StepState::Done,
            StepState::Done,
            None,
            vec![leftover("node-a"), leftover("node-b")],
        ),
        (
            "rolled back after a transfer was asked for",
            Phase::Failed,
            StepState::Done,
            StepState::Intended,
            Some(failed(true)),
            vec![leftover("node-a"), leftover("node-b")],
        ),
        (
            "rolled back before any transfer",
            Phase::Failed,
            StepState::Intended,
            StepState::NotStarted,
            Some(failed(true)),
            vec![leftover("node-a")],
        ),
        (
            "failed before any checkpoint",
            Phase::Failed,
            StepState::NotStarted,
            StepState::NotStarted,
            Some(failed(true)),
            vec![],
        ),
        (
            "failed past the point of no return: kept for an operator",
            Phase::Failed,
            StepState::Done,
            StepState::Done,
            Some(failed(false)),
            vec![],
        ),
        (
            "still running",
            Phase::Replaying,
            StepState::Done,
            StepState::Done,
            None,
            vec![],
        ),
        (
            "rolling back",
            Phase::RollingBack,
            StepState::Done,
            StepState::Done,
            Some(failed(true)),
            vec![],
        ),
    ];
    for (what, phase, checkpoint, transfer, failure, want) in cases {
        let mut p = at_phase(Phase::Replaying, Strategy::ShadowPod);
        p.phase = phase;
        p.steps.checkpoint = checkpoint;
        p.steps.transfer = transfer;
        p.failure = failure;
        assert_eq!(leftover_checkpoints(&plan(), &p), want, "{what}");
    }
    // A source on the target node (a migration within one node) is asked once.
    let mut p = at_phase(Phase::Replaying, Strategy::ShadowPod);
    p.phase = Phase::Completed;
    p.source_node = Some("node-b".into());
    assert_eq!(leftover_checkpoints(&plan(), &p), vec![leftover("node-b")]);
}
