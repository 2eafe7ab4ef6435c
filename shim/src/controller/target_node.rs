//! Choosing the target node when the spec names none (`targetNode` omitted or empty, as
//! the reference implementation allows).
//!
//! The rule, in order:
//! 1. the node is `Ready`, not cordoned (`spec.unschedulable`), and has no `NoSchedule` or
//!    `NoExecute` taint: a target restored there stays there;
//! 2. it is not the source's node;
//! 3. an ms2m agent runs on it (the checkpoint must be transferred and restored there);
//! 4. among those, the most **free allocatable memory**: `status.allocatable.memory`
//!    minus the memory requests of the pods bound to it that have not finished. The
//!    restored process needs at least the source's resident memory, which the scheduler
//!    does not know about, so free memory is the constraint that matters;
//! 5. ties broken by node name (ascending), so the choice is reproducible.
//!
//! The choice is made once, in `Pending`, recorded in `status.targetNode` before anything
//! else happens, and never revisited: a restarted controller reads it back.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Api, Client, api::ListParams};

use super::api_calls::{self, ApiCall};

/// Documents which table entry a call site uses.
fn uses(_: ApiCall) {}

/// What the rule decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Node(String),
    /// No node qualifies; the message says why, for the migration's failure reason.
    NoneEligible(String),
}

/// One node as the rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub ready: bool,
    pub schedulable: bool,
    /// Allocatable memory in bytes; `None` when the node reports none.
    pub allocatable_memory: Option<u128>,
}

impl Candidate {
    pub fn from_node(n: &Node) -> Self {
        let spec = n.spec.as_ref();
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
            ts.iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        });
        let allocatable_memory = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("memory"))
            .and_then(parse_quantity);
        Self {
            name: n.metadata.name.clone().unwrap_or_default(),
            ready,
            schedulable: !cordoned && !tainted,
            allocatable_memory,
        }
    }
}

/// Applies the rule. `requested(node)` is the memory already requested on `node`.
pub fn choose(
    candidates: &[Candidate],
    source_node: &str,
    agent_nodes: &BTreeSet<String>,
    requested: impl Fn(&str) -> u128,
) -> Choice {
    let mut why_not = Vec::new();
    let mut best: Option<(u128, &str)> = None;
    for c in candidates {
        let reason = if c.name == source_node {
            Some("runs the source")
        } else if !c.ready {
            Some("not Ready")
        } else if !c.schedulable {
            Some("cordoned or tainted NoSchedule/NoExecute")
        } else if !agent_nodes.contains(&c.name) {
            Some("no ms2m agent")
        } else {
            None
        };
        if let Some(r) = reason {
            why_not.push(format!("{}: {r}", c.name));
            continue;
        }
        let free = c
            .allocatable_memory
            .unwrap_or(0)
            .saturating_sub(requested(&c.name));
        // Most free memory first; on a tie the smaller name wins.
        let better = match best {
            None => true,
            Some((f, name)) => free > f || (free == f && c.name.as_str() < name),
        };
        if better {
            best = Some((free, &c.name));
        }
    }
    match best {
        Some((_, name)) => Choice::Node(name.to_owned()),
        None if candidates.is_empty() => Choice::NoneEligible(
            "targetNode is not set and the cluster lists no nodes to choose from".into(),
        ),
        None => Choice::NoneEligible(format!(
            "targetNode is not set and no node qualifies as a target ({}); set spec.targetNode",
            why_not.join("; ")
        )),
    }
}

/// Lists the cluster's nodes and the memory requested on each eligible one, then
/// applies [`choose`].
pub async fn choose_in_cluster(
    client: &Client,
    source_node: &str,
    agent_nodes: &BTreeSet<String>,
) -> Result<Choice, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    uses(api_calls::NODE_LIST);
    let candidates: Vec<Candidate> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(Candidate::from_node)
        .collect();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut requested = std::collections::BTreeMap::new();
    for c in &candidates {
        if c.name == source_node || !c.ready || !c.schedulable || !agent_nodes.contains(&c.name) {
            continue;
        }
        // Pods that finished hold no memory; the field selector is the scheduler's own.
        let lp = ListParams::default().fields(&format!(
            "spec.nodeName={},status.phase!=Succeeded,status.phase!=Failed",
            c.name
        ));
        uses(api_calls::POD_LIST);
        let on_node = pods.list(&lp).await?;
        requested.insert(
            c.name.clone(),
            on_node.items.iter().map(memory_requests).sum(),
        );
    }
    Ok(choose(&candidates, source_node, agent_nodes, |n| {
        requested.get(n).copied().unwrap_or(0)
    }))
}

/// Memory a pod requests, as the scheduler counts it: the sum over its containers, or
/// the largest init container if that is more.
fn memory_requests(p: &Pod) -> u128 {
    let Some(spec) = &p.spec else { return 0 };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory"))
            .and_then(parse_quantity)
            .unwrap_or(0)
    };
    let containers: u128 = spec.containers.iter().map(of).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(of)
        .max()
        .unwrap_or(0);
    containers.max(init)
}

/// A Kubernetes quantity in bytes (`128974848`, `129e6`, `129M`, `123Mi`, `1.5Gi`);
/// `None` for what is not a memory quantity. Fractions of a byte round up.
pub fn parse_quantity(q: &Quantity) -> Option<u128> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n * mult).ceil() as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mem: u128) -> Candidate {
        Candidate {
            name: name.into(),
            ready: true,
            schedulable: true,
            allocatable_memory: Some(mem),
        }
    }

    fn agents(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quantities_parse_as_the_api_server_writes_them() {
        let q = |s: &str| parse_quantity(&Quantity(s.into()));
        assert_eq!(q("128974848"), Some(128_974_848));
        assert_eq!(q("129e6"), Some(129_000_000));
        assert_eq!(q("129M"), Some(129_000_000));
        assert_eq!(q("123Mi"), Some(123 * 1024 * 1024));
        assert_eq!(q("1.5Gi"), Some(1_610_612_736));
        assert_eq!(q("16283900Ki"), Some(16_283_900 * 1024));
        assert_eq!(q("500m"), Some(1));
        assert_eq!(q("lots"), None);
        assert_eq!(q("-1Gi"), None);
    }

    #[test]
    fn the_node_with_most_free_memory_wins() {
        let nodes = [node("a", 8 << 30), node("b", 16 << 30), node("c", 12 << 30)];
        let requested = |n: &str| if n == "b" { 10 << 30 } else { 0 };
        // b: 6 GiB free, c: 12 GiB free.
        assert_eq!(
            choose(&nodes, "a", &agents(&["a", "b", "c"]), requested),
            Choice::Node("c".into())
        );
    }

    #[test]
    fn ties_go_to_the_smaller_name() {
        let nodes = [
            node("zeta", 4 << 30),
            node("alpha", 4 << 30),
            node("src", 64 << 30),
        ];
        assert_eq!(
            choose(&nodes, "src", &agents(&["zeta", "alpha", "src"]), |_| 0),
            Choice::Node("alpha".into())
        );
    }

    #[test]
    fn the_source_unready_cordoned_and_agentless_nodes_are_skipped() {
        let mut unready = node("unready", 64 << 30);
        unready.ready = false;
        let mut cordoned = node("cordoned", 64 << 30);
        cordoned.schedulable = false;
        let nodes = [
            node("src", 128 << 30),
            unready,
            cordoned,
            node("no-agent", 64 << 30),
            node("small", 1 << 30),
        ];
        let all = agents(&["src", "unready", "cordoned", "small"]);
        assert_eq!(
            choose(&nodes, "src", &all, |_| 0),
            Choice::Node("small".into())
        );
        let Choice::NoneEligible(why) = choose(&nodes[..4], "src", &all, |_| 0) else {
            panic!("nothing qualifies");
        };
        for part in [
            "src: runs the source",
            "unready: not Ready",
            "cordoned: cordoned",
            "no-agent: no ms2m agent",
            "set spec.targetNode",
        ] {
            assert!(why.contains(part), "{why}");
        }
    }

    #[test]
    fn node_objects_read_as_the_rule_needs() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w1"},
            "spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]},
            "status": {
                "allocatable": {"memory": "2Gi", "cpu": "2"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        assert_eq!(
            Candidate::from_node(&n),
            Candidate {
                name: "w1".into(),
                ready: true,
                schedulable: true,
                allocatable_memory: Some(2 << 30)
            }
        );
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w2"},
            "spec": {"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}
        }))
        .unwrap();
        let c = Candidate::from_node(&n);
        assert!(!c.ready && !c.schedulable && c.allocatable_memory.is_none());
    }

    #[test]
    fn pod_requests_count_containers_or_the_largest_init_container() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"memory": "100Mi"}}},
                    {"name": "b", "resources": {"requests": {"memory": "50Mi"}}},
                    {"name": "c"}
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1Gi"}}}]
            }
        }))
        .unwrap();
        assert_eq!(memory_requests(&p), 1 << 30);
    }
}
