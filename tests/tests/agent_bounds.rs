//! Issue #13, "nothing is bounded", on the real `ms2m-agent serve` binary: a flood of
//! idle half-sent connections does not starve the probes and is closed by the
//! header-read timeout; kept-alive idle connections are closed; 200 concurrent import
//! requests run at most `max_concurrent_jobs` skopeo processes at once and the surplus
//! gets 429 JSON; a zstd bomb is refused by `max_checkpoint_bytes` and leaves nothing.
//!
//! The figures are printed (`--nocapture`); only generous sanity bounds are asserted.

mod agent_daemon;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use agent_daemon::{Daemon, DaemonOptions, free_port, http, raise_nofile};
use serde_json::json;

/// Whether the server has closed (or is closing) a client socket.
fn closed_by_server(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[test]
fn a_flood_of_idle_connections_leaves_the_probes_answering() {
    let have = raise_nofile();
    assert!(
        have >= 4096,
        "this test needs 4096 fds, the hard limit is {have}"
    );
    let addr = free_port();
    // 1024 fds for the agent: with no cap, 3000 connections exhaust them (the issue's
    // run: 372 connections on 256 fds made /healthz time out).
    let agent = Daemon::start(DaemonOptions {
        config: "tcp_insecure = true\nmax_connections = 256\nprobe_connections = 16\n\
                 header_read_timeout_seconds = 3\nidle_timeout_seconds = 5\n",
        tcp: Some(addr),
        nofile: Some(1024),
        ..Default::default()
    });
    let t0 = Instant::now();
    let mut flood = Vec::with_capacity(3000);
    for _ in 0..3000 {
        let mut s = TcpStream::connect(addr).expect("connect");
        // Half a request, no token, never finished.
        s.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        flood.push(s);
    }
    println!("opened 3000 half-sent connections in {:?}", t0.elapsed());
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = agent
            .call_tcp("GET", "/healthz")
            .unwrap_or_else(|e| panic!("/healthz under the flood: {e}\n{}", agent.log_text()));
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], "ok");
    }
    let worst = latencies.iter().max().unwrap();
    println!("/healthz under 3000 idle connections: {latencies:?} (worst {worst:?})");
    assert!(
        *worst < Duration::from_secs(10),
        "sanity bound: /healthz took {worst:?}"
    );
    let open = flood.iter().filter(|s| !closed_by_server(s)).count();
    println!("connections the agent still holds after the flood: {open} (cap 256)");
    assert!(open <= 256, "{open} connections open, the cap is 256");

    // The header-read timeout closes every half-sent one (the old agent kept all 3000
    // open past 65 s).
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    loop {
        let open = flood.iter().filter(|s| !closed_by_server(s)).count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} half-sent connections still open after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "all half-sent connections closed {:?} after the probes",
        t.elapsed()
    );
    drop(flood);

    // A kept-alive connection that goes idle after its answer is closed too.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    let n = s
        .read(&mut buf)
        .expect("the idle connection is closed within 60 s");
    assert_eq!(n, 0, "unexpected bytes after the answer");
    println!("kept-alive idle connection closed after {:?}", t.elapsed());
}

/// Processes whose parent is `pid` and whose name is `name`.
fn children_named(pid: u32, name: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or("");
        let ppid: u32 = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid && comm == name {
            n += 1;
        }
    }
    n
}

#[test]
fn two_hundred_concurrent_imports_run_at_most_n_at_once() {
    let storage = ms2m_tests::image_store::PrivateStorage::new();
    let agent = Daemon::start(DaemonOptions {
        config: &format!(
            "image_store = \"containers-storage\"\ncontainers_storage = \"{}\"\n\
             max_concurrent_jobs = 2\nmax_queued_jobs = 8\n",
            storage.spec
        ),
        ..Default::default()
    });
    let ck = agent.state().join("checkpoints/flood-ck");
    ms2m_tests::transfer::synthetic_checkpoint(&ck, "flood", 256 * 1024);

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, peak, samples, pid) = (done.clone(), peak.clone(), samples.clone(), agent.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let n = children_named(pid, "skopeo");
                peak.fetch_max(n, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let barrier = Arc::new(Barrier::new(200));
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let (barrier, socket) = (barrier.clone(), socket.clone());
            std::thread::spawn(move || {
                let body = json!({"checkpoint_id": "flood-ck",
                    "reference": format!("localhost/ms2m/flood:n{i}")})
                .to_string();
                barrier.wait();
                let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                http(s, "POST", "/v1/images", &[], Some(body.as_bytes())).unwrap()
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut accepted = Vec::new();
    let (mut running, mut queued, mut refused) = (0, 0, 0);
    for r in &answers {
        match r.status {
            202 => {
                let j = r.json();
                match j["status"].as_str().unwrap() {
                    "running" => running += 1,
                    "queued" => queued += 1,
                    other => panic!("a new job is {other}: {j}"),
                }
                accepted.push(j["id"].as_str().unwrap().to_string());
            }
            429 => {
                assert_eq!(r.code(), "too_many_jobs", "{}", r.body);
                refused += 1;
            }
            s => panic!("unexpected answer {s}: {}", r.body),
        }
    }
    println!(
        "200 concurrent POST /v1/images: {running} running, {queued} queued, {refused} refused (429)"
    );
    // Jobs that finish while the 200 requests still arrive free their slots, so on a
    // busy machine more than 2 + 8 can be accepted over the burst; what must hold is
    // the refusal of the excess (here) and the concurrency bound (sampled below).
    assert!(
        refused > 0 && running + queued + refused == 200,
        "{running} + {queued} + {refused}"
    );
    for id in &accepted {
        let j = agent.wait_job(id);
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "skopeo processes at once: at most {peak} ({} samples of /proc)",
        samples.load(Ordering::SeqCst)
    );
    assert!(
        peak >= 1,
        "the sampler never saw skopeo: it observes nothing"
    );
    assert!(
        peak <= 2,
        "{peak} skopeo processes at once, max_concurrent_jobs is 2"
    );
}

/// One Direct-mode frame: kind, layer, length, payload.
fn frame(kind: u8, layer: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&layer.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_zstd_bomb_is_refused_by_max_checkpoint_bytes_and_leaves_nothing() {
    use ms2m_image_format::{Compression, LayerHashes, encode_layer_with, plan_layers};
    let agent = Daemon::start(DaemonOptions {
        config: "max_checkpoint_bytes = 67108864\n",
        ..Default::default()
    });
    // A valid checkpoint whose page image is 1 GiB of zeros: a layer of a few hundred
    // KB that the old agent unpacked whole (and stored: the stream is well-formed).
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("bomb");
    ms2m_tests::transfer::synthetic_checkpoint(&src, "bomb", 0);
    std::fs::File::options()
        .write(true)
        .open(src.join("checkpoint/pages-1.img"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let archive = rt
        .block_on(ms2m_agent::transfer::direct::open_archive(&src))
        .unwrap();
    let plan = &plan_layers(&archive, 1)[0];
    let mut blob = Vec::new();
    let desc = encode_layer_with(
        &archive,
        plan,
        &Compression::Zstd {
            level: 3,
            workers: 0,
        },
        LayerHashes::BlobOnly,
        &mut blob,
    )
    .unwrap();
    println!(
        "bomb: {} compressed bytes expanding to {} bytes",
        blob.len(),
        archive.total_size()
    );
    let mut body = Vec::new();
    for c in blob.chunks(64 * 1024) {
        body.extend(frame(1, 0, c));
    }
    body.extend(frame(2, 0, &serde_json::to_vec(&desc).unwrap()));
    body.extend(frame(3, 0, br#"{"layers":1}"#));
    let t = Instant::now();
    let r = agent
        .try_call(
            "PUT",
            "/v1/direct/receive/bomb",
            &[("Content-Type", "application/vnd.ms2m.direct.v1")],
            Some(&body),
        )
        .unwrap();
    println!("refused in {:?}: {} {}", t.elapsed(), r.status, r.body);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.code(), "checkpoint_too_large", "{}", r.body);
    assert!(r.body.contains("67108864"), "{}", r.body);
    let left = Daemon::listing(&agent.state().join("checkpoints"));
    assert!(left.is_empty(), "left behind: {left:?}");
    let jobs = agent.call("GET", "/v1/jobs", None).json();
    let job = &jobs["jobs"].as_array().unwrap()[0];
    assert_eq!(job["error"]["code"], "checkpoint_too_large", "{job}");
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Starts a Direct receive of `id` whose stream opens `layers` zstd layers, then idles.
fn idle_upload(agent: &Daemon, id: &str, layers: u16) -> std::os::unix::net::UnixStream {
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "PUT /v1/direct/receive/{id} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
         Content-Type: application/vnd.ms2m.direct.v1\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .unwrap();
    for l in 0..layers {
        // The zstd magic and the start of a frame header: the layer's decoder starts
        // and waits for the rest.
        s.write_all(&frame(1, l, &[0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58]))
            .unwrap();
    }
    s
}

fn answer(mut s: std::os::unix::net::UnixStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn idle_direct_uploads_hold_bounded_threads_and_time_out() {
    let agent = Daemon::start(DaemonOptions {
        config: "idle_timeout_seconds = 3\nmax_direct_layers = 16\nmax_concurrent_jobs = 2\n",
        ..Default::default()
    });
    let base = threads(agent.pid());
    // The issue's attack: 9 uploads left idle (here at the 16-layer cap each; the old
    // agent also took 64). Two receive at once, the rest wait without threads.
    let uploads: Vec<_> = (0..9)
        .map(|i| idle_upload(&agent, &format!("idle-{i}"), 16))
        .collect();
    let mut peak = base;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        peak = peak.max(threads(agent.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = agent.call("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    println!("agent threads: {base} before, at most {peak} with 9 idle 16-layer uploads");
    // Per layer: its decoder thread and the decoder's hashing helper. Two receives
    // of 16 layers at most; the old agent ran all nine (288 threads here).
    assert!(
        peak <= base + 2 * 16 * 2 + 8,
        "{peak} threads (base {base}): receives are not bounded"
    );
    // Each idle upload fails once it delivers nothing for idle_timeout_seconds, and
    // leaves nothing behind.
    for s in uploads {
        let a = answer(s);
        assert!(a.starts_with("HTTP/1.1 422"), "{a}");
        assert!(a.contains("delivered nothing"), "{a}");
    }
    // More layers than max_direct_layers: refused at the 17th.
    let a = answer(idle_upload(&agent, "wide", 64));
    assert!(a.starts_with("HTTP/1.1 422"), "{a}");
    assert!(a.contains("max_direct_layers"), "{a}");
    let left = Daemon::listing(&agent.state().join("checkpoints"));
    assert!(left.is_empty(), "left behind: {left:?}");
}
