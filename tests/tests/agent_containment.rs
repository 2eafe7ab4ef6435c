//! Contained unpacking on the real agent (issue 13): a layer holding `d -> .`,
//! `e -> d/d/…/../../..` (balanced as text, resolving to `/`) and a hard link
//! `stolen -> e/<host file>` is refused, through Direct receive and through a registry
//! pull, with an error naming the entry; the 0600 host file it aims at keeps its single
//! link and nothing of the attempt stays in the store.

mod agent_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_common::{Agent, AgentOptions};
use ms2m_image_format::{MEDIA_TYPE_LAYER_TAR, sha256_digest};
use ms2m_tests::env;
use ms2m_tests::transfer::{dir_names, synthetic_checkpoint};
use serde_json::json;

/// A raw ustar header (the `tar` crate refuses to write some of what attackers send).
fn header(name: &str, typeflag: u8, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |v: u64, width: usize| format!("{:0w$o}\0", v, w = width - 1).into_bytes();
    h[100..108].copy_from_slice(&octal(0o777, 8));
    h[108..116].copy_from_slice(&octal(0, 8));
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(&octal(0, 12));
    h[136..148].copy_from_slice(&octal(0, 12));
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// The attack layer against `victim`, for a staging root below `store` (the chain
/// must climb one level more than the store's depth to reach `/`). `chain_first`
/// writes `e` before `d`, so `e` dangles when written and only the hard link shows it.
fn attack_layer(store: &Path, victim: &Path, chain_first: bool) -> Vec<u8> {
    let depth = store.components().count(); // `/` counts as one: one more than needed
    let chain = format!("{}{}", "d/".repeat(depth), vec![".."; depth].join("/"));
    let link = format!("e{}", victim.display());
    let d = header("d", b'2', ".");
    let e = header("e", b'2', &chain);
    let mut tar = Vec::new();
    if chain_first {
        tar.extend_from_slice(&e);
        tar.extend_from_slice(&d);
    } else {
        tar.extend_from_slice(&d);
        tar.extend_from_slice(&e);
    }
    tar.extend_from_slice(&header("stolen", b'1', &link));
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// A root-only host file outside the agent's state dir.
fn victim(agent: &Agent) -> PathBuf {
    let p = agent.dir.path().join("host-secret");
    std::fs::write(&p, "root:$6$not-for-checkpoints").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn assert_untouched(agent: &Agent, victim: &Path) {
    assert_eq!(
        std::fs::metadata(victim).unwrap().nlink(),
        1,
        "host file got linked"
    );
    let left = dir_names(&agent.checkpoints_dir());
    assert!(left.is_empty(), "left in the store: {left:?}");
}

fn frame(kind: u8, layer: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&layer.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn direct_receive_refuses_a_symlink_chain_to_a_host_file() {
    let agent = Agent::start(AgentOptions::default());
    let victim = victim(&agent);
    for (chain_first, named) in [(false, "e"), (true, "stolen")] {
        let tar = attack_layer(&agent.checkpoints_dir(), &victim, chain_first);
        let digest = sha256_digest(&tar);
        // Digests that match: the stream is well-formed, only its content is hostile.
        let end = json!({
            "media_type": MEDIA_TYPE_LAYER_TAR, "digest": digest, "size": tar.len(),
            "diff_id": digest, "uncompressed_size": tar.len(), "annotations": {},
        });
        let mut body = frame(1, 0, &tar);
        body.extend(frame(2, 0, end.to_string().as_bytes()));
        body.extend(frame(3, 0, br#"{"layers":1}"#));
        let r = agent.call_with(
            "PUT",
            "/v1/direct/receive/stolen-ck",
            &[("Content-Type", "application/vnd.ms2m.direct.v1")],
            Some(&body),
        );
        assert!(
            matches!(r.status, 400 | 422),
            "chain_first={chain_first}: {} {}",
            r.status,
            r.body
        );
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&format!("`{named}`")),
            "names `{named}`: {msg}"
        );
        assert_untouched(&agent, &victim);
    }
}

#[test]
fn registry_pull_refuses_a_symlink_chain_to_a_host_file() {
    use ms2m_agent::registry::{Access, ClientOptions, Reference, RegistryClient};
    use ms2m_agent::transfer::Progress;
    use ms2m_agent::transfer::push::{PushOptions, push};

    let agent = Agent::start(AgentOptions::default());
    let victim = victim(&agent);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("ck");
    synthetic_checkpoint(&src, "contained", 64 * 1024);
    let image = Reference::parse(&format!(
        "{}/ms2m-test/contained:{}",
        env::registry(),
        env::unique("c")
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (chain_first, named) in [(false, "e"), (true, "stolen")] {
        let tag = format!("evil-{chain_first}");
        rt.block_on(async {
            // An honest image, then the same manifest with the attack layer added.
            let pushed = push(&src, &image, &PushOptions::default(), &Progress::new())
                .await
                .unwrap();
            let client = RegistryClient::connect(&image, ClientOptions::default(), Access::Push)
                .await
                .unwrap();
            let manifest = client.get_manifest(&pushed.manifest_digest).await.unwrap();
            let mut m: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap();
            let cfg_digest = m["config"]["digest"].as_str().unwrap().to_string();
            let mut cfg: serde_json::Value =
                serde_json::from_slice(&client.get_small_blob(&cfg_digest, 1 << 20).await.unwrap())
                    .unwrap();
            let tar = attack_layer(&agent.checkpoints_dir(), &victim, chain_first);
            let digest = sha256_digest(&tar);
            client.put_blob(&digest, &tar).await.unwrap();
            m["layers"].as_array_mut().unwrap().push(json!({
                "mediaType": MEDIA_TYPE_LAYER_TAR, "digest": digest, "size": tar.len(),
            }));
            cfg["rootfs"]["diff_ids"]
                .as_array_mut()
                .unwrap()
                .push(digest.into());
            let cfg = serde_json::to_vec(&cfg).unwrap();
            let cfg_digest = sha256_digest(&cfg);
            client.put_blob(&cfg_digest, &cfg).await.unwrap();
            m["config"]["digest"] = cfg_digest.into();
            m["config"]["size"] = cfg.len().into();
            client
                .put_manifest(
                    &tag,
                    "application/vnd.oci.image.manifest.v1+json",
                    &serde_json::to_vec(&m).unwrap(),
                )
                .await
                .unwrap();
        });
        let evil = format!("{}/{}:{tag}", image.registry, image.repository);
        let job = agent.run_job(
            "/v1/pulls",
            &json!({"image": evil, "checkpoint_id": "pulled-evil"}),
        );
        assert_eq!(job["status"], "failed", "chain_first={chain_first}: {job}");
        let msg = job["error"]["message"].as_str().unwrap_or("").to_string();
        assert!(
            msg.contains(&format!("`{named}`")),
            "names `{named}`: {job}"
        );
        assert_untouched(&agent, &victim);
    }
}
