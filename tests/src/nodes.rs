//! Two Kubernetes-like nodes on one machine, built from network namespaces.
//!
//! ```text
//!   host ── veth ── nodeA ── veth ── pod netns (runc container joins it)
//!        └─ veth ── nodeB ── veth ── pod netns
//! ```
//!
//! Decisions (see also docs/sample-service.md):
//! - A node is a network namespace joined to the host by a veth pair; agents run in
//!   it. A pod is its own network namespace, pre-created with `lo` up and joined to
//!   its node by another veth pair, as a CNI plugin does; the container joins the pod
//!   netns (runc `linux.namespaces[network].path`). So a migrated pod gets a new IP,
//!   as in Kubernetes, and the node itself routes for its pods.
//! - Every cluster takes one /24 of the test-only range 10.231.0.0/16 (claimed with a
//!   lock file, so tests may run in parallel): host↔nodeA 10.231.K.0/30, host↔nodeB
//!   10.231.K.4/30, pods 10.231.K.(64+4i)/30, and a "services" address 10.231.K.254/32.
//! - The shared registry and broker listen on 127.0.0.1 only. Rather than starting a
//!   second broker or rewriting packets, the harness forwards the ports it is asked
//!   for from the services address to 127.0.0.1 (a plain TCP relay in the test
//!   process), so every node and pod reaches the broker at one address that does not
//!   change when a pod moves. Nothing listens on any other interface.
//! - Nodes reach each other through the host: forwarding is enabled on this cluster's
//!   host-side veths only (per-interface `forwarding`), not host-wide.
//! - Host-side veths get strict reverse-path filtering: a restored socket that still
//!   carries the old pod's source address (CRIU `--tcp-established`) cannot inject
//!   segments into the connection the source pod still uses.
//! - Drop deletes pods, then nodes (which removes the veths and host routes with them),
//!   stops the relays and frees the /24, also when the test panics.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::netns::Netns;
use crate::process::run;

const LOCK_DIR: &str = "/run/ms2m-test-nodes";

/// Which of the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    fn letter(self) -> &'static str {
        match self {
            NodeId::A => "a",
            NodeId::B => "b",
        }
    }
}

/// A node: a network namespace routed to the host.
#[derive(Debug)]
pub struct Node {
    netns: Netns,
    /// The node's address on its host link.
    addr: Ipv4Addr,
    /// The host's address on that link (the node's default gateway).
    host_addr: Ipv4Addr,
}

impl Node {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// A command that runs in the node's network namespace.
    pub fn command(&self, program: &str) -> Command {
        self.netns.command(program)
    }

    /// A command that joins only the node's network namespace (`nsenter --net`), for
    /// daemons such as an agent: `ip netns exec` also gives the program a private mount
    /// namespace with a fresh `/sys`, which hides the cgroup hierarchies CRIU freezes
    /// containers with.
    pub fn daemon_command(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(program);
        c
    }
}

/// A pod sandbox: a network namespace with `lo` up and `eth0` towards its node.
#[derive(Debug)]
pub struct Pod {
    name: String,
    node: NodeId,
    netns: Netns,
    addr: Ipv4Addr,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The pod's IP.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The netns file for runc's config.json.
    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    pub fn command(&self, program: &str) -> Command {
        self.netns.command(program)
    }
}

/// Two nodes, the pods made on them, and relays to host services.
pub struct Cluster {
    k: u8,
    // Field order is drop order: pods before the nodes they hang off.
    pods: Mutex<Vec<Arc<Pod>>>,
    node_a: Node,
    node_b: Node,
    relays: Mutex<Vec<Relay>>,
    next_pod: AtomicU32,
    _claim: Claim,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("subnet", &format!("10.231.{}.0/24", self.k))
            .finish()
    }
}

impl Cluster {
    /// Creates nodeA and nodeB in a free 10.231.K.0/24.
    pub fn new() -> Cluster {
        crate::env::require_root();
        crate::env::tool("ip", "iproute2");
        let claim = Claim::take();
        let k = claim.k;
        let node = |id: NodeId, base: u8| -> Node {
            let netns = Netns::new(&format!("ms2m-k{k}-node{}", id.letter().to_uppercase()));
            let host_if = format!("m2k{k}{}", id.letter());
            let host_addr = Ipv4Addr::new(10, 231, k, base + 1);
            let addr = Ipv4Addr::new(10, 231, k, base + 2);
            netns.connect_to_host(&host_if, &host_addr.to_string(), &addr.to_string(), 30);
            set_sysctl(None, &format!("net/ipv4/conf/{host_if}/rp_filter"), "1");
            // Node to node (agent to agent in Direct mode) goes through the host: forward
            // what arrives on this cluster's links only, never host-wide `ip_forward`.
            set_sysctl(None, &format!("net/ipv4/conf/{host_if}/forwarding"), "1");
            set_sysctl(Some(&netns), "net/ipv4/ip_forward", "1");
            Node {
                netns,
                addr,
                host_addr,
            }
        };
        let node_a = node(NodeId::A, 0);
        let node_b = node(NodeId::B, 4);
        let cluster = Cluster {
            k,
            pods: Mutex::default(),
            node_a,
            node_b,
            relays: Mutex::default(),
            next_pod: AtomicU32::new(0),
            _claim: claim,
        };
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/32", cluster.services_addr()),
            "dev",
            &format!("m2k{k}a"),
        ]));
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        match id {
            NodeId::A => &self.node_a,
            NodeId::B => &self.node_b,
        }
    }

    /// The address on the host where forwarded services listen; reachable from
    /// every node and pod of this cluster, and from the host.
    pub fn services_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.k, 254)
    }

    /// Relays `services_addr():port` to `127.0.0.1:target_port` until the cluster is
    /// dropped; returns the address nodes and pods use.
    pub fn forward(&self, port: u16, target_port: u16) -> SocketAddr {
        let listen = SocketAddr::from((self.services_addr(), port));
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, target_port));
        let relay = Relay::start(listen, target);
        self.relays.lock().unwrap().push(relay);
        listen
    }

    /// Cuts every connection relayed so far (both ends see a reset/EOF), as a broker
    /// restart or a network blip would; the relays keep accepting new ones.
    pub fn sever_forwarded_connections(&self) {
        for relay in self.relays.lock().unwrap().iter() {
            relay.sever();
        }
    }

    /// Creates a pod sandbox named `name` on `node`.
    pub fn pod(&self, node: NodeId, name: &str) -> Arc<Pod> {
        let i = self.next_pod.fetch_add(1, Ordering::Relaxed);
        assert!(i < 40, "at most 40 pods per cluster");
        let k = self.k;
        let base = 64 + 4 * i as u8;
        let gw = Ipv4Addr::new(10, 231, k, base + 1);
        let addr = Ipv4Addr::new(10, 231, k, base + 2);
        let n = self.node(node);
        let netns = Netns::new(&format!("ms2m-k{k}-p{i}-{name}"));
        let node_if = format!("m2k{k}q{i}");
        let nn = n.netns.name();
        run(Command::new("ip").args([
            "-n",
            nn,
            "link",
            "add",
            &node_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]));
        run(Command::new("ip").args([
            "-n",
            nn,
            "addr",
            "add",
            &format!("{gw}/30"),
            "dev",
            &node_if,
        ]));
        run(Command::new("ip").args(["-n", nn, "link", "set", &node_if, "up"]));
        run(Command::new("ip").args([
            "-n",
            netns.name(),
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]));
        run(Command::new("ip").args(["-n", netns.name(), "link", "set", "eth0", "up"]));
        run(Command::new("ip").args([
            "-n",
            netns.name(),
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]));
        // Host → pod goes through the node; the route disappears with the node's veth.
        run(Command::new("ip").args([
            "route",
            "add",
            &format!("{}/30", Ipv4Addr::new(10, 231, k, base)),
            "via",
            &n.addr.to_string(),
        ]));
        let pod = Arc::new(Pod {
            name: name.to_string(),
            node,
            netns,
            addr,
        });
        self.pods.lock().unwrap().push(Arc::clone(&pod));
        pod
    }

    /// Deletes a pod sandbox now (its veth and the host route go with it). The
    /// caller must have stopped the containers in it.
    pub fn remove_pod(&self, pod: &Arc<Pod>) {
        self.pods.lock().unwrap().retain(|p| !Arc::ptr_eq(p, pod));
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for relay in self
            .relays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            relay.stop();
        }
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Nodes (and the claim) drop after this, in field order.
    }
}

fn set_sysctl(netns: Option<&Netns>, key: &str, value: &str) {
    match netns {
        None => fs::write(Path::new("/proc/sys").join(key), value)
            .unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}")),
        Some(ns) => {
            run(ns
                .command("sh")
                .args(["-c", &format!("echo {value} > /proc/sys/{key}")]));
        }
    }
}

/// Exclusive use of 10.231.K.0/24 for this process, held by a lock file naming our PID.
#[derive(Debug)]
struct Claim {
    k: u8,
    path: PathBuf,
}

impl Claim {
    fn take() -> Claim {
        static N: AtomicU32 = AtomicU32::new(0);
        fs::create_dir_all(LOCK_DIR).expect("create lock dir");
        let start =
            (std::process::id() as usize * 7 + N.fetch_add(1, Ordering::Relaxed) as usize) % 250;
        for off in 0..250 {
            let k = (1 + (start + off) % 250) as u8;
            let path = Path::new(LOCK_DIR).join(format!("k{k}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    let claim = Claim { k, path };
                    if subnet_in_use(k) {
                        // Left over by a killed run: keep the lock, so nobody uses it.
                        std::mem::forget(claim);
                        continue;
                    }
                    return claim;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&path).unwrap_or_default();
                    let alive = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if !alive && !subnet_in_use(k) {
                        let _ = fs::remove_file(&path);
                    }
                }
                Err(e) => panic!("lock {}: {e}", path.display()),
            }
        }
        panic!("no free 10.231.K.0/24 for a test cluster (see {LOCK_DIR})");
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn subnet_in_use(k: u8) -> bool {
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let needle = format!("10.231.{k}.");
    String::from_utf8_lossy(&addrs).contains(&needle)
        || String::from_utf8_lossy(&routes).contains(&needle)
        || Path::new(&format!("/run/netns/ms2m-k{k}-nodeA")).exists()
}

/// A TCP relay from one listening address to a loopback service.
struct Relay {
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener =
            TcpListener::bind(listen).unwrap_or_else(|e| panic!("relay bind {listen}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (Arc::clone(&stop), Arc::clone(&conns));
        let accept = thread::spawn(move || {
            for inbound in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(target) else {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                {
                    let mut list = c.lock().unwrap();
                    list.extend(inbound.try_clone().ok());
                    list.extend(outbound.try_clone().ok());
                }
                pipe(&inbound, &outbound);
                pipe(&outbound, &inbound);
            }
        });
        Relay {
            listen,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn sever(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.listen);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` → `to` on a thread; EOF on `from` half-closes `to`.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
