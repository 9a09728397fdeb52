//! Tests for etcd's KV request semantics: data-driven tables for compares, validation, duplicate
//! keys and range options, and write/read txn execution against a real MVCC store.

use super::*;
use crate::mvcc::{MvccStore, TxnOutcome, WriteTxn};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use crate::proto::mvccpb::KeyValue;
use crate::storage::{Batch, Engine};

/// Asserts that `$result` is an `Err` matching `$pattern`; what follows is context for the
/// failure message, as in `assert!`.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        assert_err!($result, $pattern, "")
    };
    ($result:expr, $pattern:pat, $($context:tt)+) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "expected Err({}), got {other:?} {}",
                stringify!($pattern),
                format_args!($($context)+)
            ),
        }
    };
}

fn open_store() -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(Engine::open(dir.path(), false).unwrap()).unwrap();
    (dir, store)
}

/// Runs `f` in one write txn; commits whatever it changed (also on error, which must be
/// nothing) and returns its result with the published outcome.
fn commit<T>(
    store: &MvccStore,
    f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, TxnError>,
) -> (Result<T, TxnError>, TxnOutcome) {
    let mut txn = store.write_txn();
    let result = f(&mut txn);
    let mut batch = Batch::new();
    let pending = txn.finish(&mut batch);
    store.engine().write(batch, false).unwrap();
    (result, store.publish(pending))
}

/// [`super::apply_txn`] without the operation counts (tested in `mvcc_ops_as_etcd_counts_them`).
fn apply_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> Result<crate::proto::etcdserverpb::TxnResponse, TxnError> {
    super::apply_txn(txn, req, lease_exists).map(|(resp, _)| resp)
}

/// [`super::read_txn`] without the operation counts.
fn read_txn(
    store: &MvccStore,
    req: &TxnRequest,
) -> Result<crate::proto::etcdserverpb::TxnResponse, TxnError> {
    super::read_txn(store, req).map(|(resp, _)| resp)
}

fn no_leases(_: i64) -> bool {
    false
}

fn any_lease(_: i64) -> bool {
    true
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..PutRequest::default()
    }
}

fn put(store: &MvccStore, k: &str, v: &str, lease: i64) -> i64 {
    let req = PutRequest {
        lease,
        ..put_req(k, v)
    };
    let (r, out) = commit(store, |t| apply_put(t, &req, &any_lease));
    r.unwrap();
    out.rev
}

fn range_req(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        ..RangeRequest::default()
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    op(Request::RequestPut(put_req(k, v)))
}

fn op_range(k: &str, end: &str) -> RequestOp {
    op(Request::RequestRange(range_req(k, end)))
}

fn op_del(k: &str, end: &str) -> RequestOp {
    op(Request::RequestDeleteRange(DeleteRangeRequest {
        key: k.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        prev_kv: false,
    }))
}

fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
    op(Request::RequestTxn(TxnRequest {
        compare: Vec::new(),
        success,
        failure,
    }))
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Want {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(&'static str),
    Lease(i64),
}

fn compare(key: &str, end: &str, result: CompareResult, want: Want) -> Compare {
    let (target, union) = match want {
        Want::Version(v) => (CompareTarget::Version, TargetUnion::Version(v)),
        Want::Create(v) => (CompareTarget::Create, TargetUnion::CreateRevision(v)),
        Want::Mod(v) => (CompareTarget::Mod, TargetUnion::ModRevision(v)),
        Want::Value(v) => (
            CompareTarget::Value,
            TargetUnion::Value(v.as_bytes().to_vec()),
        ),
        Want::Lease(v) => (CompareTarget::Lease, TargetUnion::Lease(v)),
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        target_union: Some(union),
    }
}

#[test]
fn compares_per_target_result_and_presence() {
    let (_dir, store) = open_store();
    put(&store, "k", "v", 5); // rev 2
    put(&store, "k", "v", 5); // rev 3: create 2, mod 3, version 2, lease 5
    put(&store, "r1", "a", 0); // rev 4
    put(&store, "r2", "b", 0); // rev 5
    use CompareResult::{Equal as EQ, Greater as GT, Less as LT, NotEqual as NE};
    use Want::*;
    // (key, range_end, result, target value, expected)
    let table: &[(&str, &str, CompareResult, Want, bool)] = &[
        // Present key: each target against its actual value, below and above.
        ("k", "", EQ, Version(2), true),
        ("k", "", EQ, Version(3), false),
        ("k", "", NE, Version(2), false),
        ("k", "", NE, Version(1), true),
        ("k", "", GT, Version(1), true),
        ("k", "", GT, Version(2), false),
        ("k", "", LT, Version(3), true),
        ("k", "", LT, Version(2), false),
        ("k", "", EQ, Create(2), true),
        ("k", "", GT, Create(1), true),
        ("k", "", LT, Create(2), false),
        ("k", "", NE, Create(3), true),
        ("k", "", EQ, Mod(3), true),
        ("k", "", GT, Mod(3), false),
        ("k", "", LT, Mod(4), true),
        ("k", "", NE, Mod(3), false),
        ("k", "", EQ, Value("v"), true),
        ("k", "", EQ, Value("w"), false),
        ("k", "", GT, Value("u"), true),
        ("k", "", GT, Value("v"), false),
        ("k", "", LT, Value("w"), true),
        ("k", "", LT, Value("va"), true),
        ("k", "", NE, Value("v"), false),
        ("k", "", EQ, Lease(5), true),
        ("k", "", GT, Lease(4), true),
        ("k", "", LT, Lease(5), false),
        ("k", "", NE, Lease(0), true),
        // Absent key: VALUE is always false, the rest compare against zero.
        ("nokey", "", EQ, Value(""), false),
        ("nokey", "", NE, Value("x"), false),
        ("nokey", "", GT, Value(""), false),
        ("nokey", "", EQ, Version(0), true),
        ("nokey", "", GT, Version(0), false),
        ("nokey", "", EQ, Create(0), true),
        ("nokey", "", LT, Mod(1), true),
        ("nokey", "", EQ, Mod(0), true),
        ("nokey", "", EQ, Lease(0), true),
        ("nokey", "", NE, Lease(0), false),
        // Ranges: every key in range must satisfy the compare.
        ("r", "s", EQ, Version(1), true),
        ("r", "s", EQ, Value("a"), false),
        ("r", "s", GT, Value(""), true),
        ("r", "s", LT, Mod(5), false),
        ("r", "s", LT, Mod(6), true),
        ("r", "s", GT, Create(3), true),
        ("r2", "\0", EQ, Value("b"), true),
        ("\0", "\0", GT, Mod(1), true),
        ("\0", "\0", EQ, Lease(0), false),
        ("x", "y", EQ, Version(0), true),
        ("x", "y", EQ, Value(""), false),
    ];
    for &(key, end, result, want, expected) in table {
        let req = TxnRequest {
            compare: vec![compare(key, end, result, want)],
            success: vec![op_range("k", "")],
            failure: Vec::new(),
        };
        let resp = read_txn(&store, &req).unwrap();
        assert_eq!(
            resp.succeeded, expected,
            "{key:?}..{end:?} {result:?} {want:?}"
        );
        // The write path evaluates compares identically.
        let (r, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
        assert_eq!(
            r.unwrap().succeeded,
            expected,
            "apply: {key:?} {result:?} {want:?}"
        );
        assert!(out.events.is_empty());
    }
    // A conjunction: all must hold.
    let req = TxnRequest {
        compare: vec![
            compare("k", "", EQ, Version(2)),
            compare("nokey", "", EQ, Value("")),
        ],
        ..TxnRequest::default()
    };
    assert!(!read_txn(&store, &req).unwrap().succeeded);
}

#[test]
fn static_validation() {
    let ops = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| op_put(&format!("{prefix}{i}"), "v"))
            .collect::<Vec<_>>()
    };
    let cmps = |n: usize| {
        (0..n)
            .map(|_| compare("k", "", CompareResult::Equal, Want::Version(0)))
            .collect::<Vec<_>>()
    };
    let txn =
        |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            compare,
            success,
            failure,
        };
    let ok = |r: Result<(), TxnError>| r.is_ok();

    assert!(ok(check_txn(
        &txn(cmps(128), ops("k", 128), ops("k", 128)),
        128
    )));
    assert_err!(
        check_txn(&txn(cmps(129), vec![], vec![]), 128),
        TxnError::TooManyOps { ops: 129, max: 128 }
    );
    assert_err!(
        check_txn(&txn(vec![], vec![], ops("k", 129)), 128),
        TxnError::TooManyOps { ops: 129, max: 128 }
    );
    // A nested txn gets the budget its parent leaves: 128 - 100.
    let mut outer = ops("k", 99);
    outer.push(op_txn(ops("n", 28), vec![]));
    assert!(ok(check_txn(&txn(vec![], outer.clone(), vec![]), 128)));
    outer.pop();
    outer.push(op_txn(ops("n", 29), vec![]));
    assert_err!(
        check_txn(&txn(vec![], outer, vec![]), 128),
        TxnError::TooManyOps { ops: 29, max: 28 }
    );

    let mut c = compare("", "", CompareResult::Equal, Want::Version(0));
    assert_err!(
        check_txn(&txn(vec![c.clone()], vec![], vec![]), 128),
        TxnError::KeyNotProvided
    );
    c.key = b"k".to_vec();
    assert!(ok(check_txn(&txn(vec![c], vec![], vec![]), 128)));
    assert_err!(
        check_txn(&txn(vec![], vec![RequestOp { request: None }], vec![]), 128),
        TxnError::EmptyOp
    );
    assert_err!(
        check_txn(&txn(vec![], vec![], vec![op_put("", "v")]), 128),
        TxnError::KeyNotProvided
    );
    assert_err!(
        check_txn(&txn(vec![], vec![op_del("", "")], vec![]), 128),
        TxnError::KeyNotProvided
    );
    let mut bad_sort = range_req("a", "");
    bad_sort.sort_order = 3;
    assert_err!(
        check_range(&bad_sort),
        TxnError::InvalidSortOption {
            sort_order: 3,
            sort_target: 0
        }
    );
    bad_sort.sort_order = 2;
    bad_sort.sort_target = 5;
    assert_err!(
        check_range(&bad_sort),
        TxnError::InvalidSortOption {
            sort_order: 2,
            sort_target: 5
        }
    );
    bad_sort.sort_target = 4;
    assert!(ok(check_range(&bad_sort)));
    assert_err!(
        check_txn(
            &txn(
                vec![],
                vec![op(Request::RequestRange(RangeRequest {
                    sort_target: 9,
                    ..range_req("a", "")
                }))],
                vec![]
            ),
            128
        ),
        TxnError::InvalidSortOption { sort_target: 9, .. }
    );
    assert_err!(check_range(&range_req("", "")), TxnError::KeyNotProvided);
    let p = PutRequest {
        ignore_value: true,
        ..put_req("k", "v")
    };
    assert_err!(check_put(&p), TxnError::ValueProvided);
    let p = PutRequest {
        ignore_lease: true,
        lease: 3,
        ..put_req("k", "")
    };
    assert_err!(check_put(&p), TxnError::LeaseProvided { lease_id: 3 });
    let p = PutRequest {
        ignore_lease: true,
        ignore_value: true,
        ..put_req("k", "")
    };
    assert!(ok(check_put(&p)));
}

#[test]
fn duplicate_keys_in_a_branch() {
    // (success ops, the key reported as written twice)
    let table: Vec<(Vec<RequestOp>, Option<&str>)> = vec![
        (vec![op_put("a", "1"), op_put("a", "2")], Some("a")),
        (vec![op_put("a", "1"), op_put("b", "2")], None),
        (vec![op_del("a", "c"), op_put("b", "1")], Some("b")),
        (vec![op_put("c", "1"), op_del("a", "c")], None),
        (vec![op_del("a", ""), op_put("a", "1")], Some("a")),
        (vec![op_del("a", ""), op_put("ab", "1")], None),
        // etcd compares "\0" as a plain range end here, so from-key deletes never conflict.
        (vec![op_del("a", "\0"), op_put("b", "1")], None),
        (vec![op_del("a", "c"), op_del("b", "d")], None),
        (vec![op_range("a", ""), op_put("a", "1")], None),
        (
            vec![op_txn(vec![op_put("a", "1")], vec![op_put("a", "2")])],
            None,
        ),
        (
            vec![op_put("a", "1"), op_txn(vec![op_put("a", "2")], vec![])],
            Some("a"),
        ),
        (
            vec![op_put("a", "1"), op_txn(vec![], vec![op_put("a", "2")])],
            Some("a"),
        ),
        (
            vec![
                op_txn(vec![op_put("a", "1")], vec![]),
                op_txn(vec![], vec![op_put("a", "2")]),
            ],
            Some("a"),
        ),
        (
            vec![
                op_txn(vec![op_put("a", "1")], vec![]),
                op_txn(vec![op_put("a", "2")], vec![]),
            ],
            Some("a"),
        ),
        (
            vec![op_del("a", "c"), op_txn(vec![op_put("b", "1")], vec![])],
            Some("b"),
        ),
        (
            vec![op_txn(vec![op_del("a", "c")], vec![]), op_put("b", "1")],
            Some("b"),
        ),
        (
            vec![
                op_txn(vec![op_txn(vec![op_put("a", "1")], vec![])], vec![]),
                op_put("a", "2"),
            ],
            Some("a"),
        ),
    ];
    for (i, (ops, want)) in table.into_iter().enumerate() {
        for in_failure in [false, true] {
            let req = if in_failure {
                TxnRequest {
                    failure: ops.clone(),
                    ..TxnRequest::default()
                }
            } else {
                TxnRequest {
                    success: ops.clone(),
                    ..TxnRequest::default()
                }
            };
            let got = match check_txn(&req, 128) {
                Ok(()) => None,
                Err(TxnError::DuplicateKey { key }) => Some(String::from_utf8(key).unwrap()),
                Err(other) => panic!("case {i}: unexpected {other:?}"),
            };
            assert_eq!(
                got.as_deref(),
                want,
                "case {i} (failure branch: {in_failure})"
            );
        }
    }
}

/// a: create 2 mod 2 ver 1 "z"; b: create 3 mod 7 ver 3 "x3"; c: create 4 mod 6 ver 2 "y2".
fn populate_sorting(store: &MvccStore) {
    for (k, v) in [
        ("a", "z"),
        ("b", "x"),
        ("c", "y"),
        ("b", "x2"),
        ("c", "y2"),
        ("b", "x3"),
    ] {
        put(store, k, v, 0);
    }
    assert_eq!(store.current_revision(), 7);
}

#[test]
fn range_sort_filter_limit_more_count() {
    let (_dir, store) = open_store();
    populate_sorting(&store);
    let all = range_req("\0", "\0");
    let with = |f: &dyn Fn(&mut RangeRequest)| {
        let mut r = all.clone();
        f(&mut r);
        r
    };
    use SortOrder::{Ascend, Descend};
    use SortTarget::{Create, Key, Mod, Value, Version};
    // (request, keys, more, count)
    let table: Vec<(RangeRequest, &[&str], bool, i64)> = vec![
        (all.clone(), &["a", "b", "c"], false, 3),
        (with(&|r| r.limit = 2), &["a", "b"], true, 3),
        (with(&|r| r.limit = 3), &["a", "b", "c"], false, 3),
        (with(&|r| r.limit = -1), &["a", "b", "c"], false, 3),
        (
            with(&|r| r.sort_target = Version as i32),
            &["a", "c", "b"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_target = Version as i32;
                r.sort_order = Descend as i32
            }),
            &["b", "c", "a"],
            false,
            3,
        ),
        (
            with(&|r| r.sort_order = Descend as i32),
            &["c", "b", "a"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_order = Descend as i32;
                r.limit = 1
            }),
            &["c"],
            true,
            3,
        ),
        (
            with(&|r| {
                r.sort_order = Ascend as i32;
                r.sort_target = Key as i32
            }),
            &["a", "b", "c"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_order = Ascend as i32;
                r.sort_target = Mod as i32
            }),
            &["a", "c", "b"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_order = Descend as i32;
                r.sort_target = Create as i32
            }),
            &["c", "b", "a"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_order = Ascend as i32;
                r.sort_target = Value as i32
            }),
            &["b", "c", "a"],
            false,
            3,
        ),
        (
            with(&|r| {
                r.sort_target = Version as i32;
                r.limit = 2
            }),
            &["a", "c"],
            true,
            3,
        ),
        (with(&|r| r.min_mod_revision = 6), &["b", "c"], false, 3),
        (with(&|r| r.max_mod_revision = 6), &["a", "c"], false, 3),
        (with(&|r| r.min_create_revision = 3), &["b", "c"], false, 3),
        (with(&|r| r.max_create_revision = 3), &["a", "b"], false, 3),
        (
            with(&|r| {
                r.max_mod_revision = 6;
                r.limit = 1
            }),
            &["a"],
            true,
            3,
        ),
        (
            with(&|r| {
                r.min_mod_revision = 6;
                r.sort_order = Descend as i32;
                r.sort_target = Mod as i32
            }),
            &["b", "c"],
            false,
            3,
        ),
        (with(&|r| r.count_only = true), &[], false, 3),
        (
            with(&|r| {
                r.count_only = true;
                r.limit = 1
            }),
            &[],
            false,
            3,
        ),
        (with(&|r| r.revision = 4), &["a", "b", "c"], false, 3),
        (with(&|r| r.revision = 3), &["a", "b"], false, 2),
        (range_req("b", ""), &["b"], false, 1),
        (range_req("a", "c"), &["a", "b"], false, 2),
    ];
    for (i, (req, want, more, count)) in table.into_iter().enumerate() {
        let resp = range(&store, &req).unwrap();
        assert_eq!(keys(&resp.kvs), want, "case {i}: keys");
        assert_eq!(
            (resp.more, resp.count),
            (more, count),
            "case {i}: more, count"
        );
        assert_eq!(
            resp.header.unwrap().revision,
            7,
            "case {i}: header revision"
        );
    }
    let resp = range(&store, &with(&|r| r.keys_only = true)).unwrap();
    assert!(
        resp.kvs
            .iter()
            .all(|kv| kv.value.is_empty() && kv.mod_revision > 0)
    );
    let old = range(&store, &with(&|r| r.revision = 4)).unwrap();
    let values: Vec<_> = old
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
        .collect();
    assert_eq!(values, ["z", "x", "y"]);
    assert_err!(
        range(&store, &with(&|r| r.revision = 8)),
        TxnError::FutureRev {
            requested: 8,
            current: 7
        }
    );
}

#[test]
fn txn_compare_and_swap_with_sub_response_headers() {
    let (_dir, store) = open_store();
    assert_eq!(put(&store, "k", "v", 0), 2);
    let req = TxnRequest {
        compare: vec![compare("k", "", CompareResult::Equal, Want::Mod(2))],
        success: vec![
            op_range("k", ""),
            op(Request::RequestPut(PutRequest {
                prev_kv: true,
                ..put_req("k", "v2")
            })),
            op_range("k", ""),
            op_del("nothing", ""),
        ],
        failure: vec![op_range("k", "")],
    };
    let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
    let resp = resp.unwrap();
    assert!(resp.succeeded);
    assert_eq!(out.rev, 3);
    assert_eq!(resp.header.unwrap().revision, 3);
    let revs: Vec<i64> = resp
        .responses
        .iter()
        .map(|r| match r.response.as_ref().unwrap() {
            Response::ResponseRange(x) => x.header.unwrap().revision,
            Response::ResponsePut(x) => x.header.unwrap().revision,
            Response::ResponseDeleteRange(x) => x.header.unwrap().revision,
            Response::ResponseTxn(x) => x.header.unwrap().revision,
        })
        .collect();
    // etcd: a range before the first change reads (and reports) the previous revision.
    assert_eq!(revs, [2, 3, 3, 3]);
    match (&resp.responses[1].response, &resp.responses[2].response) {
        (Some(Response::ResponsePut(p)), Some(Response::ResponseRange(r))) => {
            assert_eq!(p.prev_kv.as_ref().unwrap().value, b"v");
            assert_eq!(r.kvs[0].value, b"v2");
            assert_eq!(r.kvs[0].version, 2);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    // The same txn now fails its compare and only reads.
    let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
    let resp = resp.unwrap();
    assert!(!resp.succeeded);
    assert_eq!((out.rev, resp.header.unwrap().revision), (3, 3));
    assert!(out.events.is_empty());
}

#[test]
fn failing_txns_change_nothing() {
    let (_dir, store) = open_store();
    put(&store, "k", "v", 0);
    let lease_is_7 = |l: i64| l == 7;
    let with_lease = |k: &str, lease| {
        op(Request::RequestPut(PutRequest {
            lease,
            ..put_req(k, "x")
        }))
    };
    /// Whether an error is the one a case must fail with.
    type Expected = fn(&TxnError) -> bool;
    // (txn, the error it must fail with)
    let table: Vec<(TxnRequest, Expected)> = vec![
        (
            TxnRequest {
                success: vec![op_put("a", "1"), with_lease("b", 99)],
                ..TxnRequest::default()
            },
            |e| matches!(e, TxnError::LeaseNotFound { lease_id: 99 }),
        ),
        (
            TxnRequest {
                success: vec![op_put("a", "1"), op_txn(vec![with_lease("b", 99)], vec![])],
                ..TxnRequest::default()
            },
            |e| matches!(e, TxnError::LeaseNotFound { lease_id: 99 }),
        ),
        (
            TxnRequest {
                success: vec![
                    op_del("k", ""),
                    op(Request::RequestPut(PutRequest {
                        ignore_value: true,
                        ..put_req("missing", "")
                    })),
                ],
                ..TxnRequest::default()
            },
            |e| matches!(e, TxnError::KeyNotFound),
        ),
        (
            TxnRequest {
                success: vec![
                    op_put("a", "1"),
                    op(Request::RequestRange(RangeRequest {
                        revision: 3,
                        ..range_req("k", "")
                    })),
                ],
                ..TxnRequest::default()
            },
            |e| {
                matches!(
                    e,
                    TxnError::FutureRev {
                        requested: 3,
                        current: 2
                    }
                )
            },
        ),
    ];
    for (i, (req, want)) in table.into_iter().enumerate() {
        let (r, out) = commit(&store, |t| {
            let r = apply_txn(t, &req, &lease_is_7);
            assert!(!t.has_changes(), "case {i}: partial changes");
            r
        });
        let e = r.unwrap_err();
        assert!(want(&e), "case {i}: {e:?}");
        assert!(out.events.is_empty());
        assert_eq!(store.current_revision(), 2);
    }
    // The lease check only covers the branch taken.
    let req = TxnRequest {
        compare: vec![compare("k", "", CompareResult::Equal, Want::Value("nope"))],
        success: vec![with_lease("b", 99)],
        failure: vec![with_lease("b", 7)],
    };
    let (r, out) = commit(&store, |t| apply_txn(t, &req, &lease_is_7));
    assert!(!r.unwrap().succeeded);
    assert_eq!(out.events[0].kv.as_ref().unwrap().lease, 7);
}

#[test]
fn nested_txns_evaluate_compares_before_writing() {
    let (_dir, store) = open_store();
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("x", "1"),
            op(Request::RequestTxn(TxnRequest {
                // Evaluated before the outer put: x does not exist yet.
                compare: vec![compare("x", "", CompareResult::Equal, Want::Value("1"))],
                success: vec![op_put("then", "1")],
                failure: vec![op_put("else", "1"), op_range("x", "")],
            })),
            op_txn(vec![op_put("second", "1")], vec![]),
        ],
        failure: vec![],
    };
    let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
    let resp = resp.unwrap();
    assert_eq!(out.rev, 2);
    let written: Vec<_> = out
        .events
        .iter()
        .map(|e| String::from_utf8(e.kv.clone().unwrap().key).unwrap())
        .collect();
    assert_eq!(written, ["x", "else", "second"]);
    let Some(Response::ResponseTxn(nested)) = &resp.responses[1].response else {
        panic!("nested txn response expected");
    };
    assert!(!nested.succeeded);
    assert_eq!(
        nested.header.unwrap().revision,
        0,
        "nested txn headers are empty, as in etcd"
    );
    let Some(Response::ResponseRange(r)) = &nested.responses[1].response else {
        panic!("range response expected");
    };
    assert_eq!(
        keys(&r.kvs),
        ["x"],
        "ops see earlier writes of the same txn"
    );
    let Some(Response::ResponseTxn(second)) = &resp.responses[2].response else {
        panic!("nested txn response expected");
    };
    assert!(second.succeeded);
    assert_eq!(resp.header.unwrap().revision, 2);
}

#[test]
fn put_options_and_delete_range() {
    let (_dir, store) = open_store();
    let leases = |l: i64| l == 5;
    let (r, _) = commit(&store, |t| {
        apply_put(
            t,
            &PutRequest {
                lease: 5,
                ..put_req("k", "v")
            },
            &leases,
        )
    });
    assert_eq!(r.unwrap().header.unwrap().revision, 2);
    // ignore_value keeps the value, ignore_lease the lease.
    let req = PutRequest {
        ignore_value: true,
        prev_kv: true,
        ..put_req("k", "")
    };
    let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
    assert_eq!(r.unwrap().prev_kv.unwrap().value, b"v");
    let kv = out.events[0].kv.clone().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v"[..], 0, 2)
    );
    let (r, out) = commit(&store, |t| {
        apply_put(
            t,
            &PutRequest {
                lease: 5,
                ..put_req("k", "v")
            },
            &leases,
        )
    });
    r.unwrap();
    assert_eq!(out.rev, 4);
    let req = PutRequest {
        ignore_lease: true,
        ..put_req("k", "w")
    };
    let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
    assert!(r.unwrap().prev_kv.is_none(), "prev_kv only when asked");
    let kv = out.events[0].kv.clone().unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"w"[..], 5));
    // Errors: lease first, then the missing key.
    let req = PutRequest {
        ignore_value: true,
        lease: 9,
        ..put_req("missing", "")
    };
    let (r, out) = commit(&store, |t| apply_put(t, &req, &leases));
    assert_err!(r, TxnError::LeaseNotFound { lease_id: 9 });
    assert!(out.events.is_empty());
    let req = PutRequest {
        ignore_value: true,
        ..put_req("missing", "")
    };
    let (r, _) = commit(&store, |t| apply_put(t, &req, &leases));
    assert_err!(r, TxnError::KeyNotFound);

    put(&store, "k2", "x", 0); // rev 6
    let del = |k: &str, end: &str, prev_kv: bool| DeleteRangeRequest {
        key: k.as_bytes().to_vec(),
        range_end: end.as_bytes().to_vec(),
        prev_kv,
    };
    let (r, out) = commit(&store, |t| {
        apply_delete_range(t, &del("zz", "", true), &no_leases)
    });
    let r = r.unwrap();
    assert_eq!((r.deleted, r.header.unwrap().revision, out.rev), (0, 6, 6));
    let (r, out) = commit(&store, |t| {
        apply_delete_range(t, &del("k", "\0", true), &no_leases)
    });
    let r = r.unwrap();
    assert_eq!((r.deleted, r.header.unwrap().revision, out.rev), (2, 7, 7));
    assert_eq!(keys(&r.prev_kvs), ["k", "k2"]);
    assert!(
        out.events
            .iter()
            .all(|e| e.r#type == crate::proto::mvccpb::event::EventType::Delete as i32)
    );
    assert_eq!(
        out.events[0].prev_kv.as_ref().unwrap().lease,
        5,
        "events keep prev_kv for lease detach"
    );
    let (r, _) = commit(&store, |t| {
        apply_delete_range(t, &del("k", "\0", false), &no_leases)
    });
    assert!(r.unwrap().prev_kvs.is_empty());
}

#[test]
fn ranges_inside_a_write_txn_see_its_writes() {
    let (_dir, store) = open_store();
    put(&store, "a", "1", 0);
    let count_all = RangeRequest {
        count_only: true,
        ..range_req("\0", "\0")
    };
    let req = TxnRequest {
        success: vec![
            op(Request::RequestRange(count_all.clone())),
            op_put("b", "1"),
            op_del("a", ""),
            op_put("c", "1"),
            op(Request::RequestRange(count_all)),
            op(Request::RequestRange(RangeRequest {
                limit: 1,
                ..range_req("\0", "\0")
            })),
        ],
        ..TxnRequest::default()
    };
    let (resp, out) = commit(&store, |t| apply_txn(t, &req, &no_leases));
    let resp = resp.unwrap();
    let ranges: Vec<(Vec<String>, i64, bool, i64)> = resp
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(Response::ResponseRange(x)) => {
                Some((keys(&x.kvs), x.count, x.more, x.header.unwrap().revision))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (vec![], 1, false, 2),
            (vec![], 2, false, 3),
            (vec!["b".to_owned()], 2, true, 3),
        ]
    );
    assert_eq!(out.rev, 3);
}

#[test]
fn read_only_txns() {
    let (_dir, store) = open_store();
    put(&store, "a", "1", 0);
    put(&store, "a", "2", 0);
    let req = TxnRequest {
        compare: vec![compare("a", "", CompareResult::Equal, Want::Version(2))],
        success: vec![
            op_range("a", ""),
            op(Request::RequestRange(RangeRequest {
                revision: 2,
                ..range_req("a", "")
            })),
        ],
        failure: vec![],
    };
    assert!(is_txn_read_only(&req));
    assert!(!is_txn_serializable(&req));
    let resp = read_txn(&store, &req).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    let values: Vec<_> = resp
        .responses
        .iter()
        .map(|r| match &r.response {
            Some(Response::ResponseRange(x)) => {
                (x.kvs[0].value.clone(), x.header.unwrap().revision)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(values, [(b"2".to_vec(), 3), (b"1".to_vec(), 3)]);

    let mut batch = Batch::new();
    let job = store.compact(3, &mut batch).unwrap();
    store.engine().write(batch, false).unwrap();
    store.publish_compaction(&job);
    job.run(store.engine()).unwrap();
    assert_err!(
        read_txn(&store, &req),
        TxnError::Compacted {
            requested: 2,
            compacted: 3
        }
    );

    let writes = TxnRequest {
        success: vec![op_put("a", "3")],
        ..TxnRequest::default()
    };
    assert!(!is_txn_read_only(&writes));
    assert!(matches!(
        read_txn(&store, &writes),
        Err(TxnError::NotReadOnly)
    ));
    let nested = TxnRequest {
        success: vec![op_txn(vec![op_range("a", "")], vec![])],
        ..TxnRequest::default()
    };
    assert!(
        !is_txn_read_only(&nested),
        "a nested txn makes a txn a write, as in etcd"
    );
}

/// The MVCC operations each request counts, as measured on etcd 3.4.23 (the deltas of
/// `etcd_mvcc_{range,put,delete,txn}_total` after each request, against a store holding
/// `k=v` and `x=2`): (what, request, ranges, puts, deletes, txns).
#[test]
fn mvcc_ops_as_etcd_counts_them() {
    use crate::metrics::MvccOps;
    use CompareResult::Equal as EQ;
    use Want::Value;

    let (_dir, store) = open_store();
    put(&store, "k", "v", 0);
    put(&store, "x", "2", 0);
    let ops = |ranges, puts, deletes, txns| MvccOps {
        ranges,
        puts,
        deletes,
        txns,
    };
    let txn =
        |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            compare,
            success,
            failure,
        };
    let k_is_v = || compare("k", "", EQ, Value("v"));
    let k_is_z = || compare("k", "", EQ, Value("z"));
    let x_is_2 = || compare("x", "", EQ, Value("2"));
    let table: Vec<(&str, TxnRequest, MvccOps)> = vec![
        (
            "no compare, one put",
            txn(vec![], vec![op_put("x", "2")], vec![]),
            ops(0, 1, 0, 0),
        ),
        (
            "no compare, two puts",
            txn(vec![], vec![op_put("x", "2"), op_put("y", "2")], vec![]),
            ops(0, 2, 0, 1),
        ),
        (
            "no compare, one get",
            txn(vec![], vec![op_range("x", "")], vec![]),
            ops(1, 0, 0, 0),
        ),
        (
            "no compare, two gets",
            txn(vec![], vec![op_range("x", ""), op_range("y", "")], vec![]),
            ops(2, 0, 0, 1),
        ),
        (
            "one compare, one put",
            txn(vec![k_is_v()], vec![op_put("x", "2")], vec![]),
            ops(1, 1, 0, 0),
        ),
        (
            "two compares, one put",
            txn(vec![k_is_v(), x_is_2()], vec![op_put("x", "2")], vec![]),
            ops(2, 1, 0, 1),
        ),
        (
            "two compares, one get",
            txn(vec![k_is_v(), x_is_2()], vec![op_range("x", "")], vec![]),
            ops(3, 0, 0, 1),
        ),
        (
            "one compare, one get",
            txn(vec![k_is_v()], vec![op_range("x", "")], vec![]),
            ops(2, 0, 0, 1),
        ),
        (
            "failed compare, empty failure branch",
            txn(vec![k_is_z()], vec![op_put("q", "1")], vec![]),
            ops(1, 0, 0, 0),
        ),
        (
            "one compare, a put and a get",
            txn(
                vec![k_is_v()],
                vec![op_put("x", "2"), op_range("x", "")],
                vec![],
            ),
            ops(2, 1, 0, 1),
        ),
        ("empty", txn(vec![], vec![], vec![]), ops(0, 0, 0, 0)),
        // The first false compare ends the list.
        (
            "first of two compares false",
            txn(vec![k_is_z(), x_is_2()], vec![op_put("q", "1")], vec![]),
            ops(1, 0, 0, 0),
        ),
        (
            "second of two compares false",
            txn(vec![k_is_v(), k_is_z()], vec![op_put("q", "1")], vec![]),
            ops(2, 0, 0, 1),
        ),
        (
            "false compare, a delete in the failure branch",
            txn(
                vec![k_is_z()],
                vec![op_put("q", "1")],
                vec![op_del("nothing", "")],
            ),
            ops(1, 0, 1, 0),
        ),
        // Not measured (etcdctl sends no nested txns), from etcd's compareToPath: nested txns
        // on the taken branch evaluate their compares in the same read transaction.
        (
            "false compare first, then a nested txn with a delete",
            txn(
                vec![k_is_z(), k_is_v()],
                vec![],
                vec![op(Request::RequestTxn(txn(
                    vec![x_is_2()],
                    vec![op_del("nothing", "")],
                    vec![],
                )))],
            ),
            ops(2, 0, 1, 1),
        ),
    ];
    for (what, req, want) in table {
        let counted = if is_txn_read_only(&req) {
            super::read_txn(&store, &req).unwrap().1
        } else {
            let (r, _) = commit(&store, |t| super::apply_txn(t, &req, &any_lease));
            r.unwrap().1
        };
        assert_eq!(counted, want, "{what}");
    }

    let prev_kv = PutRequest {
        prev_kv: true,
        ..put_req("a", "2")
    };
    assert_eq!(count::put(&put_req("a", "1")), ops(0, 1, 0, 0));
    assert_eq!(count::put(&prev_kv), ops(1, 1, 0, 1));
    let delete = |prev_kv| DeleteRangeRequest {
        key: b"a".to_vec(),
        range_end: Vec::new(),
        prev_kv,
    };
    assert_eq!(count::delete_range(&delete(false)), ops(0, 0, 1, 0));
    assert_eq!(count::delete_range(&delete(true)), ops(1, 0, 1, 1));
    assert_eq!(count::lease_revoke(2), ops(0, 0, 2, 1));
    assert_eq!(count::lease_revoke(1), ops(0, 0, 1, 0));
    assert_eq!(count::compaction(), ops(1, 0, 0, 0));
    assert_eq!(count::range(), ops(1, 0, 0, 0));
}
