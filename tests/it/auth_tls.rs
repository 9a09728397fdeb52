//! Auth over TLS with client certificates: every RPC family allowed to root and allowed or
//! denied to a user with a read-only role, through etcdctl (`--cacert/--cert/--key --user`) and
//! the etcd-client crate; and etcd's certificate identity, where a request with no token is
//! made as the user its verified client certificate's Common Name names. Certificates are made
//! here with rcgen. Every test also runs against etcd 3.4 (`OXETCD_TEST_BIN=/usr/bin/etcd`).

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp,
};
use rcgen::ExtendedKeyUsagePurpose;
use tonic::Code;

use crate::auth::{add_alice, denied, refusal};
use crate::common::Server;
use crate::tls::{Files, etcdctl, etcdctl_ok, server_and_client, strings};

const WATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A member serving https with `--client-cert-auth`, alice's setup made on it (see
/// `auth::add_alice`), and a client certificate with CN `alice` beside the fixture's `client`.
fn secured_server(files: &Files) -> Server {
    let ca = server_and_client(files);
    let (cert, key) = ca.leaf("alice", ExtendedKeyUsagePurpose::ClientAuth);
    files.write("alice.pem", &cert);
    files.write("alice-key.pem", &key);
    let server = Server::start_with_https(&[
        "--cert-file",
        &files.path("server.pem"),
        "--key-file",
        &files.path("server-key.pem"),
        "--trusted-ca-file",
        &files.path("ca.pem"),
        "--client-cert-auth",
    ]);
    add_alice(&server);
    server
}

/// etcdctl's TLS flags with the client certificate `name` (`client` or `alice`).
fn tls_flags(files: &Files, name: &str) -> Vec<String> {
    strings(&[
        "--cacert",
        &files.path("ca.pem"),
        "--cert",
        &files.path(&format!("{name}.pem")),
        "--key",
        &files.path(&format!("{name}-key.pem")),
    ])
}

/// etcdctl's exit code and everything it printed, client log lines removed.
fn etcdctl_outcome(
    endpoint: &str,
    tls: &[String],
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    let output = match stdin {
        None => etcdctl(endpoint, tls, args),
        Some(input) => {
            let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
            all.extend(["--dial-timeout=2s", "--command-timeout=4s"]);
            all.extend(args);
            crate::common::run_etcdctl(
                endpoint,
                &all,
                Some(input.as_bytes()),
                crate::common::ETCDCTL_TIMEOUT,
            )
        }
    };
    (
        output.status.success(),
        format!(
            "{}{}",
            crate::common::stdout_text(&output),
            crate::common::without_client_logs(&crate::common::stderr_text(&output))
        ),
    )
}

/// etcdctl arguments, stdin, and alice's outcome: `Ok(printed contains)` or `Err(message
/// contains)`.
type Row<'a> = (Vec<&'a str>, Option<&'a str>, Result<&'a str, &'a str>);

/// Every etcdctl command family over TLS: root may do all of it; alice (READ on `app/`) what
/// her role grants and what etcd lets any user do, and is refused the rest with etcd's words.
#[test]
fn every_rpc_family_over_tls_is_allowed_or_denied_as_in_etcd() {
    let files = Files::new();
    let server = secured_server(&files);
    let endpoint = server.https_endpoint();
    let tls = tls_flags(&files, "client");
    let snapshot = server.dir().join("tls.snap");
    let snapshot = snapshot.to_str().unwrap();
    const DENIED: &str = "etcdserver: permission denied";
    const MAINTENANCE_DENIED: &str = "auth: permission denied";
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        // KV
        (vec!["get", "app/x", "--print-value-only"], None, Ok("1")),
        (vec!["get", "other"], None, Err(DENIED)),
        (vec!["put", "app/y", "2"], None, Err(DENIED)),
        (vec!["del", "other"], None, Err(DENIED)),
        (vec!["txn"], Some("value(\"app/x\") = \"1\"\n\nget app/x\n\n\n"), Ok("SUCCESS")),
        (vec!["txn"], Some("value(\"app/x\") = \"1\"\n\nget app/x\n\nput other 2\n\n"), Err(DENIED)),
        // REV: 1 for alice, then 2 for root (a revision compacted once cannot be again).
        (vec!["compaction", "REV"], None, Ok("compacted revision 1")),
        // Lease (attached keys: see the etcd-client test)
        (vec!["lease", "grant", "60"], None, Ok("granted with TTL(60s)")),
        (vec!["lease", "list"], None, Ok("found")),
        // Maintenance
        (vec!["endpoint", "status"], None, Ok("127.0.0.1")),
        (vec!["alarm", "list"], None, Ok("")),
        (vec!["endpoint", "hashkv"], None, Err(MAINTENANCE_DENIED)),
        (vec!["defrag"], None, Err(MAINTENANCE_DENIED)),
        (vec!["snapshot", "save", snapshot], None, Err(MAINTENANCE_DENIED)),
        // Cluster
        (vec!["member", "list"], None, Ok("started")),
        (vec!["member", "add", "extra", "--learner", "--peer-urls=http://127.0.0.1:1"], None, Err(DENIED)),
        // Auth
        (vec!["user", "list"], None, Err(DENIED)),
        (vec!["role", "get", "reader"], None, Ok("[app/, app0)")),
        (vec!["user", "add", "bob:pw"], None, Err(DENIED)),
        (vec!["role", "add", "writer"], None, Err(DENIED)),
        (vec!["user", "get", "alice"], None, Ok("Roles: reader")),
    ];
    for (user, root) in [("alice:alicepw", false), ("root:rootpw", true)] {
        for (args, stdin, alice_gets) in &table {
            let mut all = vec!["--user", user];
            let rev = if root { "2" } else { "1" };
            all.extend(args.iter().map(|arg| if *arg == "REV" { rev } else { arg }));
            let (ok, printed) = etcdctl_outcome(&endpoint, &tls, &all, *stdin);
            match (root, alice_gets) {
                (true, _) => assert!(ok, "root: etcdctl {args:?} failed: {printed}"),
                (false, Ok(wanted)) => assert!(
                    ok && printed.contains(wanted),
                    "alice: etcdctl {args:?} should print {wanted:?}: {printed}"
                ),
                (false, Err(wanted)) => assert!(
                    !ok && printed.contains(wanted),
                    "alice: etcdctl {args:?} should fail with {wanted:?}: {printed}"
                ),
            }
            if root && args.starts_with(&["member", "add"]) {
                // Take the learner out again (its ID is the second word of the answer).
                let id = printed
                    .split_whitespace()
                    .nth(1)
                    .expect("Member <id> added");
                etcdctl_ok(&endpoint, &tls, &["--user", user, "member", "remove", id]);
            }
        }
    }
}

async fn tls_client(files: &Files, endpoint: &str, cert: &str, user: Option<&str>) -> Client {
    let read = |name: &str| std::fs::read(files.path(name)).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{cert}.pem")),
            read(&format!("{cert}-key.pem")),
        ));
    let mut options = ConnectOptions::new().with_tls(tls);
    if let Some(user) = user {
        let (name, password) = user.split_once(':').unwrap();
        options = options.with_user(name, password);
    }
    Client::connect([endpoint], Some(options))
        .await
        .unwrap_or_else(|e| panic!("{user:?} connects over TLS: {e}"))
}

/// The etcd-client crate over TLS: watch, txn and the lease calls that touch attached keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_txns_and_leases_over_tls_need_their_permissions() {
    let files = Files::new();
    let server = secured_server(&files);
    let endpoint = server.https_endpoint();
    let mut root = tls_client(&files, &endpoint, "client", Some("root:rootpw")).await;
    let mut alice = tls_client(&files, &endpoint, "client", Some("alice:alicepw")).await;

    // Watch: a watch on her prefix sees root's write; one elsewhere is canceled as denied.
    let mut allowed = alice
        .watch("app/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = tokio::time::timeout(WATCH_TIMEOUT, allowed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    root.put("app/w", "1", None).await.unwrap();
    let event = tokio::time::timeout(WATCH_TIMEOUT, allowed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.events()[0].kv().unwrap().key(), b"app/w");
    let mut refused = alice.watch("other", None).await.unwrap();
    let response = tokio::time::timeout(WATCH_TIMEOUT, refused.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(response.canceled(), "{response:?}");
    assert!(
        response.cancel_reason().contains("permission denied"),
        "{response:?}"
    );

    // Txn: reads of her prefix pass, a write in either branch is refused.
    let read = Txn::new()
        .when([Compare::value("app/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("app/x", None)]);
    assert!(alice.txn(read).await.unwrap().succeeded());
    let write = Txn::new().and_then([TxnOp::put("app/x", "9", None)]);
    assert_eq!(refusal(alice.txn(write).await), denied());
    root.txn(Txn::new().and_then([TxnOp::put("app/t", "1", None)]))
        .await
        .unwrap();

    // Leases: revoking a lease with a key outside her write range is refused; keep-alive and
    // time-to-live of her own lease work; root revokes.
    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("other", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(refusal(alice.lease_revoke(lease).await), denied());
    let own = alice.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut responses) = alice.lease_keep_alive(own).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let kept = tokio::time::timeout(WATCH_TIMEOUT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(kept.id(), own);
    assert!(kept.ttl() > 0, "{kept:?}");
    alice
        .lease_revoke(own)
        .await
        .expect("a lease with no keys is hers to revoke");
    root.lease_revoke(lease).await.unwrap();
    assert_eq!(root.get("other", None).await.unwrap().count(), 0);
}

/// With `--client-cert-auth`, a request carrying no token is made as the user its verified
/// certificate's CN names (etcd's `AuthInfoFromTLS`): alice's certificate reads what her role
/// grants and is refused the rest; a token, when there is one, names the user instead; a CN
/// that names no user gets nothing, and the plain URL (no certificate) is nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_user_of_a_request_without_a_token() {
    let files = Files::new();
    let server = secured_server(&files);
    let endpoint = server.https_endpoint();
    let alice_cert = tls_flags(&files, "alice");
    assert_eq!(
        etcdctl_ok(
            &endpoint,
            &alice_cert,
            &["get", "app/x", "--print-value-only"]
        ),
        "1\n"
    );
    for args in [
        &["get", "other"][..],
        &["put", "app/x", "2"],
        &["user", "list"],
    ] {
        let (ok, printed) = etcdctl_outcome(&endpoint, &alice_cert, args, None);
        assert!(
            !ok && printed.contains("etcdserver: permission denied"),
            "alice's certificate: etcdctl {args:?}: {printed}"
        );
    }
    // A token takes precedence over the certificate.
    etcdctl_ok(
        &endpoint,
        &alice_cert,
        &["--user", "root:rootpw", "put", "other", "2"],
    );
    // The fixture's certificate has CN `client`, which names no user.
    let (ok, printed) = etcdctl_outcome(
        &endpoint,
        &tls_flags(&files, "client"),
        &["get", "app/x"],
        None,
    );
    assert!(
        !ok && printed.contains("etcdserver: permission denied"),
        "{printed}"
    );
    // The plain URL has no certificate: nobody.
    let output = server.etcdctl(&["get", "app/x"]);
    assert!(
        crate::common::stderr_text(&output).contains("etcdserver: user name is empty"),
        "{output:?}"
    );

    // The etcd-client crate with alice's certificate and no user.
    let mut alice = tls_client(&files, &endpoint, "alice", None).await;
    let got = alice.get("app/x", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    assert_eq!(refusal(alice.get("other", None).await), denied());
    assert_eq!(
        refusal(alice.put("app/x", "3", None).await).0,
        Code::PermissionDenied
    );
}
