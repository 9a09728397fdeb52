//! Black-box test of invalid KV requests: each is refused with etcd's exact gRPC code and
//! message, and leaves the store (revision and contents) exactly as it was.

use crate::common;

use common::Server;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, GetOptions, PutOptions, Txn, TxnOp,
};
use tonic::Code;

/// One request of the table.
enum Request {
    Get(&'static str, GetOptions),
    Put(&'static str, Vec<u8>, PutOptions),
    Delete(&'static str, DeleteOptions),
    Txn(Txn),
    Compact(i64),
}

/// What the server must answer.
enum Expect {
    Refused(Code, &'static str),
    /// Accepted, but selects nothing (and therefore changes nothing).
    Empty,
}

const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

/// What a client can observe of the store: the revision and every key with all its fields.
async fn observe(client: &mut Client) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>) {
    let response = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all keys");
    let revision = response.header().expect("header").revision();
    let kvs = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (revision, kvs)
}

/// Runs `request`; Ok(number of kvs returned or deleted) or the error.
async fn run(client: &mut Client, request: Request) -> Result<usize, Error> {
    match request {
        Request::Get(key, options) => Ok(client.get(key, Some(options)).await?.kvs().len()),
        Request::Put(key, value, options) => {
            client.put(key, value, Some(options)).await?;
            Ok(1)
        }
        Request::Delete(key, options) => {
            let deleted = client.delete(key, Some(options)).await?.deleted();
            Ok(usize::try_from(deleted).expect("deleted count is not negative"))
        }
        Request::Txn(txn) => Ok(client.txn(txn).await?.op_responses().len()),
        Request::Compact(revision) => {
            client.compact(revision, None).await?;
            Ok(0)
        }
    }
}

fn puts(count: usize, prefix: &str) -> Vec<TxnOp> {
    (0..count)
        .map(|index| TxnOp::put(format!("{prefix}{index}"), "x", None))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_and_change_nothing() {
    // A small request limit for the oversized case; the default 128 txn ops.
    let server = Server::start_with(&["--max-request-bytes", "1024"]);
    let mut client = server.client().await;
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    for value in ["1", "2", "3"] {
        client.put("a", value, None).await.expect("put");
    }
    client
        .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    client.put("b", "1", None).await.expect("put");
    client.compact(3, None).await.expect("compact");
    let (head, _) = observe(&mut client).await;
    assert_eq!(head, 6);
    let unknown_lease = 0x0bad_1ea5e;

    let cases: Vec<(&str, Request, Expect)> = vec![
        (
            "range with an empty key",
            Request::Get("", GetOptions::new()),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "put with an empty key",
            Request::Put("", b"v".to_vec(), PutOptions::new()),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "delete with an empty key",
            Request::Delete("", DeleteOptions::new()),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "txn compare with an empty key",
            Request::Txn(
                Txn::new()
                    .when([Compare::version("", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put("a", "changed", None)]),
            ),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "txn put with an empty key",
            Request::Txn(Txn::new().and_then([TxnOp::put("", "v", None)])),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "txn range with an empty key",
            Request::Txn(Txn::new().and_then([TxnOp::get("", None)])),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            "txn delete with an empty key",
            Request::Txn(
                Txn::new()
                    .when([Compare::version("a", CompareOp::Equal, 99)])
                    .and_then([TxnOp::put("a", "changed", None)])
                    .or_else([TxnOp::delete("", None)]),
            ),
            Expect::Refused(Code::InvalidArgument, KEY_NOT_PROVIDED),
        ),
        (
            // etcd does not reject a range whose end sorts before its key: it selects nothing.
            "range end before key",
            Request::Get("b", GetOptions::new().with_range("a")),
            Expect::Empty,
        ),
        (
            "delete range end before key",
            Request::Delete("b", DeleteOptions::new().with_range("a")),
            Expect::Empty,
        ),
        (
            "put larger than --max-request-bytes",
            Request::Put("big", vec![b'x'; 2000], PutOptions::new()),
            Expect::Refused(Code::InvalidArgument, "etcdserver: request is too large"),
        ),
        (
            "txn larger than --max-request-bytes",
            Request::Txn(Txn::new().and_then([
                TxnOp::put("big1", vec![b'x'; 600], None),
                TxnOp::put("big2", vec![b'x'; 600], None),
            ])),
            Expect::Refused(Code::InvalidArgument, "etcdserver: request is too large"),
        ),
        (
            "129 txn ops in one branch",
            Request::Txn(Txn::new().and_then(puts(129, "many"))),
            Expect::Refused(Code::InvalidArgument, TOO_MANY_OPS),
        ),
        (
            "129 txn ops in the failure branch",
            Request::Txn(
                Txn::new()
                    .when([Compare::version("a", CompareOp::Equal, 99)])
                    .or_else(puts(129, "many")),
            ),
            Expect::Refused(Code::InvalidArgument, TOO_MANY_OPS),
        ),
        (
            "129 txn compares",
            Request::Txn(
                Txn::new()
                    .when(
                        (0..129)
                            .map(|_| Compare::version("a", CompareOp::Greater, 0))
                            .collect::<Vec<_>>(),
                    )
                    .and_then([TxnOp::put("a", "changed", None)]),
            ),
            Expect::Refused(Code::InvalidArgument, TOO_MANY_OPS),
        ),
        (
            "two puts of one key in a txn",
            Request::Txn(
                Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]),
            ),
            Expect::Refused(Code::InvalidArgument, DUPLICATE_KEY),
        ),
        (
            "a put inside a deleted range of the same txn",
            Request::Txn(Txn::new().and_then([
                TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
                TxnOp::put("b", "2", None),
            ])),
            Expect::Refused(Code::InvalidArgument, DUPLICATE_KEY),
        ),
        (
            "a duplicate put across a nested txn",
            Request::Txn(Txn::new().and_then([
                TxnOp::put("a", "outer", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put("a", "inner", None)])),
            ])),
            Expect::Refused(Code::InvalidArgument, DUPLICATE_KEY),
        ),
        (
            "put with an unknown lease",
            Request::Put(
                "a",
                b"v".to_vec(),
                PutOptions::new().with_lease(unknown_lease),
            ),
            Expect::Refused(Code::NotFound, LEASE_NOT_FOUND),
        ),
        (
            "txn put with an unknown lease",
            Request::Txn(Txn::new().and_then([TxnOp::put(
                "a",
                "v",
                Some(PutOptions::new().with_lease(unknown_lease)),
            )])),
            Expect::Refused(Code::NotFound, LEASE_NOT_FOUND),
        ),
        (
            "range at a compacted revision",
            Request::Get("a", GetOptions::new().with_revision(2)),
            Expect::Refused(Code::OutOfRange, COMPACTED),
        ),
        (
            "txn range at a compacted revision",
            Request::Txn(Txn::new().and_then([
                TxnOp::put("c", "v", None),
                TxnOp::get("a", Some(GetOptions::new().with_revision(2))),
            ])),
            Expect::Refused(Code::OutOfRange, COMPACTED),
        ),
        (
            "compaction at the compacted revision",
            Request::Compact(3),
            Expect::Refused(Code::OutOfRange, COMPACTED),
        ),
        (
            "range at a future revision",
            Request::Get("a", GetOptions::new().with_revision(head + 100)),
            Expect::Refused(Code::OutOfRange, FUTURE),
        ),
        (
            "txn range at a future revision",
            Request::Txn(Txn::new().and_then([
                TxnOp::put("c", "v", None),
                TxnOp::get("a", Some(GetOptions::new().with_revision(head + 100))),
            ])),
            Expect::Refused(Code::OutOfRange, FUTURE),
        ),
        (
            "compaction at a future revision",
            Request::Compact(head + 100),
            Expect::Refused(Code::OutOfRange, FUTURE),
        ),
        (
            "ignore_value with a value",
            Request::Put("a", b"v".to_vec(), PutOptions::new().with_ignore_value()),
            Expect::Refused(Code::InvalidArgument, "etcdserver: value is provided"),
        ),
        (
            "ignore_lease with a lease",
            Request::Put(
                "leased",
                b"v".to_vec(),
                PutOptions::new().with_ignore_lease().with_lease(lease),
            ),
            Expect::Refused(Code::InvalidArgument, "etcdserver: lease is provided"),
        ),
        (
            "ignore_value on a missing key",
            Request::Put("missing", Vec::new(), PutOptions::new().with_ignore_value()),
            Expect::Refused(Code::InvalidArgument, "etcdserver: key not found"),
        ),
        (
            "ignore_lease on a missing key",
            Request::Put(
                "missing",
                b"v".to_vec(),
                PutOptions::new().with_ignore_lease(),
            ),
            Expect::Refused(Code::InvalidArgument, "etcdserver: key not found"),
        ),
    ];

    let mut failures = Vec::new();
    let case_count = cases.len();
    for (name, request, expect) in cases {
        let before = observe(&mut client).await;
        let result = run(&mut client, request).await;
        let after = observe(&mut client).await;
        match (&expect, &result) {
            (Expect::Refused(code, message), Err(Error::GRpcStatus(status)))
                if status.code() == *code && status.message() == *message => {}
            (Expect::Refused(code, message), _) => failures.push(format!(
                "{name}: expected {code:?} {message:?}, got {result:?}"
            )),
            (Expect::Empty, Ok(0)) => {}
            (Expect::Empty, _) => {
                failures.push(format!("{name}: expected an empty success, got {result:?}"))
            }
        }
        if before != after {
            failures.push(format!(
                "{name}: the store changed (revision {} -> {})",
                before.0, after.0
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {case_count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The store still works and is where it was.
    let (revision, kvs) = observe(&mut client).await;
    assert_eq!(revision, head);
    assert_eq!(kvs.len(), 3);
    client
        .put("a", "4", None)
        .await
        .expect("a valid put still works");
}
