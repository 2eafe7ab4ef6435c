//! Transfer benchmark (`cargo bench -p ms2m-benches --bench transfer`, `make bench`).
//!
//! On a synthetic checkpoint (`MS2M_BENCH_SIZE_MB`, default 1024; a fresh nonce per run
//! so nothing deduplicates), against a docker-registry this benchmark starts on a free
//! loopback port with its own storage, `MS2M_BENCH_RUNS` (default 3) runs each of:
//!
//! Push:   ms2m push (default settings, the `ms2m-agent` binary, peak RSS sampled)
//!         buildah from/add/config/commit/push (gzip), the documented Kubernetes way
//!         skopeo copy from an OCI layout (gzip), layout build included
//!         curl upload of ms2m's own compressed blobs, same number of parallel streams
//!         (the registry's ingest limit)
//! Pull:   ms2m pull (binary, peak RSS) vs skopeo copy to a layout + zstd -d | tar -x
//! Direct: ms2m agent to agent (in-process sender and receiver over loopback HTTP),
//!         uncompressed, and followed by the agent's import into containers-storage
//!         (how Direct ends in Kubernetes) vs tar + plain HTTP upload + OCI layout +
//!         skopeo copy into containers-storage on the receiving side (how the Go
//!         implementation's direct mode works)
//!
//! Limit: writing the archive's size into a new file (no fsync), the ceiling of any
//!         receiver that unpacks it, measured before the pull and Direct rows.
//!
//! What a row writes is removed as soon as it is timed, so that every row writes into
//! memory the row before freed: on a VM that hands freed pages back to its host, a row
//! that finds none pays a host fault per page (`ms2m_benches::write_limit`).
//!
//! Prints medians, ratios against ms2m and ms2m's peak RSS. `MS2M_BENCH_QUICK=1` leaves
//! out the two slow push baselines (buildah, skopeo) to iterate on the rest. Why the
//! write limit is measured: `ms2m_benches::write_limit`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, Request, State};
use axum::http::StatusCode;
use axum::routing::put;
use ms2m_agent::image_store::{Backend, ContainersStorage, ImageStore, Skopeo};
use ms2m_agent::transfer::Progress;
use ms2m_agent::transfer::direct::{DirectOptions, receive, send};
use ms2m_agent::transfer::push::{PushOptions, open_archive};
use ms2m_agent::transfer::synthetic;
use ms2m_image_format::{Compression, EncodeOptions, write_oci_layout};
use sha2::Digest as _;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH (scripts/setup.sh installs it)"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `cmd`, sampling its VmHWM; returns (stdout, wall time, peak RSS bytes).
fn run_rss(cmd: &mut Command) -> (String, Duration, u64) {
    let t = Instant::now();
    let (out, peak) = ms2m_tests::transfer::run_measuring_rss(cmd);
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        elapsed,
        peak,
    )
}

fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = dir.join("ms2m-agent");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("debug") {
            "dev"
        } else {
            "release"
        };
        run(Command::new(cargo).args([
            "build",
            "--profile",
            profile,
            "-p",
            "ms2m-agent",
            "--bin",
            "ms2m-agent",
        ]));
    }
    assert!(bin.is_file(), "{} missing after building it", bin.display());
    bin
}

struct Registry {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(work: &Path) -> Self {
        let dir = tempfile::tempdir_in(work).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_file(p: &Path) -> (String, u64) {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (format!("sha256:{}", hex::encode(h.finalize())), n)
}

/// An OCI layout with one uncompressed tar layer of `dir` (what the peers start from).
fn layout_from_dir(dir: &Path, layout: &Path) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tmp = blobs.join("layer.tmp");
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&tmp)
        .arg("."));
    let (layer, layer_size) = sha256_file(&tmp);
    std::fs::rename(&tmp, blobs.join(&layer[7..])).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer]}}).to_string();
    let write_blob = |bytes: &[u8]| {
        let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        (d, bytes.len())
    };
    let (cd, cs) = write_blob(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
        "annotations": {"io.kubernetes.cri-o.annotations.checkpoint.name": "bench"},
    })
    .to_string();
    let (md, ms) = write_blob(manifest.as_bytes());
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "ckpt"}}]}).to_string(),
    )
    .unwrap();
}

/// Flushes dirty pages before a timed step, so no contender pays for the previous
/// step's writeback (a freshly written 1 GiB checkpoint otherwise slows whoever runs
/// next).
/// Row name of Direct followed by the import into containers-storage.
const DIRECT_IMPORT: &str = "ms2m direct + import into containers-storage";

/// Row name of the machine's new-file write limit.
const WRITE_LIMIT: &str = "write the archive size to a new file (limit)";

fn settle() {
    let _ = Command::new("sync").status();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(Default)]
struct Results {
    rows: Vec<(String, Vec<f64>)>,
}

impl Results {
    fn add(&mut self, name: &str, d: Duration) {
        match self.rows.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(d.as_secs_f64()),
            None => self.rows.push((name.to_string(), vec![d.as_secs_f64()])),
        }
    }
    fn median(&self, name: &str) -> f64 {
        let mut v = self
            .rows
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if v.is_empty() {
            f64::NAN
        } else {
            median(&mut v)
        }
    }
}

async fn direct_receiver(dir: PathBuf) -> String {
    async fn ms2m(
        State(dir): State<PathBuf>,
        AxPath(id): AxPath<String>,
        req: Request,
    ) -> (StatusCode, String) {
        let (parts, body) = req.into_parts();
        match receive(&dir.join(id), &parts.headers, body).await {
            Ok(r) => (StatusCode::OK, serde_json::to_string(&r).unwrap()),
            Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        }
    }
    /// The peer's receiver: the body into a file, nothing else.
    async fn plain(
        State(dir): State<PathBuf>,
        AxPath(id): AxPath<String>,
        req: Request,
    ) -> StatusCode {
        use http_body_util::BodyExt as _;
        let mut body = req.into_body();
        let mut f = std::fs::File::create(dir.join(format!("{id}.tar"))).unwrap();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                f.write_all(&d).unwrap();
            }
        }
        StatusCode::CREATED
    }
    let app = axum::Router::new()
        .route("/v1/direct/receive/{id}", put(ms2m))
        .route("/upload/{id}", put(plain))
        .with_state(dir);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let size_mb = env_u64("MS2M_BENCH_SIZE_MB", 1024);
    let runs = env_u64("MS2M_BENCH_RUNS", 3).max(1);
    let quick = env_u64("MS2M_BENCH_QUICK", 0) != 0;
    // Only the two ms2m Direct rows (profiling the receiver).
    let direct_only = env_u64("MS2M_BENCH_DIRECT_ONLY", 0) != 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent = agent_bin();
    let (buildah, skopeo, curl) = (tool("buildah"), tool("skopeo"), tool("curl"));
    let work_root = std::env::var_os("MS2M_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let work = tempfile::tempdir_in(&work_root).unwrap();
    // Declared after `work`, so dropped (unmounting) before it.
    let _unmount = UnmountBelow(work.path().to_path_buf());
    let reg = Registry::start(work.path());
    let storage = format!(
        "[overlay@{}+{}]",
        work.path().join("cs-root").display(),
        work.path().join("cs-run").display()
    );
    let defaults = PushOptions::default();
    eprintln!(
        "transfer bench: {size_mb} MiB synthetic checkpoint, {runs} runs, registry {}, ms2m defaults: {} layers, {:?}",
        reg.addr, defaults.layers, defaults.compression
    );
    let mut res = Results::default();
    let mut rss_push = Vec::new();
    let mut rss_pull = Vec::new();
    let rx_dir = work.path().join("rx");
    std::fs::create_dir_all(&rx_dir).unwrap();
    let rx_url = rt.block_on(direct_receiver(rx_dir.clone()));
    let store = ImageStore::new(
        Backend::ContainersStorage(ContainersStorage::new(Skopeo::new(&skopeo), &storage)),
        work.path().join("import-work"),
    );
    std::fs::create_dir_all(work.path().join("import-work")).unwrap();

    for i in 0..runs {
        let run_dir = work.path().join(format!("run{i}"));
        let ckpt = run_dir.join("ckpt");
        synthetic::write_checkpoint(&ckpt, "bench", size_mb * 1024 * 1024).unwrap();
        let tag = format!("r{i}");

        if !direct_only {
            settle();
            // 1. ms2m push
            let image = format!("{}/bench/ms2m:{tag}", reg.addr);
            let (out, d, rss) = run_rss(
                Command::new(&agent)
                    .arg("push")
                    .arg(&ckpt)
                    .arg(&image)
                    .arg("--json"),
            );
            let pushed: serde_json::Value = serde_json::from_str(&out).unwrap();
            res.add("ms2m push", d);
            rss_push.push(rss as f64);

            if !quick {
                settle();
                // 2. buildah
                let (root, runroot) = (run_dir.join("b-root"), run_dir.join("b-run"));
                let b = |args: &[&str]| {
                    let mut c = Command::new(&buildah);
                    c.arg("--root")
                        .arg(&root)
                        .arg("--runroot")
                        .arg(&runroot)
                        .args(args);
                    c
                };
                let t = Instant::now();
                let c = run(&mut b(&["from", "scratch"]));
                run(b(&["add", &c]).arg(&ckpt).arg("/"));
                run(&mut b(&[
                    "config",
                    "--annotation=io.kubernetes.cri-o.annotations.checkpoint.name=bench",
                    &c,
                ]));
                run(&mut b(&[
                    "commit",
                    "--quiet",
                    &c,
                    &format!("bench-ckpt:{tag}"),
                ]));
                run(&mut b(&[
                    "push",
                    "--tls-verify=false",
                    &format!("bench-ckpt:{tag}"),
                    &format!("docker://{}/bench/buildah:{tag}", reg.addr),
                ]));
                res.add("buildah from/add/config/commit/push", t.elapsed());
                let _ = b(&["rm", "-a"]).output();
                let _ = b(&["rmi", "-a", "-f"]).output();

                settle();
                // 3. skopeo copy from an OCI layout, layout build included
                let layout = run_dir.join("layout");
                let t = Instant::now();
                layout_from_dir(&ckpt, &layout);
                run(Command::new(&skopeo)
                    .args([
                        "copy",
                        "--quiet",
                        "--dest-tls-verify=false",
                        "--dest-compress",
                        "--dest-compress-format",
                        "gzip",
                    ])
                    .arg(format!("oci:{}:ckpt", layout.display()))
                    .arg(format!("docker://{}/bench/skopeo:{tag}", reg.addr)));
                res.add("skopeo copy (layout build included)", t.elapsed());
                let _ = std::fs::remove_dir_all(&layout);
            }

            // 4. curl of ms2m's own blobs, one stream per layer, in parallel
            let own = run_dir.join("own-layout");
            let archive = rt.block_on(open_archive(&ckpt)).unwrap();
            let opts = EncodeOptions {
                layers: defaults.layers,
                compression: defaults.compression,
                ..EncodeOptions::default()
            };
            let img = write_oci_layout(&archive, &own, &opts).unwrap();
            let pushed_layers: Vec<&str> = pushed["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap())
                .collect();
            let own_layers: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
            assert_eq!(
                own_layers, pushed_layers,
                "same archive, same encoder: same blobs"
            );
            settle();
            let t = Instant::now();
            let threads: Vec<_> = img
                .layers
                .iter()
                .map(|l| {
                    let (curl, addr, blob, digest) = (
                        curl.clone(),
                        reg.addr.clone(),
                        own.join("blobs/sha256").join(&l.digest[7..]),
                        l.digest.clone(),
                    );
                    std::thread::spawn(move || {
                        let head = run(Command::new(&curl)
                            .args(["-sS", "-X", "POST", "-D", "-", "-o", "/dev/null"])
                            .arg(format!("http://{addr}/v2/bench/curl/blobs/uploads/")));
                        let loc = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("Location: ")
                                    .or_else(|| l.strip_prefix("location: "))
                            })
                            .expect("upload location")
                            .trim()
                            .to_string();
                        let loc = if loc.starts_with("http") {
                            loc
                        } else {
                            format!("http://{addr}{loc}")
                        };
                        let sep = if loc.contains('?') { '&' } else { '?' };
                        run(Command::new(&curl)
                            .args(["-sS", "-f", "-o", "/dev/null", "-T"])
                            .arg(&blob)
                            .arg(format!("{loc}{sep}digest={digest}")));
                    })
                })
                .collect();
            for th in threads {
                th.join().unwrap();
            }
            res.add("curl of ms2m's blobs (same streams)", t.elapsed());
            let _ = std::fs::remove_dir_all(&own);

            settle();
            let limit_file = run_dir.join("write-limit");
            let d = ms2m_benches::write_limit::write_new_file(&limit_file, size_mb << 20).unwrap();
            res.add(WRITE_LIMIT, d);

            settle();
            // 5. pull: ms2m vs skopeo + decompress
            let dest = run_dir.join("pulled");
            let (_, d, rss) = run_rss(
                Command::new(&agent)
                    .arg("pull")
                    .arg(&image)
                    .arg(&dest)
                    .arg("--json"),
            );
            res.add("ms2m pull", d);
            let _ = std::fs::remove_dir_all(&dest);
            rss_pull.push(rss as f64);
            settle();
            let t = Instant::now();
            let pl = run_dir.join("pull-layout");
            run(Command::new(&skopeo)
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{image}"))
                .arg(format!("oci:{}:ckpt", pl.display())));
            let idx: serde_json::Value =
                serde_json::from_slice(&std::fs::read(pl.join("index.json")).unwrap()).unwrap();
            let md = idx["manifests"][0]["digest"].as_str().unwrap();
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(pl.join("blobs/sha256").join(&md[7..])).unwrap(),
            )
            .unwrap();
            let out = run_dir.join("skopeo-unpacked");
            std::fs::create_dir_all(&out).unwrap();
            for l in m["layers"].as_array().unwrap() {
                let blob = pl
                    .join("blobs/sha256")
                    .join(&l["digest"].as_str().unwrap()[7..]);
                run(Command::new("sh").arg("-c").arg(format!(
                    "zstd -dc '{}' | tar -x -C '{}'",
                    blob.display(),
                    out.display()
                )));
            }
            res.add("skopeo copy + zstd -d + tar -x", t.elapsed());
            let _ = std::fs::remove_dir_all(&pl);
            let _ = std::fs::remove_dir_all(&out);
        }

        settle();
        let limit_file = run_dir.join("write-limit");
        let d = ms2m_benches::write_limit::write_new_file(&limit_file, size_mb << 20).unwrap();
        res.add(WRITE_LIMIT, d);

        settle();
        // 6. direct: ms2m agent to agent vs tar + HTTP upload + layout + skopeo into storage
        let t = Instant::now();
        let archive = rt.block_on(open_archive(&ckpt)).unwrap();
        rt.block_on(send(
            archive,
            &rx_url,
            &format!("ms2m-{tag}"),
            &DirectOptions::default(),
            &Progress::new(),
        ))
        .unwrap();
        let sent = t.elapsed();
        res.add("ms2m direct (agent to agent)", sent);
        if !direct_only {
            // The same transfer ending where the baseline ends, in the receiving node's
            // image store (what Direct mode does in Kubernetes).
            let t = Instant::now();
            rt.block_on(store.import(
                &rx_dir.join(format!("ms2m-{tag}")),
                &format!("localhost/bench/ms2m-direct:{tag}"),
            ))
            .unwrap();
            res.add(DIRECT_IMPORT, sent + t.elapsed());
        }
        let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-{tag}")));
        settle();
        let t = Instant::now();
        let archive = rt.block_on(open_archive(&ckpt)).unwrap();
        rt.block_on(send(
            archive,
            &rx_url,
            &format!("ms2m-none-{tag}"),
            &DirectOptions {
                compression: Compression::None,
                ..DirectOptions::default()
            },
            &Progress::new(),
        ))
        .unwrap();
        res.add("ms2m direct, uncompressed", t.elapsed());
        let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-none-{tag}")));
        if direct_only {
            let _ = std::fs::remove_dir_all(&run_dir);
            let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-{tag}")));
            let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-none-{tag}")));
            continue;
        }
        settle();
        let t = Instant::now();
        let tarball = run_dir.join("ckpt.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&ckpt)
            .arg("-cf")
            .arg(&tarball)
            .arg("."));
        run(Command::new(&curl)
            .args(["-sS", "-f", "-o", "/dev/null", "-T"])
            .arg(&tarball)
            .arg(format!("{rx_url}/upload/plain-{tag}")));
        let received = rx_dir.join(format!("plain-{tag}.tar"));
        let unpacked = run_dir.join("plain-unpacked");
        std::fs::create_dir_all(&unpacked).unwrap();
        run(Command::new("tar")
            .arg("-C")
            .arg(&unpacked)
            .arg("-xf")
            .arg(&received));
        let dl = run_dir.join("direct-layout");
        layout_from_dir(&unpacked, &dl);
        run(Command::new(&skopeo)
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:ckpt", dl.display()))
            .arg(format!("containers-storage:{storage}bench/direct:{tag}")));
        res.add("tar + HTTP upload + layout + skopeo copy", t.elapsed());

        let _ = std::fs::remove_dir_all(&run_dir);
        let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-{tag}")));
        let _ = std::fs::remove_dir_all(rx_dir.join(format!("ms2m-none-{tag}")));
        let _ = std::fs::remove_file(&received);
        eprintln!("run {} of {runs} done", i + 1);
    }
    let mb = size_mb as f64 * 1048576.0 / 1e6;
    println!(
        "\n## transfer benchmark: {size_mb} MiB synthetic checkpoint, median of {runs} runs\n"
    );
    println!("| path | median s | MB/s | vs ms2m |");
    println!("|---|---|---|---|");
    let groups = [
        (
            "ms2m push",
            [
                "ms2m push",
                "buildah from/add/config/commit/push",
                "skopeo copy (layout build included)",
                "curl of ms2m's blobs (same streams)",
            ]
            .as_slice(),
        ),
        (
            "ms2m pull",
            ["ms2m pull", "skopeo copy + zstd -d + tar -x", WRITE_LIMIT].as_slice(),
        ),
        (
            "ms2m direct (agent to agent)",
            [
                "ms2m direct (agent to agent)",
                "ms2m direct, uncompressed",
                DIRECT_IMPORT,
                "tar + HTTP upload + layout + skopeo copy",
                WRITE_LIMIT,
            ]
            .as_slice(),
        ),
    ];
    for (base, names) in groups {
        let b = res.median(base);
        if b.is_nan() {
            continue;
        }
        for n in names {
            let m = res.median(n);
            if m.is_nan() {
                continue;
            }
            println!("| {n} | {m:.2} | {:.0} | {:.2}× |", mb / m, m / b);
        }
    }
    if !direct_only {
        println!(
            "\nms2m peak RSS: push {:.1} MiB, pull {:.1} MiB (median)",
            median(&mut rss_push) / 1048576.0,
            median(&mut rss_pull) / 1048576.0
        );
    }
}

/// Unmounts whatever containers-storage left mounted under the work dir before the
/// temp dir is removed, also when a row panics (a mount would keep the GiBs on disk).
struct UnmountBelow(PathBuf);

impl Drop for UnmountBelow {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o '{}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.0.display()
            ))
            .status();
    }
}
