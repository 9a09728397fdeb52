//! Fault-injecting TCP proxy for the peer traffic of a test cluster: one loopback listener per
//! member, each connection attributed to the member process that dialed it, and per-link faults
//! (blackhole or reset) between ordered pairs of members.
//!
//! Why this shape (see also common/cluster.rs): etcd, and oxetcd after it, learn every
//! member's peer URL from `--initial-cluster` and then from the replicated member list, so all
//! members see one identical URL per member; per-pair proxy addresses cannot be configured. So each
//! member advertises a proxy port `P_x` that forwards to its real peer listener `L_x`, and every
//! connection *to* `x` passes through `P_x`. A connection says nothing about who dialed it, so the
//! proxy looks the dialer up: the accepted socket's remote port names the dialer's socket in
//! `/proc/net/tcp`, whose inode appears as `socket:[inode]` under `/proc/<pid>/fd` of exactly one
//! member process. With the source known, every connection belongs to the ordered link
//! `dialer → x` (bytes from the dialer) and `x → dialer` (bytes back), and each direction can be
//! held or cut independently. This works for any peer protocol (etcd's HTTP/1.1 rafthttp streams
//! and pipelines, oxetcd's gRPC), needs no root, no iptables and no network namespaces, and a
//! crashed test leaves nothing behind in the host's network configuration.
//!
//! Faults:
//! - [`Fault::Blackhole`]: like a network that silently drops packets. Bytes on a blocked link are
//!   read into the proxy and held, not delivered, so kernel buffers fill and the sender stalls; new
//!   connections on the link are accepted but never connected upstream. Healing delivers what was
//!   held, as TCP retransmission would after a partition ends. Peers notice only through their own
//!   timeouts, exactly as in a real partition.
//! - [`Fault::Reset`]: existing connections on the link are closed at once and new ones are closed
//!   right after accept, like a firewall that rejects.
//!
//! A connection whose dialer cannot be attributed (it closed before the lookup, or it is not a
//! registered member) is forwarded only while no fault touches its destination.
//!
//! The proxy runs on its own tokio runtime, so it keeps forwarding while a test thread blocks (for
//! example while the fixture waits for a restarted member); dropping the proxy closes every socket.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How long the proxy waits for a member's real peer port to accept a forwarded connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes moved per read; at most this much is held per direction of a blackholed connection.
const PUMP_BUFFER_BYTES: usize = 64 * 1024;

/// What a blocked link does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Hold every byte and every new connection until the link is healed.
    Blackhole,
    /// Close existing connections and refuse new ones until the link is healed.
    Reset,
}

/// Counters for a test's report (and for checking the proxy saw traffic at all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted on any member's proxy port.
    pub accepted: u64,
    /// Accepted connections whose dialer was found among the registered member processes.
    pub attributed: u64,
    /// Accepted connections closed at once because of a `Reset` fault.
    pub refused: u64,
    /// Connections closed because a `Reset` fault was applied while they were open.
    pub reset: u64,
    /// Accepted connections that had to wait for a `Blackhole` fault to heal before connecting.
    pub held: u64,
    /// Bytes delivered in either direction.
    pub bytes_forwarded: u64,
}

/// The proxy for one cluster. Members are numbered in the order [`PeerProxy::add_member`] was
/// called (the cluster fixture's member index).
pub struct PeerProxy {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    ports: Vec<u16>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every fault change; pumps holding bytes wait on it.
    faults_changed: watch::Sender<u64>,
    accepted: AtomicU64,
    attributed: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    held: AtomicU64,
    bytes_forwarded: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Real peer listen port of each member (where its proxy forwards to).
    upstream_ports: Vec<u16>,
    /// Running member processes: pid → member index.
    pids: HashMap<u32, usize>,
    /// Blocked ordered links (from, to) and what they do.
    faults: HashMap<(usize, usize), Fault>,
    /// Open forwarded connections, for `Reset`.
    connections: HashMap<u64, Connection>,
    next_connection_id: u64,
}

struct Connection {
    source: Option<usize>,
    destination: usize,
    abort: AbortHandle,
}

/// The state of one direction of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Open,
    Blocked(Fault),
}

impl PeerProxy {
    pub fn new() -> PeerProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("peer-proxy")
            .enable_all()
            .build()
            .expect("building the proxy's tokio runtime should work");
        let (faults_changed, _) = watch::channel(0);
        PeerProxy {
            runtime: Some(runtime),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                faults_changed,
                accepted: AtomicU64::new(0),
                attributed: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                reset: AtomicU64::new(0),
                held: AtomicU64::new(0),
                bytes_forwarded: AtomicU64::new(0),
            }),
            ports: Vec::new(),
        }
    }

    /// Adds a member whose real peer listener is (or will be) `127.0.0.1:upstream_port`; returns
    /// the proxy port to advertise as its peer URL. The member's index is the number of members
    /// added before it.
    pub fn add_member(&mut self, upstream_port: u16) -> u16 {
        let member = self.ports.len();
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding a proxy port on 127.0.0.1:0 should work");
        listener
            .set_nonblocking(true)
            .expect("a fresh listener can be made non-blocking");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        self.shared.lock().upstream_ports.push(upstream_port);
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let _entered = runtime.enter();
        let listener =
            TcpListener::from_std(listener).expect("registering a listener with tokio should work");
        runtime.spawn(accept_loop(listener, member, port, self.shared.clone()));
        self.ports.push(port);
        port
    }

    /// Points `member`'s proxy at a new real peer port (after a start retried with new ports).
    pub fn set_upstream(&self, member: usize, upstream_port: u16) {
        self.shared.lock().upstream_ports[member] = upstream_port;
    }

    /// Records which process is `member` now (`None` once it has exited), for attribution.
    pub fn set_pid(&self, member: usize, pid: Option<u32>) {
        let mut state = self.shared.lock();
        state.pids.retain(|_, index| *index != member);
        if let Some(pid) = pid {
            state.pids.insert(pid, member);
        }
    }

    /// Cuts every link, both directions, between `group` and the other members (adds to any
    /// faults already in place).
    pub fn partition(&self, group: &[usize], fault: Fault) {
        let members = self.ports.len();
        self.update(|state| {
            for &inside in group {
                for outside in (0..members).filter(|index| !group.contains(index)) {
                    state.faults.insert((inside, outside), fault);
                    state.faults.insert((outside, inside), fault);
                }
            }
        });
    }

    /// Removes every fault; held bytes and connections go through.
    pub fn heal(&self) {
        self.update(|state| state.faults.clear());
    }

    /// The blocked links, sorted, for messages.
    pub fn faults(&self) -> Vec<((usize, usize), Fault)> {
        let mut faults: Vec<_> = self
            .shared
            .lock()
            .faults
            .iter()
            .map(|(link, fault)| (*link, *fault))
            .collect();
        faults.sort_by_key(|(link, _)| *link);
        faults
    }

    pub fn stats(&self) -> ProxyStats {
        let shared = &self.shared;
        ProxyStats {
            accepted: shared.accepted.load(Ordering::Relaxed),
            attributed: shared.attributed.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            reset: shared.reset.load(Ordering::Relaxed),
            held: shared.held.load(Ordering::Relaxed),
            bytes_forwarded: shared.bytes_forwarded.load(Ordering::Relaxed),
        }
    }

    /// Applies a fault change, closes connections a new `Reset` cuts, and wakes held pumps.
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.shared.lock();
        change(&mut state);
        let doomed: Vec<u64> = state
            .connections
            .iter()
            .filter(|(_, connection)| {
                let forward = state.link(connection.source, connection.destination);
                let backward = state.link_back(connection.destination, connection.source);
                forward == LinkState::Blocked(Fault::Reset)
                    || backward == LinkState::Blocked(Fault::Reset)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            if let Some(connection) = state.connections.remove(&id) {
                connection.abort.abort();
                self.shared.reset.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(state);
        self.shared
            .faults_changed
            .send_modify(|generation| *generation += 1);
    }
}

impl Default for PeerProxy {
    fn default() -> PeerProxy {
        PeerProxy::new()
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        // Allowed inside an async test; drops every proxy task and so closes every socket.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking pump cannot leave the maps half-updated, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Traffic from `source` (None: unknown dialer) to `destination`.
    fn link(&self, source: Option<usize>, destination: usize) -> LinkState {
        let fault = match source {
            Some(source) if source == destination => None,
            Some(source) => self.faults.get(&(source, destination)).copied(),
            None => self
                .faults
                .iter()
                .find(|((_, to), _)| *to == destination)
                .map(|(_, fault)| *fault),
        };
        fault.map_or(LinkState::Open, LinkState::Blocked)
    }

    /// Traffic from `destination` back to `source` on a connection `source` dialed.
    fn link_back(&self, destination: usize, source: Option<usize>) -> LinkState {
        let fault = match source {
            Some(source) if source == destination => None,
            Some(source) => self.faults.get(&(destination, source)).copied(),
            None => self
                .faults
                .iter()
                .find(|((from, _), _)| *from == destination)
                .map(|(_, fault)| *fault),
        };
        fault.map_or(LinkState::Open, LinkState::Blocked)
    }
}

async fn accept_loop(listener: TcpListener, member: usize, port: u16, shared: Arc<Shared>) {
    loop {
        let Ok((stream, dialer)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let shared_for_task = shared.clone();
        // Registering under the lock means the task cannot finish (and deregister) before it is
        // registered.
        let mut state = shared.lock();
        let id = state.next_connection_id;
        state.next_connection_id += 1;
        let task = tokio::spawn(serve_connection(
            stream,
            dialer,
            member,
            port,
            id,
            shared_for_task,
        ));
        state.connections.insert(
            id,
            Connection {
                source: None,
                destination: member,
                abort: task.abort_handle(),
            },
        );
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registration {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.lock().connections.remove(&self.id);
    }
}

async fn serve_connection(
    client: TcpStream,
    dialer: SocketAddr,
    destination: usize,
    proxy_port: u16,
    id: u64,
    shared: Arc<Shared>,
) {
    let _registration = Registration {
        id,
        shared: shared.clone(),
    };
    let pids: Vec<(u32, usize)> = shared
        .lock()
        .pids
        .iter()
        .map(|(pid, index)| (*pid, *index))
        .collect();
    let source = tokio::task::spawn_blocking(move || dialing_member(dialer, proxy_port, &pids))
        .await
        .ok()
        .flatten();
    if source.is_some() {
        shared.attributed.fetch_add(1, Ordering::Relaxed);
    }
    let upstream_port = {
        let mut state = shared.lock();
        match state.connections.get_mut(&id) {
            Some(connection) => connection.source = source,
            // A reset fault raced with the attribution and already dropped this connection.
            None => return,
        }
        state.upstream_ports[destination]
    };

    // The connection is established only once the link from the dialer is open.
    let mut faults = shared.faults_changed.subscribe();
    let mut counted_hold = false;
    loop {
        faults.borrow_and_update();
        match shared.lock().link(source, destination) {
            LinkState::Open => break,
            LinkState::Blocked(Fault::Reset) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            LinkState::Blocked(Fault::Blackhole) => {
                if !counted_hold {
                    counted_hold = true;
                    shared.held.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if faults.changed().await.is_err() {
            return;
        }
    }

    let upstream_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream_addr))
            .await
        {
            Ok(Ok(stream)) => stream,
            // The member is down: closing the accepted socket is what its dialer sees.
            _ => return,
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let forward = pump(
        client_read,
        upstream_write,
        Direction::Forward,
        source,
        destination,
        shared.clone(),
    );
    let backward = pump(
        upstream_read,
        client_write,
        Direction::Backward,
        source,
        destination,
        shared.clone(),
    );
    tokio::pin!(forward, backward);
    // Either side closing cleanly half-closes the other way; an error tears both down.
    tokio::select! {
        result = &mut forward => if result.is_ok() { let _ = backward.await; },
        result = &mut backward => if result.is_ok() { let _ = forward.await; },
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Dialer to destination member.
    Forward,
    /// Destination member back to the dialer.
    Backward,
}

/// Copies one direction, holding bytes while the link is blackholed. `Err` means the connection
/// must be torn down (I/O error or a reset fault).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    source: Option<usize>,
    destination: usize,
    shared: Arc<Shared>,
) -> Result<(), ()> {
    let mut buffer = vec![0_u8; PUMP_BUFFER_BYTES];
    let mut faults = shared.faults_changed.subscribe();
    loop {
        let read = from.read(&mut buffer).await.map_err(|_| ())?;
        if read == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        loop {
            faults.borrow_and_update();
            let link = {
                let state = shared.lock();
                match direction {
                    Direction::Forward => state.link(source, destination),
                    Direction::Backward => state.link_back(destination, source),
                }
            };
            match link {
                LinkState::Open => break,
                LinkState::Blocked(Fault::Reset) => return Err(()),
                LinkState::Blocked(Fault::Blackhole) => {
                    faults.changed().await.map_err(|_| ())?;
                }
            }
        }
        to.write_all(&buffer[..read]).await.map_err(|_| ())?;
        shared
            .bytes_forwarded
            .fetch_add(read as u64, Ordering::Relaxed);
    }
}

/// Finds which registered member process owns the socket that dialed the proxy: the dialer's
/// socket is the one whose local port is `dialer.port()` and remote port is `proxy_port`.
fn dialing_member(dialer: SocketAddr, proxy_port: u16, pids: &[(u32, usize)]) -> Option<usize> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| socket_inode(Path::new(table), dialer.port(), proxy_port))?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, member)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
            .then_some(*member)
    })
}

/// The inode of the socket in a `/proc/net/tcp{,6}` table with the given local and remote ports.
fn socket_inode(table: &Path, local_port: u16, remote_port: u16) -> Option<u64> {
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port_of = |address: &str| {
            address
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
        };
        let local = port_of(fields.get(1)?)?;
        let remote = port_of(fields.get(2)?)?;
        let inode: u64 = fields.get(9)?.parse().ok()?;
        (local == local_port && remote == remote_port && inode != 0).then_some(inode)
    })
}
