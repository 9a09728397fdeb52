//! Black-box tests of the KV service (Range, Put, DeleteRange, Txn) through etcd-client, the
//! revision rules, and etcdctl `put`/`get`/`del`/`txn` compared with the etcd 3.4 captures.

use crate::common;

use std::cmp::Ordering;

use common::Server;
use common::reference::{self, Ids, LEASE_SOURCES, Member, VOLATILE};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KeyValue,
    LeaseTimeToLiveOptions, PutOptions, ResponseHeader, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

fn revision(header: Option<&ResponseHeader>) -> i64 {
    header
        .expect("every KV response carries a header")
        .revision()
}

fn key_names(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn keys_of(response: &GetResponse) -> Vec<String> {
    key_names(response.kvs())
}

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client
        .put(key, value, None)
        .await
        .unwrap_or_else(|err| panic!("put {key}: {err}"));
    revision(response.header())
}

async fn get_one(client: &mut Client, key: &str) -> Option<KeyValue> {
    let response = client
        .get(key, None)
        .await
        .unwrap_or_else(|err| panic!("get {key}: {err}"));
    assert!(
        response.kvs().len() <= 1,
        "a single-key get returns at most one kv"
    );
    response.kvs().first().cloned()
}

async fn current_revision(client: &mut Client) -> i64 {
    let response = client
        .get("revision-probe", None)
        .await
        .expect("get of a missing key works");
    revision(response.header())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_count_changes_not_requests() {
    let server = Server::start();
    let mut client = server.client().await;

    let fresh = client.get("a", None).await.expect("get");
    assert_eq!(
        revision(fresh.header()),
        1,
        "a fresh store is at revision 1"
    );
    assert!(fresh.kvs().is_empty());
    assert_eq!(fresh.count(), 0);
    assert!(!fresh.more());

    assert_eq!(
        put(&mut client, "a", "1").await,
        2,
        "the first put is revision 2"
    );

    // All writes of one txn share one revision.
    let txn = client
        .txn(Txn::new().and_then([
            TxnOp::put("b", "1", None),
            TxnOp::put("c", "1", None),
            TxnOp::delete("a", None),
        ]))
        .await
        .expect("txn");
    assert!(txn.succeeded(), "a txn without compares succeeds");
    assert_eq!(revision(txn.header()), 3, "one txn is one revision");
    for key in ["b", "c"] {
        let kv = get_one(&mut client, key).await.expect("written by the txn");
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (3, 3, 1)
        );
    }
    assert!(
        get_one(&mut client, "a").await.is_none(),
        "deleted by the txn"
    );

    // Requests that change nothing do not consume a revision.
    let deleted = client.delete("nothing", None).await.expect("delete");
    assert_eq!(deleted.deleted(), 0);
    assert_eq!(
        revision(deleted.header()),
        3,
        "deleting nothing keeps the revision"
    );
    let deleted = client
        .delete("zzz", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    assert_eq!((deleted.deleted(), revision(deleted.header())), (0, 3));
    let read_only = client
        .txn(Txn::new().and_then([TxnOp::get("b", None)]))
        .await
        .expect("read-only txn");
    assert_eq!(
        revision(read_only.header()),
        3,
        "a read-only txn keeps the revision"
    );
    let failed = client
        .txn(
            Txn::new()
                .when([Compare::version("b", CompareOp::Equal, 5)])
                .and_then([TxnOp::put("b", "2", None)])
                .or_else([TxnOp::get("b", None), TxnOp::delete("nothing", None)]),
        )
        .await
        .expect("txn");
    assert!(!failed.succeeded());
    assert_eq!(
        revision(failed.header()),
        3,
        "a txn whose branch only reads or deletes nothing keeps the revision"
    );
    assert_eq!(get_one(&mut client, "b").await.expect("b").value(), b"1");

    // The version counts modifications and restarts after a delete.
    let first = put(&mut client, "v", "x").await;
    assert_eq!(first, 4);
    put(&mut client, "v", "y").await;
    put(&mut client, "v", "z").await;
    let kv = get_one(&mut client, "v").await.expect("v exists");
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (4, 6, 3)
    );
    assert_eq!(kv.value(), b"z");
    let deleted = client.delete("v", None).await.expect("delete v");
    assert_eq!((deleted.deleted(), revision(deleted.header())), (1, 7));
    assert!(get_one(&mut client, "v").await.is_none());
    assert_eq!(put(&mut client, "v", "again").await, 8);
    let kv = get_one(&mut client, "v").await.expect("v recreated");
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (8, 8, 1),
        "a recreated key starts a new life"
    );
    assert_eq!(current_revision(&mut client).await, 8);
}

/// Writes the data set the range test reads. Every attribute orders the four `k/` keys
/// differently: key a,b,c,d; create c,a,d,b; mod d,c,b,a; value d,a,c,b; version b,d,a,c.
async fn write_range_data(client: &mut Client) {
    let writes = [
        ("k/c", "c1"),
        ("k/a", "a1"),
        ("k/d", "d1"),
        ("k/d", "alpha"),
        ("k/c", "c2"),
        ("k/c", "c3"),
        ("k/c", "charlie"),
        ("k/b", "delta"),
        ("k/a", "a2"),
        ("k/a", "bravo"),
        ("j", "jay"),
        ("k0", "after-prefix"),
        ("l", "el"),
    ];
    for (index, (key, value)) in writes.iter().enumerate() {
        let written = put(client, key, value).await;
        assert_eq!(
            written,
            index as i64 + 2,
            "put {key} lands on the next revision"
        );
    }
}

fn by_target(target: SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => a.key().cmp(b.key()),
        SortTarget::Version => a.version().cmp(&b.version()),
        SortTarget::Create => a.create_revision().cmp(&b.create_revision()),
        SortTarget::Mod => a.mod_revision().cmp(&b.mod_revision()),
        SortTarget::Value => a.value().cmp(b.value()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests() {
    let server = Server::start();
    let mut client = server.client().await;
    write_range_data(&mut client).await;
    let head = 14;
    let prefix = || GetOptions::new().with_prefix();

    let single = client.get("k/a", None).await.expect("get");
    assert_eq!(keys_of(&single), ["k/a"]);
    let kv = &single.kvs()[0];
    assert_eq!(kv.value(), b"bravo");
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (3, 11, 3, 0)
    );
    assert_eq!((single.count(), single.more()), (1, false));
    assert_eq!(revision(single.header()), head);

    let missing = client.get("k/zz", None).await.expect("get");
    assert_eq!((missing.kvs().len(), missing.count()), (0, 0));

    let range = client
        .get("k/a", Some(GetOptions::new().with_range("k/c")))
        .await
        .expect("range");
    assert_eq!(keys_of(&range), ["k/a", "k/b"], "range_end is exclusive");
    assert_eq!(range.count(), 2);

    let backwards = client
        .get("k/c", Some(GetOptions::new().with_range("k/a")))
        .await
        .expect("range_end before key is not an error");
    assert!(
        backwards.kvs().is_empty(),
        "range_end before key selects nothing"
    );
    assert_eq!(backwards.count(), 0);

    let all_k = client.get("k/", Some(prefix())).await.expect("prefix");
    assert_eq!(keys_of(&all_k), ["k/a", "k/b", "k/c", "k/d"]);
    assert_eq!((all_k.count(), all_k.more()), (4, false));

    let from_key = client
        .get("k/c", Some(GetOptions::new().with_from_key()))
        .await
        .expect("from key");
    assert_eq!(
        keys_of(&from_key),
        ["k/c", "k/d", "k0", "l"],
        "range_end \\0 means every key >= key"
    );

    let everything = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("all keys");
    assert_eq!(
        keys_of(&everything),
        ["j", "k/a", "k/b", "k/c", "k/d", "k0", "l"]
    );
    let explicit_all = client
        .get("\0", Some(GetOptions::new().with_range("\0")))
        .await
        .expect("key \\0 with range_end \\0");
    assert_eq!(keys_of(&explicit_all), keys_of(&everything));

    // limit cuts the result; more and count describe what was cut.
    for (limit, expected, more) in [
        (1, &["k/a"][..], true),
        (2, &["k/a", "k/b"][..], true),
        (4, &["k/a", "k/b", "k/c", "k/d"][..], false),
        (10, &["k/a", "k/b", "k/c", "k/d"][..], false),
    ] {
        let limited = client
            .get("k/", Some(prefix().with_limit(limit)))
            .await
            .expect("limit");
        assert_eq!(keys_of(&limited), expected, "limit {limit}");
        assert_eq!(
            (limited.more(), limited.count()),
            (more, 4),
            "limit {limit}"
        );
    }

    // Sorting: every target × order. Order NONE sorts by key for KEY and ascends otherwise.
    let plain = all_k.kvs().to_vec();
    for target in [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ] {
        for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
            let mut expected = plain.clone();
            expected.sort_by(|a, b| by_target(target, a, b));
            if order == SortOrder::Descend {
                expected.reverse();
            }
            let sorted = client
                .get("k/", Some(prefix().with_sort(target, order)))
                .await
                .expect("sorted get");
            assert_eq!(
                keys_of(&sorted),
                key_names(&expected),
                "sort by {target:?} {order:?}"
            );
            assert_eq!(sorted.count(), 4);
            // etcd fetches everything before sorting only when the order is not NONE; with
            // order NONE (and a target other than KEY) it fetches limit + 1 keys in key order,
            // sorts those ascending and cuts. etcd 3.4 and 3.5 agree; clients see it.
            let mut expected_limited = expected.clone();
            if order == SortOrder::None && target != SortTarget::Key {
                expected_limited = plain[..3].to_vec();
                expected_limited.sort_by(|a, b| by_target(target, a, b));
            }
            let limited = client
                .get("k/", Some(prefix().with_sort(target, order).with_limit(2)))
                .await
                .expect("sorted get with limit");
            assert_eq!(
                keys_of(&limited),
                key_names(&expected_limited[..2]),
                "sort by {target:?} {order:?} limit 2"
            );
            assert_eq!((limited.more(), limited.count()), (true, 4));
        }
    }

    let keys_only = client
        .get("k/", Some(prefix().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!(keys_of(&keys_only), ["k/a", "k/b", "k/c", "k/d"]);
    for (stripped, full) in keys_only.kvs().iter().zip(&plain) {
        assert!(stripped.value().is_empty(), "keys_only drops values");
        assert_eq!(
            (
                stripped.create_revision(),
                stripped.mod_revision(),
                stripped.version()
            ),
            (full.create_revision(), full.mod_revision(), full.version()),
            "keys_only keeps the revisions"
        );
    }

    let count_only = client
        .get("k/", Some(prefix().with_count_only()))
        .await
        .expect("count only");
    assert!(count_only.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!((count_only.count(), count_only.more()), (4, false));
    assert_eq!(revision(count_only.header()), head);

    // Historical reads see the store as it was; the header still carries the current revision.
    let at_7 = client
        .get("k/", Some(prefix().with_revision(7)))
        .await
        .expect("read at revision 7");
    assert_eq!(keys_of(&at_7), ["k/a", "k/c", "k/d"]);
    let values: Vec<&[u8]> = at_7.kvs().iter().map(KeyValue::value).collect();
    assert_eq!(values, [&b"a1"[..], b"c3", b"alpha"]);
    assert_eq!(at_7.kvs()[1].version(), 3);
    assert_eq!(at_7.count(), 3);
    assert_eq!(
        revision(at_7.header()),
        head,
        "a historical read reports the current revision"
    );
    let at_1 = client
        .get("k/", Some(prefix().with_revision(1)))
        .await
        .expect("read at revision 1");
    assert_eq!((at_1.kvs().len(), at_1.count()), (0, 0));
    let at_head = client
        .get("k/", Some(prefix().with_revision(head)))
        .await
        .expect("read at the head revision");
    assert_eq!(keys_of(&at_head), keys_of(&all_k));

    // Revision filters keep count at the unfiltered total.
    let filters: [(&str, GetOptions, &[&str]); 6] = [
        (
            "min_mod 8",
            prefix().with_min_mod_revision(8),
            &["k/a", "k/b", "k/c"],
        ),
        (
            "max_mod 8",
            prefix().with_max_mod_revision(8),
            &["k/c", "k/d"],
        ),
        (
            "min_create 4",
            prefix().with_min_create_revision(4),
            &["k/b", "k/d"],
        ),
        (
            "max_create 3",
            prefix().with_max_create_revision(3),
            &["k/a", "k/c"],
        ),
        (
            "mod window 5..=9",
            prefix()
                .with_min_mod_revision(5)
                .with_max_mod_revision(9)
                .with_keys_only(),
            &["k/b", "k/c", "k/d"],
        ),
        (
            "min_mod 8 limit 2",
            prefix().with_min_mod_revision(8).with_limit(2),
            &["k/a", "k/b"],
        ),
    ];
    for (name, options, expected) in filters {
        let filtered = client.get("k/", Some(options)).await.expect(name);
        assert_eq!(keys_of(&filtered), expected, "{name}");
        assert_eq!(filtered.count(), 4, "{name}: count ignores the filters");
    }

    let serializable = client
        .get("k/a", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable get");
    assert_eq!(keys_of(&serializable), ["k/a"]);
    assert_eq!(serializable.kvs()[0].value(), b"bravo");
    assert_eq!(
        current_revision(&mut client).await,
        head,
        "reads never change the revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_options() {
    let server = Server::start();
    let mut client = server.client().await;

    let created = client
        .put("p", "1", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert!(created.prev_key().is_none(), "no prev_kv for a new key");
    let updated = client
        .put("p", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    let prev = updated.prev_key().expect("prev_kv of an existing key");
    assert_eq!((prev.key(), prev.value()), (&b"p"[..], &b"1"[..]));
    assert_eq!(
        (prev.create_revision(), prev.mod_revision(), prev.version()),
        (2, 2, 1)
    );
    let plain = client.put("p", "3", None).await.expect("put");
    assert!(plain.prev_key().is_none(), "prev_kv only when asked");

    let lease = client
        .lease_grant(600, None)
        .await
        .expect("lease grant")
        .id();
    let other_lease = client
        .lease_grant(600, None)
        .await
        .expect("lease grant")
        .id();
    client
        .put("pl", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let kv = get_one(&mut client, "pl").await.expect("pl");
    assert_eq!((kv.value(), kv.lease()), (&b"v1"[..], lease));

    // ignore_lease: new value, lease kept.
    client
        .put("pl", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put ignore_lease");
    let kv = get_one(&mut client, "pl").await.expect("pl");
    assert_eq!(
        (kv.value(), kv.lease(), kv.version()),
        (&b"v2"[..], lease, 2)
    );

    // ignore_value alone keeps the value and detaches the lease (the request's lease is 0).
    let before = current_revision(&mut client).await;
    let response = client
        .put("pl", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("put ignore_value");
    assert_eq!(
        revision(response.header()),
        before + 1,
        "ignore_value still writes"
    );
    let kv = get_one(&mut client, "pl").await.expect("pl");
    assert_eq!((kv.value(), kv.lease(), kv.version()), (&b"v2"[..], 0, 3));

    // ignore_value with a lease: value kept, new lease attached.
    client
        .put(
            "pl",
            "",
            Some(
                PutOptions::new()
                    .with_ignore_value()
                    .with_lease(other_lease),
            ),
        )
        .await
        .expect("put ignore_value with lease");
    let kv = get_one(&mut client, "pl").await.expect("pl");
    assert_eq!((kv.value(), kv.lease()), (&b"v2"[..], other_lease));

    // Both: value and lease kept, version and mod revision move on.
    let response = client
        .put(
            "pl",
            "",
            Some(
                PutOptions::new()
                    .with_ignore_value()
                    .with_ignore_lease()
                    .with_prev_key(),
            ),
        )
        .await
        .expect("put ignore both");
    let prev = response.prev_key().expect("prev_kv");
    assert_eq!(prev.version(), 4);
    let kv = get_one(&mut client, "pl").await.expect("pl");
    assert_eq!(
        (kv.value(), kv.lease(), kv.version()),
        (&b"v2"[..], other_lease, 5)
    );
    assert_eq!(kv.mod_revision(), revision(response.header()));

    let ttl = client
        .lease_time_to_live(other_lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(
        ttl.keys(),
        [b"pl".to_vec()],
        "the key moved to the other lease"
    );
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert!(ttl.keys().is_empty(), "the first lease lost its key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_range_options() {
    let server = Server::start();
    let mut client = server.client().await;
    for key in ["x/a", "x/b", "x/c", "x/d", "x/e", "y/a", "y/b", "z"] {
        put(&mut client, key, &format!("v-{key}")).await;
    }
    let head = current_revision(&mut client).await;
    assert_eq!(head, 9);

    let single = client
        .delete("x/a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!((single.deleted(), revision(single.header())), (1, 10));
    assert_eq!(key_names(single.prev_kvs()), ["x/a"]);
    assert_eq!(single.prev_kvs()[0].value(), b"v-x/a");
    assert_eq!(single.prev_kvs()[0].mod_revision(), 2);

    let again = client.delete("x/a", None).await.expect("delete again");
    assert_eq!((again.deleted(), revision(again.header())), (0, 10));
    assert!(again.prev_kvs().is_empty());

    let no_prev = client.delete("x/b", None).await.expect("delete");
    assert_eq!(no_prev.deleted(), 1);
    assert!(no_prev.prev_kvs().is_empty(), "prev_kvs only when asked");

    let range = client
        .delete("x/c", Some(DeleteOptions::new().with_range("x/e")))
        .await
        .expect("delete range");
    assert_eq!(
        (range.deleted(), revision(range.header())),
        (2, 12),
        "a range delete is one revision"
    );

    let prefix = client
        .delete(
            "y/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(prefix.deleted(), 2);
    assert_eq!(key_names(prefix.prev_kvs()), ["y/a", "y/b"]);
    let values: Vec<&[u8]> = prefix.prev_kvs().iter().map(KeyValue::value).collect();
    assert_eq!(values, [&b"v-y/a"[..], b"v-y/b"]);

    let from_key = client
        .delete("x/", Some(DeleteOptions::new().with_from_key()))
        .await
        .expect("delete from key");
    assert_eq!(from_key.deleted(), 2, "x/e and z are >= x/");
    let rest = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("all keys");
    assert!(
        rest.kvs().is_empty(),
        "everything was deleted: {:?}",
        keys_of(&rest)
    );
    assert_eq!(revision(rest.header()), 14);

    // Deleted keys stay readable at older revisions.
    let old = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(head)),
        )
        .await
        .expect("historical read");
    assert_eq!(old.count(), 8);
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Version,
    Create,
    Mod,
    Value,
    Lease,
}

fn holds(ordering: Ordering, op: CompareOp) -> bool {
    match op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::NotEqual => ordering != Ordering::Equal,
    }
}

const COMPARE_OPS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::Greater,
    CompareOp::Less,
    CompareOp::NotEqual,
];

/// The Compare and whether etcd's rule says it holds, for the stored `kv` (None = key absent,
/// which compares like a zero KeyValue except that VALUE compares are always false).
fn compare_case(
    key: &str,
    target: Target,
    op: CompareOp,
    delta: i64,
    kv: Option<&KeyValue>,
) -> (Compare, bool) {
    let stored = |get: fn(&KeyValue) -> i64| kv.map_or(0, get);
    let int_case = |actual: i64, make: fn(String, CompareOp, i64) -> Compare| {
        let operand = actual + delta;
        (
            make(key.to_string(), op, operand),
            holds(actual.cmp(&operand), op),
        )
    };
    match target {
        Target::Version => int_case(stored(KeyValue::version), Compare::version),
        Target::Create => int_case(stored(KeyValue::create_revision), Compare::create_revision),
        Target::Mod => int_case(stored(KeyValue::mod_revision), Compare::mod_revision),
        Target::Lease => int_case(stored(KeyValue::lease), Compare::lease),
        Target::Value => {
            // Operands sort before, equal to, and after the stored value "m".
            let operand: &[u8] = match delta {
                -1 => b"l",
                0 => b"m",
                _ => b"mm",
            };
            let expected = kv.is_some_and(|kv| holds(kv.value().cmp(operand), op));
            (Compare::value(key, op, operand), expected)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_every_target_and_result() {
    let server = Server::start();
    let mut client = server.client().await;
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    put(&mut client, "t/a", "first").await;
    put(&mut client, "filler", "x").await;
    client
        .put("t/a", "m", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let present = get_one(&mut client, "t/a").await.expect("t/a");
    assert_eq!(
        (
            present.version(),
            present.create_revision(),
            present.mod_revision()
        ),
        (2, 2, 4)
    );
    let head = current_revision(&mut client).await;

    let mut cases = 0;
    for (key, kv) in [("t/a", Some(&present)), ("t/missing", None)] {
        for target in [
            Target::Version,
            Target::Create,
            Target::Mod,
            Target::Value,
            Target::Lease,
        ] {
            for op in COMPARE_OPS {
                for delta in [-1, 0, 1] {
                    let (compare, expected) = compare_case(key, target, op, delta, kv);
                    let response = client
                        .txn(
                            Txn::new()
                                .when([compare])
                                .and_then([TxnOp::get("t/a", None)])
                                .or_else([TxnOp::get("filler", None)]),
                        )
                        .await
                        .expect("txn");
                    assert_eq!(
                        response.succeeded(),
                        expected,
                        "{key} {target:?} {op:?} (operand offset {delta})"
                    );
                    let responses = response.op_responses();
                    let [TxnOpResponse::Get(get)] = responses.as_slice() else {
                        panic!("one get response expected, got {responses:?}");
                    };
                    let expected_key = if expected { "t/a" } else { "filler" };
                    assert_eq!(keys_of(get), [expected_key], "the taken branch ran");
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 120);

    // Compares are a conjunction.
    let both = client
        .txn(Txn::new().when([
            Compare::version("t/a", CompareOp::Equal, 2),
            Compare::value("t/a", CompareOp::Equal, "m"),
        ]))
        .await
        .expect("txn");
    assert!(both.succeeded());
    let one_false = client
        .txn(Txn::new().when([
            Compare::version("t/a", CompareOp::Equal, 2),
            Compare::value("t/a", CompareOp::Equal, "nope"),
        ]))
        .await
        .expect("txn");
    assert!(!one_false.succeeded());

    // Range compares: every key in the range must satisfy the compare.
    put(&mut client, "r/1", "a").await;
    put(&mut client, "r/2", "b").await;
    put(&mut client, "r/2", "c").await;
    let range_cases = [
        (
            Compare::version("r/", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            Compare::version("r/", CompareOp::Greater, 1).with_prefix(),
            false,
        ),
        (
            Compare::version("r/", CompareOp::Less, 3).with_prefix(),
            true,
        ),
        (
            Compare::version("r/2", CompareOp::Equal, 2).with_range("r/3"),
            true,
        ),
        (
            Compare::value("r/", CompareOp::NotEqual, "z").with_prefix(),
            true,
        ),
        (
            Compare::value("r/", CompareOp::Equal, "a").with_prefix(),
            false,
        ),
        (
            Compare::value("r/1", CompareOp::Equal, "a").with_range("r/2"),
            true,
        ),
        (
            Compare::create_revision("none/", CompareOp::Equal, 0).with_prefix(),
            true,
        ),
        (
            Compare::version("none/", CompareOp::Equal, 0).with_prefix(),
            true,
        ),
        (
            Compare::value("none/", CompareOp::NotEqual, "x").with_prefix(),
            false,
        ),
    ];
    for (index, (compare, expected)) in range_cases.into_iter().enumerate() {
        let response = client.txn(Txn::new().when([compare])).await.expect("txn");
        assert_eq!(response.succeeded(), expected, "range compare case {index}");
    }
    assert_eq!(
        current_revision(&mut client).await,
        head + 3,
        "compares never write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_branches_nested_and_responses() {
    let server = Server::start();
    let mut client = server.client().await;
    put(&mut client, "a", "1").await;
    put(&mut client, "b", "2").await;
    assert_eq!(current_revision(&mut client).await, 3);

    // Success branch: put (with prev_kv), get sees the put, delete with prev_kv.
    let success = client
        .txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::Equal, "1")])
                .and_then([
                    TxnOp::put("a", "10", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("a", None),
                    TxnOp::delete("b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("b", None),
                ])
                .or_else([TxnOp::put("never", "x", None)]),
        )
        .await
        .expect("txn");
    assert!(success.succeeded());
    assert_eq!(revision(success.header()), 4);
    let responses = success.op_responses();
    let [
        TxnOpResponse::Put(put_response),
        TxnOpResponse::Get(get_a),
        TxnOpResponse::Delete(delete_b),
        TxnOpResponse::Get(get_b),
    ] = responses.as_slice()
    else {
        panic!("put, get, delete, get responses expected, got {responses:?}");
    };
    let prev = put_response.prev_key().expect("prev_kv inside a txn");
    assert_eq!(prev.value(), b"1");
    let kv = &get_a.kvs()[0];
    assert_eq!(
        (kv.value(), kv.mod_revision(), kv.version()),
        (&b"10"[..], 4, 2),
        "a get after a put in the same txn sees the put"
    );
    assert_eq!(delete_b.deleted(), 1);
    assert_eq!(delete_b.prev_kvs()[0].value(), b"2");
    assert!(
        get_b.kvs().is_empty(),
        "a get after a delete in the same txn sees the delete"
    );
    assert!(get_one(&mut client, "never").await.is_none());

    // Failure branch.
    let failure = client
        .txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::Equal, "1")])
                .and_then([TxnOp::put("never", "x", None)])
                .or_else([TxnOp::put("c", "from-failure", None), TxnOp::get("c", None)]),
        )
        .await
        .expect("txn");
    assert!(!failure.succeeded());
    assert_eq!(revision(failure.header()), 5);
    let responses = failure.op_responses();
    let [TxnOpResponse::Put(_), TxnOpResponse::Get(get_c)] = responses.as_slice() else {
        panic!("put, get responses expected, got {responses:?}");
    };
    assert_eq!(get_c.kvs()[0].value(), b"from-failure");
    assert!(get_one(&mut client, "never").await.is_none());

    // Nested txns: every compare of the tree is evaluated against the store as it was before the
    // txn (not after the outer txn's earlier writes); all writes share one revision; the two
    // branches of an inner txn may write the same key.
    let inner = |expected: &str| {
        Txn::new()
            .when([Compare::value("n/flag", CompareOp::Equal, expected)])
            .and_then([TxnOp::put("n/inner", "then", None)])
            .or_else([TxnOp::put("n/inner", "else", None)])
    };
    let nested = client
        .txn(Txn::new().and_then([
            TxnOp::put("n/flag", "on", None),
            TxnOp::txn(inner("on")),
            TxnOp::txn(Txn::new().and_then([TxnOp::txn(
                Txn::new().and_then([TxnOp::put("n/deep", "3", None)]),
            )])),
            TxnOp::get("n/", Some(GetOptions::new().with_prefix())),
        ]))
        .await
        .expect("nested txn");
    assert!(nested.succeeded());
    assert_eq!(revision(nested.header()), 6);
    let responses = nested.op_responses();
    let [
        TxnOpResponse::Put(_),
        TxnOpResponse::Txn(first_inner),
        TxnOpResponse::Txn(second_inner),
        TxnOpResponse::Get(listing),
    ] = responses.as_slice()
    else {
        panic!("put, txn, txn, get responses expected, got {responses:?}");
    };
    assert!(
        !first_inner.succeeded(),
        "the inner compare is evaluated before the outer put"
    );
    assert!(matches!(
        first_inner.op_responses().as_slice(),
        [TxnOpResponse::Put(_)]
    ));
    let deeper = second_inner.op_responses();
    let [TxnOpResponse::Txn(deepest)] = deeper.as_slice() else {
        panic!("a txn response inside a txn response expected, got {deeper:?}");
    };
    assert!(deepest.succeeded());
    assert!(matches!(
        deepest.op_responses().as_slice(),
        [TxnOpResponse::Put(_)]
    ));
    assert_eq!(keys_of(listing), ["n/deep", "n/flag", "n/inner"]);
    for kv in listing.kvs() {
        assert_eq!(
            kv.mod_revision(),
            6,
            "all writes of a nested txn share its revision"
        );
    }
    assert_eq!(listing.kvs()[2].value(), b"else");

    let nested_again = client
        .txn(Txn::new().and_then([TxnOp::txn(inner("on"))]))
        .await
        .expect("nested txn");
    let responses = nested_again.op_responses();
    let [TxnOpResponse::Txn(inner_response)] = responses.as_slice() else {
        panic!("one txn response expected, got {responses:?}");
    };
    assert!(inner_response.succeeded(), "now the flag is stored");
    assert_eq!(
        get_one(&mut client, "n/inner")
            .await
            .expect("n/inner")
            .value(),
        b"then"
    );
    assert_eq!(current_revision(&mut client).await, 7);
}

/// A captured etcdctl run that differs from etcd 3.4 after normalisation.
fn compare_capture(
    name: &str,
    output: &std::process::Output,
    reference_ids: &Ids,
    actual_ids: &Ids,
    mismatches: &mut Vec<String>,
) {
    let expected = reference::capture(name);
    let code = output.status.code().unwrap_or(-1);
    if code != expected.exit_code {
        mismatches.push(format!(
            "{name}: exit code {code}, etcd 3.4 exited {}\nstdout:\n{}\nstderr:\n{}",
            expected.exit_code,
            common::stdout_text(output),
            common::without_client_logs(&common::stderr_text(output))
        ));
    }
    if VOLATILE.contains(&name) {
        return;
    }
    let (want_norm, got_norm) = (reference_ids.normalizer(), actual_ids.normalizer());
    for (what, want, got) in [
        ("stdout", &expected.stdout, &output.stdout),
        ("stderr", &expected.stderr, &output.stderr),
    ] {
        let want = reference::comparable(name, &want_norm, want);
        let got = reference::comparable(name, &got_norm, got);
        if want != got {
            mismatches.push(format!(
                "{name} {what}:\n--- etcd 3.4\n{want}\n--- actual\n{got}"
            ));
        }
    }
}

fn json_u64(value: &serde_json::Value, path: &[&str]) -> u64 {
    let mut at = value;
    for part in path {
        at = &at[part];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {value}"))
}

/// The member and cluster ID of `server`, from an etcdctl JSON header.
pub fn member_and_cluster_ids(server: &Server) -> (u64, u64) {
    let json: serde_json::Value =
        serde_json::from_str(&server.etcdctl_ok(&["get", "id-probe", "-w", "json"]))
            .expect("etcdctl -w json prints JSON");
    (
        json_u64(&json, &["header", "member_id"]),
        json_u64(&json, &["header", "cluster_id"]),
    )
}

/// Replays the reference command sequence from its start up to the first watch (the put, get,
/// del and txn captures, including `txn -i` with its prompts and the scripted `txn`) against a
/// fresh member, and compares every capture with etcd 3.4's output. Revisions must match
/// exactly: the sequence is deterministic.
#[test]
fn etcdctl_put_get_del_txn_match_etcd_34() {
    let server = Server::start();
    let reference_ids = Ids::of_reference();
    let (member_id, cluster_id) = member_and_cluster_ids(&server);
    let mut actual_ids = Ids {
        endpoints: vec![server.endpoint()],
        peer_urls: vec![server.peer_url()],
        member_ids: vec![member_id],
        cluster_ids: vec![cluster_id],
        leases: Vec::new(),
    };
    let mut lease_args: Vec<(String, String)> = Vec::new();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for record in reference::records() {
        if record.kind.starts_with("watch") {
            break;
        }
        if record.kind == "http" {
            // The gateway and /version are covered elsewhere; they do not change the store.
            continue;
        }
        assert_eq!(
            record.member,
            Member::Main,
            "{}: only the main member before the watches",
            record.name
        );
        let args: Vec<String> = record
            .args
            .iter()
            .map(|arg| {
                lease_args.iter().fold(arg.clone(), |arg, (from, to)| {
                    arg.replace(from.as_str(), to)
                })
            })
            .collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output =
            server.etcdctl_full(&arg_refs, record.stdin.as_deref(), common::ETCDCTL_TIMEOUT);
        match record.kind.as_str() {
            "run" => assert!(
                output.status.success(),
                "setup command {args:?} failed: {}",
                common::stderr_text(&output)
            ),
            "cap" => {
                if let Some((_, var)) = LEASE_SOURCES.iter().find(|(name, _)| *name == record.name)
                {
                    let placeholder = var.trim_end_matches("_HEX").to_string();
                    let reference_lease = reference_ids
                        .leases
                        .iter()
                        .find(|(_, name)| *name == placeholder)
                        .map(|(id, _)| *id)
                        .expect("run.env names every lease source");
                    let actual_lease = reference::granted_lease(&common::stdout_text(&output))
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: no lease in {:?}",
                                record.name,
                                common::stdout_text(&output)
                            )
                        });
                    lease_args.push((format!("{reference_lease:x}"), format!("{actual_lease:x}")));
                    actual_ids.leases.push((actual_lease, placeholder));
                }
                compare_capture(
                    &record.name,
                    &output,
                    &reference_ids,
                    &actual_ids,
                    &mut mismatches,
                );
                compared += 1;
            }
            other => panic!("unexpected record kind {other} before the watches"),
        }
    }
    assert!(compared > 100, "only {compared} captures compared");
    assert!(
        mismatches.is_empty(),
        "{} of {compared} etcdctl captures differ from etcd 3.4:\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}
