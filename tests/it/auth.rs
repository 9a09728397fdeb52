//! Black-box tests of the Auth service's user and role management through Debian's etcdctl,
//! asserting what etcd 3.4 prints for the same commands (each test also runs against etcd with
//! `OXETCD_TEST_BIN=/usr/bin/etcd`), that users and roles survive a restart, and that every
//! member of a cluster holds the same ones.

use crate::common;

use std::time::Duration;

use common::Server;
use common::cluster::{Cluster, FAILOVER_DEADLINE, exclusive};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

/// Runs etcdctl and returns its exit code and what it printed, client log lines removed.
pub(crate) fn run(server: &Server, args: &[&str]) -> (i32, String) {
    let output = server.etcdctl(args);
    let printed = format!(
        "{}{}",
        common::stdout_text(&output),
        common::without_client_logs(&common::stderr_text(&output))
    );
    (
        output.status.code().unwrap_or(-1),
        printed.trim_end().to_owned(),
    )
}

/// The commands and what etcd 3.4 answers each with, in order.
pub(crate) fn expect_session(server: &Server, session: &[(&str, i32, &str)]) {
    for (command, code, printed) in session {
        let args: Vec<&str> = command.split(' ').collect();
        assert_eq!(
            run(server, &args),
            (*code, printed.to_string()),
            "etcdctl {command}"
        );
    }
}

#[test]
fn users_roles_and_permissions_are_managed_as_in_etcd() {
    let mut server = Server::start();
    expect_session(
        &server,
        &[
            ("user add alice:pw", 0, "User alice created"),
            ("role add r", 0, "Role r created"),
            (
                "role grant-permission r readwrite foo --prefix",
                0,
                "Role r updated",
            ),
            ("role grant-permission r read a c", 0, "Role r updated"),
            (
                "user grant-role alice r",
                0,
                "Role r is granted to user alice",
            ),
            // Granting a role the user holds is not an error.
            (
                "user grant-role alice r",
                0,
                "Role r is granted to user alice",
            ),
            ("user get alice", 0, "User: alice\nRoles: r"),
            (
                "role get r",
                0,
                "Role r\nKV Read:\n\t[a, c)\n\t[foo, fop) (prefix foo)\nKV Write:\n\t[foo, fop) (prefix foo)",
            ),
            ("user list", 0, "alice"),
            ("role list", 0, "r"),
            (
                "user add alice:pw",
                1,
                "Error: etcdserver: user name already exists",
            ),
            (
                "role add r",
                1,
                "Error: etcdserver: role name already exists",
            ),
            (
                "user grant-role alice nope",
                1,
                "Error: etcdserver: role name not found",
            ),
            (
                "user grant-role bob r",
                1,
                "Error: etcdserver: user name not found",
            ),
            (
                "user revoke-role alice nope",
                1,
                "Error: etcdserver: role is not granted to the user",
            ),
            (
                "role revoke-permission r bar",
                1,
                "Error: etcdserver: permission is not granted to the role",
            ),
            (
                "role revoke-permission r a c",
                0,
                "Permission of range [a, c) is revoked from role r",
            ),
        ],
    );

    // Users, roles and grants are persisted: a restarted member lists the same.
    server.restart();
    expect_session(
        &server,
        &[
            ("user get alice", 0, "User: alice\nRoles: r"),
            (
                "role get r",
                0,
                "Role r\nKV Read:\n\t[foo, fop) (prefix foo)\nKV Write:\n\t[foo, fop) (prefix foo)",
            ),
            // Deleting a role takes it from its holders.
            ("role delete r", 0, "Role r deleted"),
            ("user get alice", 0, "User: alice\nRoles:"),
            ("user delete alice", 0, "User alice deleted"),
            ("user list", 0, ""),
            (
                "user delete alice",
                1,
                "Error: etcdserver: user name not found",
            ),
        ],
    );
}

#[test]
fn changing_a_password_needs_the_user_to_exist() {
    let server = Server::start();
    let output = server.etcdctl_stdin(&["user", "passwd", "nobody", "--interactive=false"], "pw\n");
    assert_eq!(
        common::without_client_logs(&common::stderr_text(&output)).trim_end(),
        "Error: etcdserver: user name not found"
    );
    server.etcdctl_ok(&["user", "add", "carol:old"]);
    let output = server.etcdctl_stdin(&["user", "passwd", "carol", "--interactive=false"], "new\n");
    assert_eq!(common::stdout_text(&output).trim_end(), "Password updated");
}

/// The etcdctl session of an operator who enables auth: root manages, a reader reads only its
/// prefix, nobody without credentials gets anything, root-only calls are refused to others, and
/// disabling auth opens everything again. etcd 3.4's answers, word for word.
#[test]
fn permissions_are_enforced_once_auth_is_enabled() {
    let server = Server::start();
    #[rustfmt::skip]
    expect_session(&server, &[
        ("user add root:rootpw", 0, "User root created"),
        ("role add reader", 0, "Role reader created"),
        ("role grant-permission reader read app/ --prefix", 0, "Role reader updated"),
        ("user add alice:alicepw", 0, "User alice created"),
        ("user grant-role alice reader", 0, "Role reader is granted to user alice"),
        ("put app/x 1", 0, "OK"),
        ("put other 1", 0, "OK"),
        // etcdctl grants root the root role itself when enabling.
        ("auth enable", 0, "Authentication Enabled"),
        ("get app/x", 1, "Error: etcdserver: user name is empty"),
        ("put app/x 2", 1, "Error: etcdserver: user name is empty"),
        ("--user alice:alicepw get app/x", 0, "app/x\n1"),
        ("--user alice:alicepw get app/ --prefix --keys-only", 0, "app/x"),
        ("--user alice:alicepw put app/x 2", 1, "Error: etcdserver: permission denied"),
        ("--user alice:alicepw get other", 1, "Error: etcdserver: permission denied"),
        ("--user alice:alicepw del app/x", 1, "Error: etcdserver: permission denied"),
        // etcd 3.4 lets any user compact; user and role management is root's, except looking
        // oneself up.
        ("--user alice:alicepw compaction 1", 0, "compacted revision 1"),
        ("--user alice:alicepw user list", 1, "Error: etcdserver: permission denied"),
        ("--user alice:alicepw user get alice", 0, "User: alice\nRoles: reader"),
        ("--user alice:alicepw user get root", 1, "Error: etcdserver: permission denied"),
        // A failed login happens while etcdctl connects: its exit status for that is 2.
        ("--user alice:wrong get app/x", 2,
            "Error: etcdserver: authentication failed, invalid user ID or password"),
        ("--user mallory:x get app/x", 2,
            "Error: etcdserver: authentication failed, invalid user ID or password"),
        ("--user root:rootpw put app/x 2", 0, "OK"),
        ("--user root:rootpw get other --print-value-only", 0, "1"),
        ("--user root:rootpw user list", 0, "alice\nroot"),
        // A grant takes effect for the next request.
        ("--user root:rootpw role grant-permission reader readwrite app/ --prefix", 0,
            "Role reader updated"),
        ("--user alice:alicepw put app/x 3", 0, "OK"),
    ]);
    // Root-only Maintenance calls answer as etcd's do: code Unknown, an `auth:` message.
    for (user, reason) in [
        (Some("alice:alicepw"), "auth: permission denied"),
        (None, "auth: user name is empty"),
    ] {
        let mut args = vec!["endpoint", "hashkv"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        let (code, printed) = run(&server, &args);
        assert_eq!(code, 1, "{printed}");
        let wanted = format!("rpc error: code = Unknown desc = {reason}");
        assert!(printed.contains(&wanted), "{printed}");
    }
    #[rustfmt::skip]
    expect_session(&server, &[
        ("--user root:rootpw auth disable", 0, "Authentication Disabled"),
        ("get other --print-value-only", 0, "1"),
    ]);
}

/// Users and roles go through raft: a change made through a follower is what every member lists,
/// including a member that was down during the change and caught up after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_holds_the_same_users_and_roles() {
    let _serial = exclusive().await;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let others: Vec<usize> = cluster
        .members()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    let (follower, down) = (others[0], others[1]);
    cluster.stop(down);
    cluster.etcdctl_ok(follower, &["user", "add", "dave:pw"]);
    cluster.etcdctl_ok(follower, &["role", "add", "ops"]);
    cluster.etcdctl_ok(
        follower,
        &[
            "role",
            "grant-permission",
            "ops",
            "read",
            "cfg/",
            "--prefix",
        ],
    );
    cluster.etcdctl_ok(follower, &["user", "grant-role", "dave", "ops"]);
    cluster.restart(down);
    for member in cluster.members() {
        assert_eq!(
            cluster.etcdctl_ok(member, &["user", "get", "dave"]),
            "User: dave\nRoles: ops\n",
            "member {member}"
        );
        assert_eq!(
            cluster.etcdctl_ok(member, &["role", "get", "ops"]),
            "Role ops\nKV Read:\n\t[cfg/, cfg0) (prefix cfg/)\nKV Write:\n",
            "member {member}"
        );
    }
}

/// Starts a server with root (password `rootpw`), role `reader` (READ on `app/`), user alice
/// (password `alicepw`) holding it, a key in and a key outside her prefix, and auth enabled.
pub(crate) fn server_with_alice() -> Server {
    let server = Server::start();
    add_alice(&server);
    server
}

/// [`server_with_alice`]'s users, roles and keys, made on a running `server`, and auth enabled.
pub(crate) fn add_alice(server: &Server) {
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
        server.etcdctl_ok(&args);
    }
}

pub(crate) async fn connect_as(server: &Server, user: &str, password: &str) -> Client {
    Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_user(user, password)),
    )
    .await
    .unwrap_or_else(|e| panic!("{user} connects: {e}"))
}

pub(crate) fn refusal<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> (Code, String) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(crate) fn denied() -> (Code, String) {
    (
        Code::PermissionDenied,
        "etcdserver: permission denied".to_owned(),
    )
}

/// Through the `etcd-client` crate: a txn needs what its compares and both branches need, a
/// watch READ on its range (refused as a canceled watch, as etcd does), a lease revoke WRITE on
/// the lease's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txns_watches_and_lease_revokes_need_their_permissions() {
    let server = server_with_alice();
    let mut root = connect_as(&server, "root", "rootpw").await;
    let mut alice = connect_as(&server, "alice", "alicepw").await;

    let reads_app = Txn::new()
        .when([Compare::value("app/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("app/x", None)])
        .or_else([TxnOp::get("app/y", None)]);
    assert!(
        alice
            .txn(reads_app)
            .await
            .expect("a read of app/")
            .succeeded()
    );
    let compares_other = Txn::new()
        .when([Compare::value("other", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("app/x", None)]);
    assert_eq!(refusal(alice.txn(compares_other).await), denied());
    // The branch not taken counts too.
    let writes_in_else = Txn::new()
        .when([Compare::value("app/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::get("app/x", None)])
        .or_else([TxnOp::put("app/x", "2", None)]);
    assert_eq!(refusal(alice.txn(writes_in_else).await), denied());

    let mut stream = alice.watch("other", None).await.expect("watch opens");
    let response = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("a watch response")
        .expect("the stream works")
        .expect("the stream is open");
    assert!(response.created() && response.canceled(), "{response:?}");
    assert_eq!(
        response.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );

    let lease = root.lease_grant(60, None).await.expect("grant").id();
    root.put("other", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("root attaches a key");
    assert_eq!(refusal(alice.lease_revoke(lease).await), denied());
    root.lease_revoke(lease).await.expect("root revokes");
}

/// A simple token names a user, not a moment: a grant or a revoke made after it was issued
/// applies to the next request made with it (as in etcd; a JWT would carry its revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_revokes_apply_to_tokens_already_issued() {
    let server = server_with_alice();
    let mut alice = connect_as(&server, "alice", "alicepw").await;
    assert_eq!(refusal(alice.get("other", None).await), denied());
    let root = ["--user", "root:rootpw"];
    let grant = [
        &root[..],
        &["role", "grant-permission", "reader", "read", "other"],
    ]
    .concat();
    server.etcdctl_ok(&grant);
    let other = alice
        .get("other", None)
        .await
        .expect("the new grant applies");
    assert_eq!(other.kvs()[0].value(), b"1");
    let revoke = [&root[..], &["role", "revoke-permission", "reader", "other"]].concat();
    server.etcdctl_ok(&revoke);
    assert_eq!(refusal(alice.get("other", None).await), denied());
}

/// Authenticate goes through raft: a token one member issued is accepted by every member, so a
/// client may fail over with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_member_works_on_every_member() {
    use oxetcd::proto::etcdserverpb::auth_client::AuthClient;
    use oxetcd::proto::etcdserverpb::kv_client::KvClient;
    use oxetcd::proto::etcdserverpb::{AuthenticateRequest, RangeRequest};

    let _serial = exclusive().await;
    let mut cluster = Cluster::start(3);
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
    let channel = |member: usize| {
        tonic::transport::Endpoint::from_shared(cluster.endpoint(member))
            .expect("a valid endpoint")
            .connect_lazy()
    };
    let token = AuthClient::new(channel(1))
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .expect("root authenticates on member 1")
        .into_inner()
        .token;
    for member in cluster.members() {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"k".to_vec(),
            ..RangeRequest::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().expect("a token is ASCII"));
        let response = KvClient::new(channel(member))
            .range(request)
            .await
            .unwrap_or_else(|e| panic!("member {member} accepts the token: {e}"))
            .into_inner();
        assert_eq!(response.kvs[0].value, b"v", "member {member}");
    }
}
