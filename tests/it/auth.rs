//! Black-box tests of the Auth service's user and role management through Debian's etcdctl,
//! asserting what etcd 3.4 prints for the same commands (each test also runs against etcd with
//! `OXETCD_TEST_BIN=/usr/bin/etcd`), that users and roles survive a restart, and that every
//! member of a cluster holds the same ones.

use crate::common;

use common::Server;
use common::cluster::{Cluster, FAILOVER_DEADLINE, exclusive};

/// Runs etcdctl and returns its exit code and what it printed, client log lines removed.
fn run(server: &Server, args: &[&str]) -> (i32, String) {
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
fn expect_session(server: &Server, session: &[(&str, i32, &str)]) {
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

/// oxetcd manages users and roles but does not enforce permissions yet, so it refuses to enable
/// auth rather than accept and ignore it; a client given credentials still works, as against
/// an etcd whose auth is disabled.
#[test]
fn enabling_auth_is_refused_until_permissions_are_enforced() {
    if common::running_real_etcd() {
        return;
    }
    let server = Server::start();
    server.etcdctl_ok(&["user", "add", "root:rootpw"]);
    server.etcdctl_ok(&["user", "grant-role", "root", "root"]);
    let (code, printed) = run(&server, &["auth", "enable"]);
    assert_eq!(code, 1, "{printed}");
    assert!(
        printed.contains("enabling authentication is not supported yet"),
        "{printed}"
    );
    server.etcdctl_ok(&["--user", "root:rootpw", "put", "k", "v"]);
    assert_eq!(
        server
            .etcdctl_ok(&["--user", "root:rootpw", "get", "k", "--print-value-only"])
            .trim_end(),
        "v"
    );
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
