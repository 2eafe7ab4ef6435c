//! docs/agent-api.md against the types: every route and every error code the document
//! names exists in the crate, and the crate has none the document does not name.

use std::collections::BTreeSet;

use ms2m_api::ErrorCode;
use ms2m_api::routes::ROUTES;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent-api.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `/v1/x/{anything}` → `/v1/x/{}`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every `` `METHOD /path...` `` in the text, the path cut at its query or optional part.
fn documented_routes(doc: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for piece in doc.split('`').skip(1).step_by(2) {
        let Some((method, rest)) = piece.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "DELETE"].contains(&method) || !rest.starts_with('/') {
            continue;
        }
        let path = rest
            .split(['[', '?', ' '])
            .next()
            .expect("split yields at least one piece");
        out.insert((method.to_owned(), normalize(path)));
    }
    out
}

/// The codes of the "Errors" table and of the job error's "Codes:" list.
fn documented_codes(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let errors = doc
        .split("\n## Errors")
        .nth(1)
        .expect("an Errors section")
        .split("\n## ")
        .next()
        .expect("split yields at least one piece");
    for line in errors.lines().filter(|l| l.starts_with("| ")) {
        let Some(cell) = line.split('|').nth(2) else {
            continue;
        };
        for code in cell.split('`').skip(1).step_by(2) {
            out.insert(code.to_owned());
        }
    }
    let jobs = doc
        .split("Codes:")
        .nth(1)
        .expect("the job error's Codes: list");
    let list = jobs.split('.').next().expect("a sentence");
    for code in list.split('`').skip(1).step_by(2) {
        out.insert(code.to_owned());
    }
    out.remove("code");
    out
}

#[test]
fn every_documented_route_is_in_the_route_table_and_back() {
    let documented = documented_routes(&doc());
    let ours: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), normalize(p)))
        .collect();
    assert_eq!(
        documented.difference(&ours).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented routes the crate lacks"
    );
    assert_eq!(
        ours.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes of the crate the document lacks"
    );
}

#[test]
fn every_documented_error_code_is_an_error_code_and_back() {
    let documented = documented_codes(&doc());
    let ours: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        documented.difference(&ours).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented codes missing from ErrorCode"
    );
    assert_eq!(
        ours.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "ErrorCode variants the document lacks"
    );
}

#[test]
fn every_documented_job_kind_is_a_job_kind() {
    let doc = doc();
    let kinds = doc
        .split("- `kind`:")
        .nth(1)
        .expect("the job's kind list")
        .split('.')
        .next()
        .expect("a sentence");
    let documented: BTreeSet<&str> = kinds.split('`').skip(1).step_by(2).collect();
    let ours: BTreeSet<&str> = ms2m_api::JobKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(documented, ours);
}
