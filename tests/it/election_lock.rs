//! Black-box tests of the Lock and Election services and of etcdctl's `lock` and `elect`: who
//! holds a lock or leads, waiting in creation order, release by Unlock, Resign and lease end,
//! holders killed mid-way, waiters that go away, Observe, and etcd's errors.

use crate::common;

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use etcd_client::{
    Client, ConnectOptions, Error, GetOptions, LeaderKey, LeaderResponse, LockOptions,
    ObserveStream, ProclaimOptions, ResignOptions,
};
use tonic::Code;

/// Bound on anything expected to happen: a lease ending, a waiter being served.
const WAIT: Duration = Duration::from_secs(20);
/// TTL of the leases whose end the tests wait for (etcd's minimum with default flags).
const SHORT_TTL_SECS: i64 = 2;

fn status_of<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> (Code, String) {
    match result {
        Err(Error::GRpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("{what}: expected a gRPC error status, got {other:?}"),
    }
}

fn unknown(message: &str) -> (Code, String) {
    (Code::Unknown, message.to_string())
}

/// A client without a request timeout, for calls that wait as long as a test needs.
async fn patient_client(server: &Server) -> Client {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    Client::connect([server.endpoint()], Some(options))
        .await
        .expect("etcd-client connects")
}

async fn keys_under(client: &mut Client, prefix: &str) -> Vec<String> {
    client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn grant(client: &mut Client, ttl_secs: i64) -> i64 {
    client
        .lease_grant(ttl_secs, None)
        .await
        .expect("grant")
        .id()
}

/// Polls `check` (an async read) until it holds; panics after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until exactly `expected` are the keys under `prefix`.
async fn wait_for_keys(client: &Client, prefix: &str, expected: &[String]) {
    let mut expected = expected.to_vec();
    expected.sort();
    wait_until(&format!("keys under {prefix} to be {expected:?}"), || {
        let mut client = client.clone();
        let expected = expected.clone();
        async move {
            let mut keys = keys_under(&mut client, prefix).await;
            keys.sort();
            keys == expected
        }
    })
    .await;
}

/// An etcdctl that keeps running (`lock`, `elect`), its output collected as it comes.
struct Background {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn collect<R: Read + Send + 'static>(mut source: R, sink: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..read]);
        }
    });
}

impl Background {
    fn spawn(server: &Server, args: &[&str]) -> Background {
        let mut child = server
            .etcdctl_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl spawns");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout));
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr));
        Background {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting on etcdctl works")
    }

    /// Waits until stdout satisfies `done`; panics if etcdctl exits first or after [`WAIT`].
    async fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.stdout()) {
            if let Some(status) = self.exited() {
                // Give the readers a moment to drain what it printed last.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if done(&self.stdout()) {
                    return;
                }
                panic!(
                    "{what}: etcdctl exited with {status}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for etcdctl to exit by itself within [`WAIT`].
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                // Let the readers take the last output.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl did not exit within {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process can clean nothing up.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn next_leader(stream: &mut ObserveStream) -> LeaderResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an observation within the timeout")
        .expect("the stream works")
        .expect("the stream stays open")
}

/// The lease ID an etcd recipe key `<name>/<lease hex>` names.
fn lease_of(key: &str) -> i64 {
    let hex = key.rsplit('/').next().unwrap();
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{key}: not a lease key: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_for_the_holder_and_unlock_passes_it_on() {
    let server = Server::start();
    let mut client = server.client().await;
    let first = grant(&mut client, 60).await;
    let second = grant(&mut client, 60).await;

    let held = client
        .lock("queue", Some(LockOptions::new().with_lease(first)))
        .await
        .expect("an uncontended lock is taken at once");
    let held_key = String::from_utf8(held.key().to_vec()).unwrap();
    assert_eq!(held_key, format!("queue/{first:x}"));
    let kv = client.get(held_key.as_str(), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!(kv.lease(), first, "the key is attached to the lease");
    assert_eq!(kv.value(), b"", "a lock key has no value");
    assert_eq!(
        held.header().unwrap().revision(),
        kv.create_revision(),
        "the uncontended lock answers with the revision that created its key"
    );

    // Locking with the same lease is the same acquisition.
    let again = client
        .lock("queue", Some(LockOptions::new().with_lease(first)))
        .await
        .expect("the same lease locks again at once");
    assert_eq!(again.key(), held.key());

    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("queue", Some(LockOptions::new().with_lease(second)))
            .await
    });
    let second_key = format!("queue/{second:x}");
    wait_for_keys(&client, "queue/", &[held_key.clone(), second_key.clone()]).await;
    assert!(!waiter.is_finished(), "the second lock waits for the first");

    client.unlock(held.key()).await.expect("unlock");
    let taken = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter gets the lock once it is unlocked")
        .unwrap()
        .expect("the waiter's lock succeeds");
    assert_eq!(taken.key(), second_key.as_bytes());
    assert!(
        taken.header().unwrap().revision() > held.header().unwrap().revision(),
        "the waiter's header comes after the unlock"
    );

    client.unlock(taken.key()).await.expect("unlock");
    assert!(keys_under(&mut client, "queue/").await.is_empty());
    // Unlocking a key that is gone is not an error.
    client.unlock(taken.key()).await.expect("unlock again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_released_when_the_holders_lease_ends() {
    let server = Server::start();
    let mut client = server.client().await;
    let short = grant(&mut client, SHORT_TTL_SECS).await;
    let long = grant(&mut client, 60).await;

    let held = client
        .lock("expiring", Some(LockOptions::new().with_lease(short)))
        .await
        .expect("lock");
    // Nobody keeps the short lease alive: the waiter is served once it ends.
    let taken = tokio::time::timeout(
        WAIT,
        client.lock("expiring", Some(LockOptions::new().with_lease(long))),
    )
    .await
    .expect("the lock passes on when the holder's lease ends")
    .expect("lock");
    assert_eq!(taken.key(), format!("expiring/{long:x}").as_bytes());
    assert_ne!(taken.key(), held.key());
    assert_eq!(
        keys_under(&mut client, "expiring/").await,
        vec![format!("expiring/{long:x}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_goes_away_leaves_no_key() {
    let server = Server::start();
    let mut client = server.client().await;
    let holder = grant(&mut client, 60).await;
    let waiting = grant(&mut client, 5).await;
    let held = client
        .lock("abandoned", Some(LockOptions::new().with_lease(holder)))
        .await
        .expect("lock");
    let held_key = String::from_utf8(held.key().to_vec()).unwrap();

    // The waiter has its own connection, and both its call and the connection go away.
    let mut waiter_client = patient_client(&server).await;
    let waiter = tokio::spawn(async move {
        let result = waiter_client
            .lock("abandoned", Some(LockOptions::new().with_lease(waiting)))
            .await;
        drop(waiter_client);
        result
    });
    let waiting_key = format!("abandoned/{waiting:x}");
    wait_for_keys(&client, "abandoned/", &[held_key.clone(), waiting_key]).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());

    // Its key is gone by the time its lease ends (etcd deletes it when the call ends).
    wait_for_keys(&client, "abandoned/", std::slice::from_ref(&held_key)).await;
    client.unlock(held.key()).await.expect("unlock");
    assert!(keys_under(&mut client, "abandoned/").await.is_empty());
    // The lock is free: another lease takes it at once.
    let other = grant(&mut client, 60).await;
    let taken = tokio::time::timeout(
        WAIT,
        client.lock("abandoned", Some(LockOptions::new().with_lease(other))),
    )
    .await
    .expect("a free lock is taken at once")
    .expect("lock");
    assert_eq!(taken.key(), format!("abandoned/{other:x}").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_without_a_lease_gets_one_and_an_unknown_lease_is_refused() {
    let server = Server::start();
    let mut client = server.client().await;

    let taken = client.lock("own-lease", None).await.expect("lock");
    let key = String::from_utf8(taken.key().to_vec()).unwrap();
    let lease = lease_of(&key);
    assert_ne!(lease, 0);
    let kv = client.get(key.as_str(), None).await.unwrap();
    assert_eq!(
        kv.kvs()[0].lease(),
        lease,
        "the key carries the lease it is named after"
    );
    let ttl = client.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60, "a lease of etcd's session TTL");
    client.lease_revoke(lease).await.expect("revoke");

    let refused = client
        .lock("no-such-lease", Some(LockOptions::new().with_lease(0x7777)))
        .await;
    // etcd's server is a client of its own member: the KV error arrives with code Unknown.
    assert_eq!(
        status_of(refused, "lock with an unknown lease"),
        unknown("etcdserver: requested lease not found")
    );
    assert!(keys_under(&mut client, "no-such-lease/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_leader_and_resign() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut election = client.election_client();

    let (code, message) = status_of(election.leader("vote").await, "leader of nobody");
    assert_eq!((code, message), unknown("election: no leader"));

    let first = grant(&mut client, 60).await;
    let second = grant(&mut client, 60).await;
    let won = election
        .campaign("vote", "one", first)
        .await
        .expect("an uncontended campaign wins at once");
    let leader = won.leader().unwrap().clone();
    assert_eq!(leader.name(), b"vote");
    assert_eq!(leader.key(), format!("vote/{first:x}").as_bytes());
    assert_eq!(leader.lease(), first);
    let kv = client.get(leader.key(), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!((kv.value(), kv.lease()), (&b"one"[..], first));
    assert_eq!(leader.rev(), kv.create_revision());
    assert_eq!(won.header().unwrap().revision(), kv.create_revision());

    let current = election.leader("vote").await.expect("leader");
    let current_kv = current.kv().unwrap();
    assert_eq!(
        (current_kv.key(), current_kv.value()),
        (leader.key(), &b"one"[..])
    );

    election
        .proclaim(
            "uno",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("the leader proclaims");
    let current = election.leader("vote").await.expect("leader");
    assert_eq!(current.kv().unwrap().value(), b"uno");

    // A second candidate waits behind the leader; its key is already there.
    let mut candidate = client.election_client();
    let runner = tokio::spawn(async move { candidate.campaign("vote", "two", second).await });
    let second_key = format!("vote/{second:x}");
    wait_for_keys(
        &client,
        "vote/",
        &[format!("vote/{first:x}"), second_key.clone()],
    )
    .await;
    assert!(!runner.is_finished(), "the second candidate waits");

    election
        .resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .expect("the leader resigns");
    let won = tokio::time::timeout(WAIT, runner)
        .await
        .expect("the second candidate wins once the first resigns")
        .unwrap()
        .expect("campaign");
    let next = won.leader().unwrap().clone();
    assert_eq!(next.key(), second_key.as_bytes());
    let current = election.leader("vote").await.expect("leader");
    assert_eq!(current.kv().unwrap().value(), b"two");

    // The old leader key no longer leads: Proclaim refuses, Resign does nothing.
    let stale = election
        .proclaim(
            "late",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await;
    assert_eq!(
        status_of(stale, "proclaim by a resigned leader"),
        unknown("election: not leader")
    );
    election
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resigning a key that does not lead is no error");
    assert_eq!(
        election.leader("vote").await.unwrap().kv().unwrap().value(),
        b"two"
    );

    // A campaign with the lease of the current leader is that leader, with the new value.
    let again = election
        .campaign("vote", "deux", second)
        .await
        .expect("campaign again");
    assert_eq!(again.leader().unwrap().rev(), next.rev());
    assert_eq!(
        election.leader("vote").await.unwrap().kv().unwrap().value(),
        b"deux"
    );

    // A leader key naming the right key but another revision is not the leader.
    let forged = LeaderKey::new()
        .with_name("vote")
        .with_key(next.key())
        .with_rev(next.rev() + 1000)
        .with_lease(second);
    let refused = election
        .proclaim("forged", Some(ProclaimOptions::new().with_leader(forged)))
        .await;
    assert_eq!(
        status_of(refused, "proclaim with a wrong revision"),
        unknown("election: not leader")
    );

    // Without a leader key, Proclaim and Resign are refused.
    let missing = election.proclaim("x", None).await;
    assert_eq!(
        status_of(missing, "proclaim without a leader"),
        unknown("\"leader\" field must be provided")
    );
    let missing = election.resign(None).await;
    assert_eq!(
        status_of(missing, "resign without a leader"),
        unknown("\"leader\" field must be provided")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_follows_every_leader_and_a_campaign_that_goes_away_resigns() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut election = client.election_client();
    let first = grant(&mut client, 60).await;
    let second = grant(&mut client, 60).await;
    let third = grant(&mut client, 60).await;
    let won = election
        .campaign("watched", "a", first)
        .await
        .expect("campaign");
    let leader = won.leader().unwrap().clone();
    // (etcd sends the stream's headers with its first message: there must be a leader to show.)
    let mut observed = election.observe("watched").await.expect("observe");

    let seen = next_leader(&mut observed).await;
    let kv = seen.kv().unwrap();
    assert_eq!((kv.key(), kv.value()), (leader.key(), &b"a"[..]));
    assert_eq!(seen.header().unwrap().revision(), kv.mod_revision());

    election
        .proclaim(
            "b",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("proclaim");
    let seen = next_leader(&mut observed).await;
    assert_eq!(seen.kv().unwrap().value(), b"b");
    assert_eq!(seen.kv().unwrap().key(), leader.key());

    // A campaign whose caller goes away resigns: its key goes, and it never leads.
    let quitter_client = patient_client(&server).await;
    let quitter = tokio::spawn(async move {
        quitter_client
            .election_client()
            .campaign("watched", "never", second)
            .await
    });
    let quitter_key = format!("watched/{second:x}");
    wait_for_keys(
        &client,
        "watched/",
        &[format!("watched/{first:x}"), quitter_key],
    )
    .await;
    quitter.abort();
    wait_for_keys(&client, "watched/", &[format!("watched/{first:x}")]).await;

    let mut candidate = client.election_client();
    let runner = tokio::spawn(async move { candidate.campaign("watched", "c", third).await });
    let third_key = format!("watched/{third:x}");
    wait_for_keys(
        &client,
        "watched/",
        &[format!("watched/{first:x}"), third_key.clone()],
    )
    .await;
    election
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    let seen = next_leader(&mut observed).await;
    let kv = seen.kv().unwrap();
    assert_eq!((kv.key(), kv.value()), (third_key.as_bytes(), &b"c"[..]));
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("the candidate wins")
        .unwrap()
        .expect("campaign");

    // With no leader, Observe waits for the next one.
    client.lease_revoke(third).await.expect("revoke");
    wait_for_keys(&client, "watched/", &[]).await;
    let fourth = grant(&mut client, 60).await;
    election
        .campaign("watched", "d", fourth)
        .await
        .expect("campaign");
    let seen = next_leader(&mut observed).await;
    let kv = seen.kv().unwrap();
    assert_eq!(kv.value(), b"d");
    assert_eq!(kv.key(), format!("watched/{fourth:x}").as_bytes());
    assert_eq!(seen.header().unwrap().revision(), kv.mod_revision());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_holder_killed_passes_the_lock_on() {
    let server = Server::start();
    let mut client = server.client().await;

    let ttl = SHORT_TTL_SECS.to_string();
    let mut holder = Background::spawn(&server, &["lock", "--ttl", &ttl, "shared"]);
    holder
        .wait_for("etcdctl lock prints the key it holds", |out| {
            out.starts_with("shared/") && out.ends_with('\n')
        })
        .await;
    let holder_key = holder.stdout().trim().to_string();
    let waiting = grant(&mut client, 60).await;
    let mut waiter_client = patient_client(&server).await;
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("shared", Some(LockOptions::new().with_lease(waiting)))
            .await
    });
    let waiting_key = format!("shared/{waiting:x}");
    wait_for_keys(
        &client,
        "shared/",
        &[holder_key.clone(), waiting_key.clone()],
    )
    .await;
    assert!(!waiter.is_finished(), "the lock is etcdctl's");

    // Killed, etcdctl cannot unlock: the lock passes on when its session lease ends.
    holder.kill();
    let taken = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter gets the lock once the holder's lease ends")
        .unwrap()
        .expect("lock");
    assert_eq!(taken.key(), waiting_key.as_bytes());
    assert_eq!(keys_under(&mut client, "shared/").await, vec![waiting_key]);

    // etcdctl waits behind the lock service's holder, then runs its command holding the lock.
    let mut runner = Background::spawn(
        &server,
        &[
            "lock",
            "shared",
            "--",
            "sh",
            "-c",
            "echo holding $ETCD_LOCK_KEY",
        ],
    );
    wait_until("etcdctl to queue up", || {
        let mut client = client.clone();
        async move { keys_under(&mut client, "shared/").await.len() == 2 }
    })
    .await;
    assert_eq!(runner.exited(), None, "etcdctl waits for the lock");
    assert_eq!(runner.stdout(), "");
    client.unlock(taken.key()).await.expect("unlock");
    let status = runner.wait_exit().await;
    assert!(
        status.success(),
        "etcdctl lock -- cmd: {status}\n{}",
        runner.stderr()
    );
    let printed = runner.stdout();
    let key = printed
        .strip_prefix("holding ")
        .unwrap_or_else(|| panic!("the command's output: {printed:?}"))
        .trim();
    assert!(key.starts_with("shared/"), "ETCD_LOCK_KEY: {key}");
    assert!(
        keys_under(&mut client, "shared/").await.is_empty(),
        "etcdctl unlocks after the command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_observe_with_a_candidate_killed() {
    let server = Server::start();
    let mut client = server.client().await;
    let mut election = client.election_client();

    let mut observer = Background::spawn(&server, &["elect", "-l", "office"]);
    let first = grant(&mut client, 60).await;
    let won = election
        .campaign("office", "alice", first)
        .await
        .expect("campaign");
    let alice = won.leader().unwrap().clone();
    let alice_key = format!("office/{first:x}");
    observer
        .wait_for("etcdctl elect -l shows the leader", |out| {
            out == format!("{alice_key}\nalice\n")
        })
        .await;

    // etcdctl campaigns behind the leader the Election service made.
    let mut bob = Background::spawn(&server, &["elect", "office", "bob"]);
    wait_until("etcdctl to stand", || {
        let mut client = client.clone();
        async move { keys_under(&mut client, "office/").await.len() == 2 }
    })
    .await;
    assert_eq!(bob.stdout(), "", "etcdctl does not lead yet");
    election
        .resign(Some(ResignOptions::new().with_leader(alice)))
        .await
        .expect("resign");
    bob.wait_for("etcdctl elect leads", |out| {
        out.starts_with("office/") && out.ends_with("\nbob\n")
    })
    .await;
    let bob_key = bob.stdout().lines().next().unwrap().to_string();
    observer
        .wait_for("the observer sees etcdctl lead", |out| {
            out.ends_with(&format!("{bob_key}\nbob\n"))
        })
        .await;
    let current = election.leader("office").await.expect("leader");
    assert_eq!(current.kv().unwrap().key(), bob_key.as_bytes());

    // Killed, etcdctl leaves its key to its session lease; revoking it ends the leadership.
    bob.kill();
    assert_eq!(
        election
            .leader("office")
            .await
            .unwrap()
            .kv()
            .unwrap()
            .value(),
        b"bob",
        "a killed leader leads until its lease ends"
    );
    client
        .lease_revoke(lease_of(&bob_key))
        .await
        .expect("revoke");
    let gone = election.leader("office").await;
    assert_eq!(
        status_of(gone, "leader after the lease ended"),
        unknown("election: no leader")
    );

    let carol = grant(&mut client, 60).await;
    election
        .campaign("office", "carol", carol)
        .await
        .expect("campaign");
    observer
        .wait_for("the observer sees the next leader", |out| {
            out.ends_with(&format!("office/{carol:x}\ncarol\n"))
        })
        .await;
}
