//! Auth tokens end to end: simple tokens expire `--auth-token-ttl` after their last use and
//! clients authenticate again; auth changes reach a client that already holds a token; JWTs
//! (`--auth-token jwt,...`) signed with RS256, ES256 and EdDSA keys made here with openssl expire
//! by their `ttl`, carry their auth revision and refuse a signature from another key;
//! `--bcrypt-cost` is the cost of the stored hashes; and a member that catches up from a raft
//! snapshot enforces the same auth. Every test also runs against etcd 3.4
//! (`OXETCD_TEST_BIN=/usr/bin/etcd`), except EdDSA, which etcd 3.4 does not implement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use oxetcd::proto::etcdserverpb::auth_client::AuthClient;
use oxetcd::proto::etcdserverpb::kv_client::KvClient;
use oxetcd::proto::etcdserverpb::{AuthenticateRequest, RangeRequest, RangeResponse};
use tonic::Code;

use crate::auth::{add_alice, connect_as, denied, refusal, server_with_alice};
use crate::common::cluster::{Cluster, ClusterOptions, FAILOVER_DEADLINE, exclusive};
use crate::common::{self, Server};

/// `--auth-token-ttl` of the expiry test, in seconds.
const TTL_SECS: u64 = 2;
/// The JWTs' `ttl`, in seconds: long enough for the checks made before it runs out, even on a
/// loaded machine.
const JWT_TTL_SECS: u64 = 4;
/// How long past its TTL an idle token is certainly gone: etcd drops expired simple tokens
/// from a 1 s ticker, and a JWT's `exp` is in whole seconds.
const EXPIRY_MARGIN: Duration = Duration::from_secs(2);

fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("a valid endpoint")
        .connect_lazy()
}

/// A token from Authenticate, sent as is afterwards (no client re-authenticates behind it).
async fn authenticate(endpoint: &str, user: &str, password: &str) -> Result<String, tonic::Status> {
    Ok(AuthClient::new(channel(endpoint))
        .authenticate(AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token)
}

async fn get_with(endpoint: &str, token: &str, key: &str) -> Result<RangeResponse, tonic::Status> {
    let mut request = tonic::Request::new(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    });
    request
        .metadata_mut()
        .insert("token", token.parse().expect("a token is ASCII"));
    Ok(KvClient::new(channel(endpoint))
        .range(request)
        .await?
        .into_inner())
}

fn status<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    match result {
        Err(status) => (status.code(), status.message().to_owned()),
        Ok(ok) => panic!("expected a refusal, got {ok:?}"),
    }
}

fn invalid_token() -> (Code, String) {
    (
        Code::Unauthenticated,
        "etcdserver: invalid auth token".to_owned(),
    )
}

fn old_revision() -> (Code, String) {
    (
        Code::InvalidArgument,
        "etcdserver: revision of auth store is old".to_owned(),
    )
}

fn as_root(server: &Server, args: &[&str]) -> String {
    server.etcdctl_ok(&[&["--user", "root:rootpw"][..], args].concat())
}

/// A simple token used more often than its TTL stays valid; left idle past it, it is refused as
/// `invalid auth token`, and the etcd-client crate (with token refresh) and etcdctl `--user`
/// authenticate again. The sleeps are the point: the token must sit unused while time passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_expire_when_idle_and_clients_authenticate_again() {
    let ttl = Duration::from_secs(TTL_SECS);
    let server = Server::start_with(&["--auth-token-ttl", &TTL_SECS.to_string()]);
    add_alice(&server);
    let endpoint = server.endpoint();
    let token = authenticate(&endpoint, "alice", "alicepw")
        .await
        .expect("alice authenticates");
    let in_use_until = Instant::now() + 2 * ttl;
    while Instant::now() < in_use_until {
        get_with(&endpoint, &token, "app/x")
            .await
            .expect("a token in use outlives its TTL");
        tokio::time::sleep(ttl / 4).await;
    }
    let mut refreshing = Client::connect(
        [endpoint.as_str()],
        Some(
            ConnectOptions::new()
                .with_user("alice", "alicepw")
                .with_auto_token_refresh(true),
        ),
    )
    .await
    .expect("alice connects");
    let mut plain = connect_as(&server, "alice", "alicepw").await;
    plain.get("app/x", None).await.expect("a fresh token works");
    refreshing
        .get("app/x", None)
        .await
        .expect("a fresh token works");

    tokio::time::sleep(ttl + EXPIRY_MARGIN).await;
    assert_eq!(
        status(get_with(&endpoint, &token, "app/x").await),
        invalid_token()
    );
    assert_eq!(
        refusal(plain.get("app/x", None).await),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".to_owned()
        )
    );
    let got = refreshing
        .get("app/x", None)
        .await
        .expect("the client authenticates again and retries");
    assert_eq!(got.kvs()[0].value(), b"1");
    assert_eq!(
        server.etcdctl_ok(&[
            "--user",
            "alice:alicepw",
            "get",
            "app/x",
            "--print-value-only"
        ]),
        "1\n"
    );
}

/// Changes made while a client holds a simple token apply to its next request: a revoked role
/// or permission is `permission denied`; a changed password or a deleted user ends the token
/// (`invalid auth token`), as etcd forgets that user's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_reach_a_client_holding_a_token() {
    let server = server_with_alice();
    let endpoint = server.endpoint();
    let token = authenticate(&endpoint, "alice", "alicepw").await.unwrap();
    let read = || get_with(&endpoint, &token, "app/x");
    read().await.expect("alice reads app/");

    as_root(&server, &["user", "revoke-role", "alice", "reader"]);
    assert_eq!(status(read().await), (denied().0, denied().1));
    as_root(&server, &["user", "grant-role", "alice", "reader"]);
    read().await.expect("the role is back");

    as_root(
        &server,
        &["role", "revoke-permission", "reader", "app/", "--prefix"],
    );
    assert_eq!(status(read().await), (denied().0, denied().1));
    as_root(
        &server,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix",
        ],
    );
    read().await.expect("the permission is back");

    let output = server.etcdctl_stdin(
        &[
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        "newpw\n",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(status(read().await), invalid_token());
    assert_eq!(
        status(authenticate(&endpoint, "alice", "alicepw").await),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".to_owned()
        )
    );
    let token = authenticate(&endpoint, "alice", "newpw").await.unwrap();
    get_with(&endpoint, &token, "app/x")
        .await
        .expect("the new password's token works");

    as_root(&server, &["user", "delete", "alice"]);
    assert_eq!(
        status(get_with(&endpoint, &token, "app/x").await),
        invalid_token()
    );
}

/// Runs openssl, which must succeed.
fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

/// A fresh key pair as PKCS#8 PEM files `dir/name` and `dir/name.pub`; `algorithm` is one of
/// openssl's (`RSA`, `EC`, `ED25519`).
fn key_pair(dir: &Path, name: &str, algorithm: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(name);
    let public = dir.join(format!("{name}.pub"));
    let private_path = private.to_str().unwrap();
    let mut args = vec!["genpkey", "-algorithm", algorithm, "-out", private_path];
    match algorithm {
        "RSA" => args.extend(["-pkeyopt", "rsa_keygen_bits:2048"]),
        "EC" => args.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]),
        _ => {}
    }
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_path,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (public, private)
}

/// A JWT for `username` signed with the private key at `private` (what another cluster's
/// member, or an attacker holding another key, would present).
fn foreign_jwt(method: &str, private: &Path, username: &str, revision: u64) -> String {
    let pem = std::fs::read(private).unwrap();
    let algorithm: jsonwebtoken::Algorithm = method.parse().unwrap();
    let key = match method {
        "ES256" => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        "EdDSA" => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"username": username, "revision": revision, "exp": exp});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).unwrap()
}

/// The claims of a JWT, read without checking its signature.
fn claims(token: &str) -> serde_json::Value {
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(&[]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("a JWT with JSON claims")
        .claims
}

/// One member with JWTs of `method`, keys of openssl's `algorithm`: the token is a JWT with
/// etcd's claims, works, names its auth revision (an auth change makes it old), expires by its
/// `ttl`, and a token signed by another key is `invalid auth token`.
async fn jwt_tokens_work_and_expire(method: &str, algorithm: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = key_pair(dir.path(), "jwt", algorithm);
    let (_, other_private) = key_pair(dir.path(), "other", algorithm);
    let option = format!(
        "jwt,pub-key={},priv-key={},sign-method={method},ttl={JWT_TTL_SECS}s",
        public.display(),
        private.display()
    );
    let server = Server::start_with(&["--auth-token", &option]);
    add_alice(&server);
    let endpoint = server.endpoint();

    let token = authenticate(&endpoint, "alice", "alicepw").await.unwrap();
    let claimed = claims(&token);
    assert_eq!(claimed["username"], "alice", "{method}: {claimed}");
    let revision = claimed["revision"].as_u64().expect("a numeric revision");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claimed["exp"].as_u64().expect("a numeric exp");
    assert!(
        exp > now && exp <= now + JWT_TTL_SECS + 1,
        "{method}: {claimed}"
    );
    get_with(&endpoint, &token, "app/x")
        .await
        .unwrap_or_else(|e| panic!("{method}: the token works: {e}"));

    let forged = foreign_jwt(method, &other_private, "root", revision);
    assert_eq!(
        status(get_with(&endpoint, &forged, "app/x").await),
        invalid_token(),
        "{method}: a token signed with another key"
    );
    // One character of the signature changed (its first: the last may hold only padding bits,
    // which Go's decoder ignores).
    let signature_at = token.rfind('.').expect("a JWT has three parts") + 1;
    let mut tampered = token.clone();
    let first = if token[signature_at..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(signature_at..=signature_at, first);
    assert_eq!(
        status(get_with(&endpoint, &tampered, "app/x").await),
        invalid_token(),
        "{method}: a tampered signature"
    );

    // The token names its revision: after any auth change it is old.
    as_root(
        &server,
        &["role", "grant-permission", "reader", "read", "b"],
    );
    assert_eq!(
        status(get_with(&endpoint, &token, "app/x").await),
        old_revision(),
        "{method}"
    );

    let token = authenticate(&endpoint, "alice", "alicepw").await.unwrap();
    get_with(&endpoint, &token, "app/x").await.unwrap();
    tokio::time::sleep(Duration::from_secs(JWT_TTL_SECS) + EXPIRY_MARGIN).await;
    assert_eq!(
        status(get_with(&endpoint, &token, "app/x").await),
        invalid_token(),
        "{method}: the token outlived its ttl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256() {
    jwt_tokens_work_and_expire("RS256", "RSA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_es256() {
    jwt_tokens_work_and_expire("ES256", "EC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_eddsa() {
    if common::running_real_etcd() {
        // etcd 3.4's JWT library has no EdDSA: it refuses `sign-method=EdDSA` at start.
        eprintln!("jwt_eddsa: etcd 3.4 has no EdDSA, skipped");
        return;
    }
    jwt_tokens_work_and_expire("EdDSA", "ED25519").await;
}

/// A member given only the public key verifies the tokens a signing member with the same key
/// pair issued, and issues none itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_only_member_accepts_tokens_and_issues_none() {
    let dir = tempfile::tempdir().unwrap();
    let (public, private) = key_pair(dir.path(), "jwt", "EC");
    let verify_only = format!("jwt,pub-key={},sign-method=ES256", public.display());
    let signing = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256",
        public.display(),
        private.display()
    );
    let verifier = Server::start_with(&["--auth-token", &verify_only]);
    let signer = Server::start_with(&["--auth-token", &signing]);
    // The same changes on both: the same auth revision, which the token carries.
    add_alice(&verifier);
    add_alice(&signer);
    let refused = status(authenticate(&verifier.endpoint(), "alice", "alicepw").await);
    assert_eq!(refused.0, Code::Unknown, "{refused:?}");
    assert!(refused.1.contains("verify-only"), "{refused:?}");
    let token = authenticate(&signer.endpoint(), "alice", "alicepw")
        .await
        .expect("the signing member issues");
    let got = get_with(&verifier.endpoint(), &token, "app/x")
        .await
        .expect("the verify-only member accepts the signing member's token");
    assert_eq!(got.kvs[0].value, b"1");
    assert_eq!(
        status(get_with(&verifier.endpoint(), &token, "other").await),
        (denied().0, denied().1)
    );
}

/// JWTs need no raft entry: a token one member of a cluster signed is accepted by every member
/// (each holds the same key), and each member signs its own. The members get only `priv-key`
/// and derive the public key from it, as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_one_member_signed_works_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (_, private) = key_pair(dir.path(), "jwt", "RSA");
    let option = format!(
        "--auth-token=jwt,priv-key={},sign-method=RS256",
        private.display()
    );
    let _serial = exclusive().await;
    let mut cluster = Cluster::start_with(ClusterOptions::new(3).arg(&option));
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    for command in [
        "user add root:rootpw",
        "user grant-role root root",
        "put k v",
        "auth enable",
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        cluster.etcdctl_ok(0, &args);
    }
    for signer in cluster.members() {
        let token = authenticate(&cluster.endpoint(signer), "root", "rootpw")
            .await
            .unwrap_or_else(|e| panic!("member {signer} signs: {e}"));
        assert_eq!(claims(&token)["username"], "root");
        for member in cluster.members() {
            let got = get_with(&cluster.endpoint(member), &token, "k")
                .await
                .unwrap_or_else(|e| panic!("member {member} verifies {signer}'s token: {e}"));
            assert_eq!(got.kvs[0].value, b"v");
        }
    }
}

/// `--bcrypt-cost` is the cost of the hashes stored: a snapshot of the member holds alice's
/// hash with that cost in its `$2?$NN$` prefix.
#[test]
fn passwords_are_hashed_at_the_bcrypt_cost() {
    let server = Server::start_with(&["--bcrypt-cost", "4"]);
    server.etcdctl_ok(&["user", "add", "alice:pw"]);
    let snapshot = server.dir().join("auth.snap");
    server.etcdctl_ok(&["snapshot", "save", snapshot.to_str().unwrap()]);
    let bytes = std::fs::read(&snapshot).unwrap();
    let costs: Vec<String> = bytes
        .windows(7)
        .filter(|w| w[0] == b'$' && w[1] == b'2' && w[3] == b'$' && w[6] == b'$')
        .map(|w| String::from_utf8_lossy(&w[4..6]).into_owned())
        .collect();
    assert_eq!(costs, ["04"], "bcrypt prefixes in the snapshot");
}

/// etcd 3.5+ clients may send `hashedPassword` instead of `password`: the hash is stored as sent
/// (so the client's cost is what counts) and the password it hashes authenticates. etcd 3.4's
/// protocol has no such field, so this is skipped against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_password_from_the_client_is_stored_as_sent() {
    use oxetcd::proto::etcdserverpb::AuthUserAddRequest;
    if common::running_real_etcd() {
        eprintln!(
            "a_hashed_password_from_the_client_is_stored_as_sent: etcd 3.4 has no hashedPassword, skipped"
        );
        return;
    }
    let server = Server::start();
    let hash = bcrypt::hash("pw", 5).unwrap();
    AuthClient::new(channel(&server.endpoint()))
        .user_add(AuthUserAddRequest {
            name: "carol".into(),
            hashed_password: hash,
            ..AuthUserAddRequest::default()
        })
        .await
        .expect("UserAdd with a hashed password");
    server.etcdctl_ok(&["user", "add", "root:rootpw"]);
    server.etcdctl_ok(&["user", "grant-role", "root", "root"]);
    server.etcdctl_ok(&["auth", "enable"]);
    authenticate(&server.endpoint(), "carol", "pw")
        .await
        .expect("the hashed password authenticates");
    let snapshot = server.dir().join("hashed.snap");
    server.etcdctl_ok(&[
        "--user",
        "root:rootpw",
        "snapshot",
        "save",
        snapshot.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&snapshot).unwrap();
    assert!(
        bytes.windows(7).any(|w| w == b"$2b$05$"),
        "the client's cost-5 hash is stored as sent"
    );
}

/// A member that was down while users, roles and `auth enable` were committed, and while enough
/// was written that the leader's log no longer reaches back (`--snapshot-count 100`; 5,000
/// entries are kept behind a snapshot), catches up from a raft snapshot and enforces the same
/// auth: alice reads her prefix there and nothing else; nobody without a token reads anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_caught_up_by_snapshot_enforces_the_same_auth() {
    const WRITES: usize = 5_600;
    const WRITERS: usize = 8;
    let _serial = exclusive().await;
    let mut cluster = Cluster::start_with(ClusterOptions::new(3).snapshot_count(100));
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let lagging = (leader + 1) % 3;
    cluster.stop(lagging);
    for command in [
        "user add root:rootpw",
        "user grant-role root root",
        "role add reader",
        "role grant-permission reader read app/ --prefix",
        "user add alice:alicepw",
        "user grant-role alice reader",
        "put app/x 1",
        "put other 1",
        "auth enable",
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        cluster.etcdctl_ok(leader, &args);
    }
    let root = Client::connect(
        [cluster.endpoint(leader)],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root connects");
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = root.clone();
        writers.push(tokio::spawn(async move {
            for i in (writer..WRITES).step_by(WRITERS) {
                client
                    .put(format!("load/{i}"), "v", None)
                    .await
                    .expect("root writes");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer finished");
    }
    cluster.restart(lagging);
    let endpoint = cluster.endpoint(lagging);
    // Caught up once root can authenticate there and a linearizable read (which waits for the
    // member to apply all that was committed before it) finds the last write.
    let last = format!("load/{}", WRITES - 1);
    let deadline = Instant::now() + common::cluster::CONVERGE_TIMEOUT;
    loop {
        let outcome = match authenticate(&endpoint, "root", "rootpw").await {
            Ok(token) => get_with(&endpoint, &token, &last).await.map(|r| r.count),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(1) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => cluster.fail(&format!("the restarted member did not catch up: {other:?}")),
        }
    }
    match crate::cluster_faults::snapshot_receive_count(&cluster, lagging) {
        Some(count) => assert!(count >= 1.0, "caught up without a snapshot ({count})"),
        None => eprintln!("note: no etcd_network_snapshot_receive_success metric to check"),
    }

    // The restarted member serves these itself (Range is read there after a read barrier).
    let token = authenticate(&endpoint, "alice", "alicepw")
        .await
        .expect("alice authenticates on the restarted member");
    let got = get_with(&endpoint, &token, "app/x").await.unwrap();
    assert_eq!(got.kvs[0].value, b"1");
    assert_eq!(
        status(get_with(&endpoint, &token, "other").await),
        (denied().0, denied().1)
    );
    let output = cluster.etcdctl(lagging, &["get", "app/x"]);
    assert!(
        common::stderr_text(&output).contains("etcdserver: user name is empty"),
        "{output:?}"
    );
    assert_eq!(
        cluster.etcdctl_ok(
            lagging,
            &[
                "--user",
                "root:rootpw",
                "get",
                "load/0",
                "--print-value-only"
            ]
        ),
        "v\n"
    );
}
