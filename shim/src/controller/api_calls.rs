//! Every Kubernetes API call the controller makes, in one table. Call sites name their
//! entry; `deploy/base/rbac.yaml` must grant exactly these (a test compares), and the mocked-API
//! scenario tests check that every request they see is one of them.

/// One (API group, resource, verb) the controller uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
    }
}

const MIG: &str = "migration.ms2m.io";

// The controller's watch on its own resource.
pub const MIGRATION_LIST: ApiCall = call(MIG, "statefulmigrations", "list");
pub const MIGRATION_WATCH: ApiCall = call(MIG, "statefulmigrations", "watch");
pub const MIGRATION_GET: ApiCall = call(MIG, "statefulmigrations", "get");
/// Finalizer add/remove (JSON patch on metadata).
pub const MIGRATION_PATCH: ApiCall = call(MIG, "statefulmigrations", "patch");
/// Status writes replace the whole status with the last seen resourceVersion, so a
/// stale controller gets a 409 instead of overwriting newer progress.
pub const MIGRATION_STATUS_UPDATE: ApiCall = call(MIG, "statefulmigrations/status", "update");

pub const POD_GET: ApiCall = call("", "pods", "get");
pub const POD_CREATE: ApiCall = call("", "pods", "create");
pub const POD_DELETE: ApiCall = call("", "pods", "delete");
/// Handing a ReplicaSet-owned source's place to the target: the source's deletion cost
/// and the target's adoption labels. Sequential hand-back: the StatefulSet selector's
/// labels on the target (after the scale-up), so the StatefulSet adopts it.
pub const POD_PATCH: ApiCall = call("", "pods", "patch");
/// Finding the agent pod on a node (DaemonSet pods by label); choosing a target node
/// (memory requested by the pods on each candidate node).
pub const POD_LIST: ApiCall = call("", "pods", "list");
pub const NODE_GET: ApiCall = call("", "nodes", "get");
/// Choosing a target node when the spec names none.
pub const NODE_LIST: ApiCall = call("", "nodes", "list");
/// Agent token and broker URL Secrets.
pub const SECRET_GET: ApiCall = call("", "secrets", "get");
/// Sequential strategy: the target is the StatefulSet's pod built from its template and
/// revision (the source pod is gone by then); the StatefulSet is scaled down before the
/// target starts, and back up when the target is handed back (Finalizing) or on rollback.
pub const STATEFULSET_GET: ApiCall = call("apps", "statefulsets", "get");
pub const STATEFULSET_SCALE_PATCH: ApiCall = call("apps", "statefulsets/scale", "patch");
/// kube's event recorder creates events and patches repeated ones into series.
pub const EVENT_CREATE: ApiCall = call("events.k8s.io", "events", "create");
pub const EVENT_PATCH: ApiCall = call("events.k8s.io", "events", "patch");

pub const ALL: &[ApiCall] = &[
    MIGRATION_LIST,
    MIGRATION_WATCH,
    MIGRATION_GET,
    MIGRATION_PATCH,
    MIGRATION_STATUS_UPDATE,
    POD_GET,
    POD_CREATE,
    POD_DELETE,
    POD_PATCH,
    POD_LIST,
    NODE_GET,
    NODE_LIST,
    SECRET_GET,
    STATEFULSET_GET,
    STATEFULSET_SCALE_PATCH,
    EVENT_CREATE,
    EVENT_PATCH,
];

/// Maps a request (as the mocked API service sees it) to its table entry.
pub fn classify(method: &str, path: &str) -> Option<ApiCall> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    let (resource, named) = match rest {
        [res] => (res.to_string(), false),
        [res, _name] => (res.to_string(), true),
        [res, _name, sub] => (format!("{res}/{sub}"), true),
        _ => return None,
    };
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PATCH", true) => "patch",
        ("PUT", true) => "update",
        ("DELETE", true) => "delete",
        _ => return None,
    };
    ALL.iter()
        .copied()
        .find(|c| c.group == group && c.resource == resource && c.verb == verb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_table_entries() {
        assert_eq!(
            classify("GET", "/api/v1/namespaces/default/pods/p?"),
            Some(POD_GET)
        );
        assert_eq!(classify("GET", "/api/v1/nodes/n"), Some(NODE_GET));
        assert_eq!(
            classify(
                "PUT",
                "/apis/migration.ms2m.io/v1alpha1/namespaces/d/statefulmigrations/m/status?"
            ),
            Some(MIGRATION_STATUS_UPDATE)
        );
        assert_eq!(
            classify("PATCH", "/apis/apps/v1/namespaces/d/statefulsets/s/scale"),
            Some(STATEFULSET_SCALE_PATCH)
        );
        assert_eq!(
            classify("POST", "/apis/events.k8s.io/v1/namespaces/d/events?"),
            Some(EVENT_CREATE)
        );
        assert_eq!(
            classify("DELETE", "/api/v1/namespaces/d/configmaps/x"),
            None
        );
    }
}
