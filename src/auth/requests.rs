//! What each etcd request needs of its caller's permissions, as etcd checks it: reads need READ
//! on their range, writes WRITE (and READ too when they return the previous key-values), a txn
//! needs what every compare and every operation of both branches needs (nested txns included),
//! and a put with a lease or a lease revoke needs WRITE on every key attached to the lease (the
//! caller passes those in).

use super::perms::Access;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, request_op,
};

/// One key range in Range's encoding and the access it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub access: Access,
}

impl Need {
    fn new(key: &[u8], range_end: &[u8], access: Access) -> Need {
        Need {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            access,
        }
    }
}

pub fn range(r: &RangeRequest) -> Vec<Need> {
    vec![Need::new(&r.key, &r.range_end, Access::Read)]
}

/// A put; `lease_keys` are the keys attached to the lease it names (empty without one).
pub fn put(r: &PutRequest, lease_keys: &[Vec<u8>]) -> Vec<Need> {
    let mut needs = vec![Need::new(&r.key, &[], Access::Write)];
    if r.prev_kv {
        needs.push(Need::new(&r.key, &[], Access::Read));
    }
    needs.extend(lease_keys.iter().map(|k| Need::new(k, &[], Access::Write)));
    needs
}

pub fn delete_range(r: &DeleteRangeRequest) -> Vec<Need> {
    let mut needs = vec![Need::new(&r.key, &r.range_end, Access::Write)];
    if r.prev_kv {
        needs.push(Need::new(&r.key, &r.range_end, Access::Read));
    }
    needs
}

/// A txn: its compares, and the operations of both branches (the branch taken is not known
/// before it runs). `lease_keys` answers the attached keys of a lease a put names.
pub fn txn(r: &TxnRequest, lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>) -> Vec<Need> {
    let mut needs: Vec<Need> = r
        .compare
        .iter()
        .map(|c| Need::new(&c.key, &c.range_end, Access::Read))
        .collect();
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => needs.extend(range(r)),
            Some(request_op::Request::RequestPut(p)) => {
                let keys = if p.lease != 0 {
                    lease_keys(p.lease)
                } else {
                    Vec::new()
                };
                needs.extend(put(p, &keys));
            }
            Some(request_op::Request::RequestDeleteRange(d)) => needs.extend(delete_range(d)),
            Some(request_op::Request::RequestTxn(t)) => needs.extend(txn(t, lease_keys)),
            None => {}
        }
    }
    needs
}

/// Revoking a lease deletes its keys: WRITE on each.
pub fn lease_revoke(lease_keys: &[Vec<u8>]) -> Vec<Need> {
    lease_keys
        .iter()
        .map(|k| Need::new(k, &[], Access::Write))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{Compare, RequestOp};

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    #[test]
    fn a_txn_needs_its_compares_and_both_branches_nested_included() {
        let inner = TxnRequest {
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: b"e".to_vec(),
                    ..Default::default()
                },
            ))],
            ..Default::default()
        };
        let t = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![op(request_op::Request::RequestPut(PutRequest {
                key: b"p".to_vec(),
                prev_kv: true,
                lease: 7,
                ..Default::default()
            }))],
            failure: vec![
                op(request_op::Request::RequestRange(RangeRequest {
                    key: b"r".to_vec(),
                    ..Default::default()
                })),
                op(request_op::Request::RequestTxn(inner)),
            ],
        };
        let needs = txn(&t, &|lease| {
            assert_eq!(lease, 7);
            vec![b"leased".to_vec()]
        });
        let got: Vec<(&[u8], &[u8], Access)> = needs
            .iter()
            .map(|n| (n.key.as_slice(), n.range_end.as_slice(), n.access))
            .collect();
        let want: Vec<(&[u8], &[u8], Access)> = vec![
            (b"c", b"", Access::Read),
            (b"p", b"", Access::Write),
            (b"p", b"", Access::Read),
            (b"leased", b"", Access::Write),
            (b"r", b"", Access::Read),
            (b"d", b"e", Access::Write),
        ];
        assert_eq!(got, want);
    }
}
