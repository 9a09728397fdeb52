//! Linearizability checking for the black-box tests: a [`History`] of single-key operations (put,
//! linearizable get, delete, compare-and-set txn) recorded by concurrent clients, and a
//! Wing–Gong–Lowe style search, one key at a time, for an order of the operations that a single
//! register could have produced while respecting real time.
//!
//! Time is a logical clock shared by the recording clients: a tick is taken just before a request
//! is sent (invoke) and just after its answer arrives (complete), so "A completed before B was
//! invoked" is exactly `a.complete < b.invoke`. Outcomes:
//! - [`Outcome::Ok`]: answered; the result must match the register at the operation's point.
//! - [`Outcome::Failed`]: surely did not take effect (refused before it could reach a server): the
//!   operation is left out.
//! - [`Outcome::Indeterminate`]: timed out or the connection broke: it may take effect at any point
//!   after its invocation, or never, so it never completes. A read with this outcome constrains
//!   nothing and is left out.
//!
//! The search (Lowe, "Testing for linearizability", 2017): from the set of operations linearized
//! so far and the register's value, any pending operation invoked before the earliest completion
//! of all determinate pending operations may go next if the register agrees with its result.
//! Visited (linearized set as a bitset, value) pairs are memoized, so each is expanded once. A key's
//! history is accepted once every determinate operation is placed: indeterminate ones left over are
//! placed after everything, which is the same as never taking effect.
//!
//! Keeping indeterminate writes open forever would make the search try every subset of them at
//! every point. Two reductions keep it small and are exact: an indeterminate put whose value no read
//! returned and no compare-and-set compared against can only be seen as "some value nobody reads",
//! so all of them are one interchangeable put; indeterminate deletes are interchangeable too. For
//! interchangeable operations only the earliest-invoked one still pending is a candidate (any
//! order using a later one can use the earlier one in its place), so k of them add k + 1 choices,
//! not 2^k.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a client asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Put(String),
    /// A linearizable range of the one key.
    Get,
    Delete,
    /// `txn if value(key) == expect then put(key, new)`.
    Cas {
        expect: String,
        new: String,
    },
}

/// The answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    Put,
    Get(Option<String>),
    /// Keys deleted (0 or 1).
    Delete(i64),
    /// Whether the comparison held (and the put was done).
    Cas(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok { complete: u64, ret: Ret },
    Failed,
    Indeterminate,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub invoke: u64,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Put(value) => format!("put {value}"),
            Call::Get => "get".to_string(),
            Call::Delete => "delete".to_string(),
            Call::Cas { expect, new } => format!("cas {expect} -> {new}"),
        };
        let outcome = match &self.outcome {
            Outcome::Ok { complete, ret } => {
                let ret = match ret {
                    Ret::Put => "ok".to_string(),
                    Ret::Get(Some(value)) => value.clone(),
                    Ret::Get(None) => "absent".to_string(),
                    Ret::Delete(deleted) => format!("deleted {deleted}"),
                    Ret::Cas(succeeded) => format!("succeeded {succeeded}"),
                };
                format!("[{}, {complete}] -> {ret}", self.invoke)
            }
            Outcome::Failed => format!("[{}, failed]", self.invoke),
            Outcome::Indeterminate => format!("[{}, indeterminate]", self.invoke),
        };
        write!(f, "client {} {} {call} {outcome}", self.client, self.key)
    }
}

/// A history shared by concurrent recording clients.
#[derive(Debug, Default)]
pub struct History {
    clock: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// The next instant of the logical clock: take one before sending and one after the answer.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().expect("history lock").push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }
}

/// What checking one key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    pub key: String,
    /// Operations the search placed or left open (failed ones and unanswered reads excluded).
    pub checked: usize,
    pub indeterminate: usize,
    /// (linearized set, value) pairs the search expanded.
    pub states: usize,
}

/// Search bound per key; beyond it the key is reported as undecided (a failure: the test must
/// then record fewer or less concurrent operations).
pub const STATES_MAX: usize = 2_000_000;

/// Checks every key of `ops` separately; the error describes the first key that is not
/// linearizable, with the operations around the point where every order got stuck.
pub fn check(ops: &[Op]) -> Result<Vec<KeyReport>, String> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops))
        .collect()
}

/// Operations of the deepest order shown in a violation.
const PATH_SHOWN: usize = 8;

/// The register's value: absent, an interned value, or [`UNSEEN`].
type Value = Option<u32>;
/// The value of an indeterminate put that nothing observed.
const UNSEEN: u32 = u32::MAX;
/// Completion instant of an operation that never completes.
const OPEN: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
enum Effect {
    Put(u32),
    Get,
    Delete,
    Cas { expect: u32, new: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    Put,
    Get(Value),
    Delete(i64),
    Cas(bool),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index in the key's recorded operations, for messages.
    source: usize,
    invoke: u64,
    complete: u64,
    effect: Effect,
    expect: Expect,
    /// Interchangeable indeterminate operations: 0 = unseen puts, 1 = deletes.
    group: Option<usize>,
}

impl Entry {
    fn determinate(&self) -> bool {
        self.complete != OPEN
    }

    /// The register after this operation from `value`, or `None` if its result disagrees.
    fn step(&self, value: Value) -> Option<Value> {
        match (self.effect, self.expect) {
            (Effect::Put(new), Expect::Any | Expect::Put) => Some(Some(new)),
            (Effect::Get, Expect::Get(read)) => (read == value).then_some(value),
            (Effect::Delete, Expect::Any) => Some(None),
            (Effect::Delete, Expect::Delete(deleted)) => {
                (deleted == i64::from(value.is_some())).then_some(None)
            }
            (Effect::Cas { expect, new }, expected) => {
                let holds = value == Some(expect);
                match expected {
                    Expect::Any => {}
                    Expect::Cas(succeeded) if succeeded == holds => {}
                    _ => return None,
                }
                Some(if holds { Some(new) } else { value })
            }
            _ => None,
        }
    }
}

struct Frame {
    linearized: Vec<u64>,
    value: Value,
    /// Determinate operations in `linearized`.
    placed: usize,
    candidates: Vec<usize>,
    next: usize,
}

fn check_key(key: &str, ops: &[&Op]) -> Result<KeyReport, String> {
    let mut observed: HashSet<&str> = HashSet::new();
    for op in ops {
        if let Outcome::Ok {
            ret: Ret::Get(Some(value)),
            ..
        } = &op.outcome
        {
            observed.insert(value);
        }
        if let Call::Cas { expect, .. } = &op.call {
            observed.insert(expect);
        }
    }
    let mut interned: HashMap<&str, u32> = HashMap::new();
    let mut entries = Vec::new();
    for (source, op) in ops.iter().enumerate() {
        let (complete, expect) = match &op.outcome {
            Outcome::Failed => continue,
            Outcome::Indeterminate if op.call == Call::Get => continue,
            Outcome::Indeterminate => (OPEN, Expect::Any),
            Outcome::Ok { complete, ret } => {
                assert!(
                    *complete > op.invoke,
                    "{op}: completes after its invocation"
                );
                let expect = match (&op.call, ret) {
                    (Call::Put(_), Ret::Put) => Expect::Put,
                    (Call::Get, Ret::Get(read)) => {
                        Expect::Get(read.as_deref().map(|value| intern(&mut interned, value)))
                    }
                    (Call::Delete, Ret::Delete(deleted)) => Expect::Delete(*deleted),
                    (Call::Cas { .. }, Ret::Cas(succeeded)) => Expect::Cas(*succeeded),
                    _ => panic!("{op}: the result does not fit the call"),
                };
                (*complete, expect)
            }
        };
        let open = complete == OPEN;
        let (effect, group) = match &op.call {
            Call::Put(value) if open && !observed.contains(value.as_str()) => {
                (Effect::Put(UNSEEN), Some(0))
            }
            Call::Put(value) => (Effect::Put(intern(&mut interned, value)), None),
            Call::Get => (Effect::Get, None),
            Call::Delete => (Effect::Delete, open.then_some(1)),
            Call::Cas { expect, new } => (
                Effect::Cas {
                    expect: intern(&mut interned, expect),
                    new: intern(&mut interned, new),
                },
                None,
            ),
        };
        entries.push(Entry {
            source,
            invoke: op.invoke,
            complete,
            effect,
            expect,
            group,
        });
    }
    entries.sort_by_key(|entry| entry.invoke);
    let determinate = entries.iter().filter(|entry| entry.determinate()).count();
    let report = KeyReport {
        key: key.to_string(),
        checked: entries.len(),
        indeterminate: entries.len() - determinate,
        states: 0,
    };
    search(&entries, determinate, report).map_err(|stuck| {
        let Stuck {
            placed,
            value,
            path,
            pending,
            reason,
        } = stuck;
        let value = match value {
            None => "absent".to_string(),
            Some(UNSEEN) => "a value no read saw".to_string(),
            Some(id) => interned
                .iter()
                .find(|(_, other)| **other == id)
                .map_or("?".to_string(), |(value, _)| value.to_string()),
        };
        let mut text = format!(
            "key {key} is not linearizable ({reason}): at best {placed} of {determinate} answered \
             operations could be ordered, leaving the value {value}; that order ends with:"
        );
        for &index in path.iter().skip(path.len().saturating_sub(PATH_SHOWN)) {
            text.push_str(&format!("\n  {}", ops[entries[index].source]));
        }
        text.push_str("\nand none of the operations that could go next fits:");
        for index in pending {
            text.push_str(&format!("\n  {}", ops[entries[index].source]));
        }
        text
    })
}

/// Where the deepest partial order got stuck, for the message.
struct Stuck {
    placed: usize,
    value: Value,
    /// The order up to that point (entries), and the entries that could have gone next.
    path: Vec<usize>,
    pending: Vec<usize>,
    reason: &'static str,
}

fn search(
    entries: &[Entry],
    determinate: usize,
    mut report: KeyReport,
) -> Result<KeyReport, Stuck> {
    let words = entries.len().div_ceil(64);
    let root = Frame {
        linearized: vec![0; words],
        value: None,
        placed: 0,
        candidates: Vec::new(),
        next: 0,
    };
    let mut deepest = Stuck {
        placed: 0,
        value: None,
        path: Vec::new(),
        pending: Vec::new(),
        reason: "every order fails",
    };
    let mut stack = vec![with_candidates(entries, root)];
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    while let Some(top) = stack.last() {
        if top.placed == determinate {
            report.states = seen.len();
            return Ok(report);
        }
        if top.next == 0 && (top.placed > deepest.placed || stack.len() == 1) {
            deepest.placed = top.placed;
            deepest.value = top.value;
            deepest.pending = top.candidates.clone();
            deepest.path = stack[..stack.len() - 1]
                .iter()
                .map(|frame| frame.candidates[frame.next - 1])
                .collect();
        }
        let frame = stack
            .last_mut()
            .expect("the loop checked the stack is not empty");
        let Some(&index) = frame.candidates.get(frame.next) else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        let entry = &entries[index];
        let Some(value) = entry.step(frame.value) else {
            continue;
        };
        let mut linearized = frame.linearized.clone();
        linearized[index / 64] |= 1 << (index % 64);
        let placed = frame.placed + usize::from(entry.determinate());
        if !seen.insert((linearized.clone(), value)) {
            continue;
        }
        if seen.len() > STATES_MAX {
            deepest.reason = "undecided: the search bound was reached";
            return Err(deepest);
        }
        let child = Frame {
            linearized,
            value,
            placed,
            candidates: Vec::new(),
            next: 0,
        };
        stack.push(with_candidates(entries, child));
    }
    Err(deepest)
}

/// Fills in the operations that may be linearized next from `frame`: pending, invoked before the
/// earliest completion among pending determinate operations, and for interchangeable ones only
/// the earliest pending of their group.
fn with_candidates(entries: &[Entry], mut frame: Frame) -> Frame {
    let pending = |index: usize| frame.linearized[index / 64] & (1 << (index % 64)) == 0;
    let horizon = (0..entries.len())
        .filter(|&index| pending(index))
        .map(|index| entries[index].complete)
        .min()
        .unwrap_or(OPEN);
    let mut groups_seen = [false; 2];
    let mut candidates = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.invoke > horizon {
            break;
        }
        if !pending(index) {
            continue;
        }
        if let Some(group) = entry.group {
            if groups_seen[group] {
                continue;
            }
            groups_seen[group] = true;
        }
        candidates.push(index);
    }
    frame.candidates = candidates;
    frame
}

/// The small number standing for `value` on one key.
fn intern<'a>(interned: &mut HashMap<&'a str, u32>, value: &'a str) -> u32 {
    let next = u32::try_from(interned.len()).expect("fewer than 2^32 values per key");
    *interned.entry(value).or_insert(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history on key `k` built by hand: `(client, call, invoke, outcome)`.
    fn history(ops: &[(usize, Call, u64, Outcome)]) -> Vec<Op> {
        ops.iter()
            .map(|(client, call, invoke, outcome)| Op {
                client: *client,
                key: "k".to_string(),
                call: call.clone(),
                invoke: *invoke,
                outcome: outcome.clone(),
            })
            .collect()
    }

    fn put(value: &str) -> Call {
        Call::Put(value.to_string())
    }

    fn cas(expect: &str, new: &str) -> Call {
        Call::Cas {
            expect: expect.to_string(),
            new: new.to_string(),
        }
    }

    fn ok(complete: u64, ret: Ret) -> Outcome {
        Outcome::Ok { complete, ret }
    }

    fn read(complete: u64, value: Option<&str>) -> Outcome {
        ok(complete, Ret::Get(value.map(str::to_string)))
    }

    #[test]
    fn concurrent_history_is_accepted() {
        // Reads overlapping a put may see either value; a later read sees the newer one only
        // once the put is placed; CAS, delete and a final read follow.
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, put("b"), 2, ok(9, Ret::Put)),
            (2, Call::Get, 3, read(4, Some("a"))),
            (3, Call::Get, 5, read(6, Some("b"))),
            (2, Call::Get, 7, read(8, Some("b"))),
            (0, cas("a", "x"), 10, ok(13, Ret::Cas(false))),
            (3, cas("b", "c"), 11, ok(12, Ret::Cas(true))),
            (1, Call::Delete, 14, ok(16, Ret::Delete(1))),
            (2, Call::Get, 15, read(17, Some("c"))),
            (0, Call::Get, 18, read(19, None)),
            (3, Call::Delete, 20, ok(21, Ret::Delete(0))),
        ]);
        let reports = check(&ops).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].checked, ops.len());
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (0, put("b"), 2, ok(3, Ret::Put)),
            (1, Call::Get, 4, read(5, Some("a"))),
        ]);
        let err = check(&ops).unwrap_err();
        assert!(err.contains("key k is not linearizable"), "{err}");
        assert!(err.contains("at best 2 of 3 answered operations"), "{err}");
        assert!(
            err.contains(
                "ends with:\n  client 0 k put a [0, 1] -> ok\n  client 0 k put b [2, 3] -> ok\n"
            ),
            "{err}"
        );
        assert!(err.contains("fits:\n  client 1 k get [4, 5] -> a"), "{err}");
    }

    #[test]
    fn indeterminate_write_that_shows_up_later_is_accepted() {
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, put("b"), 2, Outcome::Indeterminate),
            (2, Call::Get, 3, read(4, Some("a"))),
            (2, Call::Get, 10, read(11, Some("b"))),
            (0, Call::Get, 12, read(13, Some("b"))),
        ]);
        check(&ops).unwrap();
        // ... but not before it was sent.
        let early = history(&[
            (2, Call::Get, 0, read(1, Some("b"))),
            (1, put("b"), 2, Outcome::Indeterminate),
        ]);
        check(&early).unwrap_err();
    }

    #[test]
    fn unseen_indeterminate_write_explains_a_delete() {
        // Nobody read "x", but a delete found a key that only the timed-out put can have made.
        let ops = history(&[
            (0, put("x"), 0, Outcome::Indeterminate),
            (1, Call::Delete, 5, ok(6, Ret::Delete(1))),
            (1, Call::Get, 7, read(8, None)),
        ]);
        check(&ops).unwrap();
        // One put cannot be deleted twice.
        let twice = history(&[
            (0, put("x"), 0, Outcome::Indeterminate),
            (1, Call::Delete, 5, ok(6, Ret::Delete(1))),
            (1, Call::Delete, 7, ok(8, Ret::Delete(1))),
        ]);
        check(&twice).unwrap_err();
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        // An acknowledged CAS is gone on a later read.
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, cas("a", "b"), 2, ok(3, Ret::Cas(true))),
            (2, Call::Get, 4, read(5, Some("b"))),
            (2, Call::Get, 10, read(11, Some("a"))),
        ]);
        let err = check(&ops).unwrap_err();
        assert!(err.contains("3 of 4 answered operations"), "{err}");
        // A put acknowledged, then read as absent with no delete anywhere.
        let absent = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, Call::Get, 2, read(3, None)),
        ]);
        check(&absent).unwrap_err();
    }

    #[test]
    fn failed_operation_never_takes_effect() {
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, Call::Delete, 2, Outcome::Failed),
            (2, Call::Get, 3, read(4, None)),
        ]);
        check(&ops).unwrap_err();
        // Indeterminate, the same delete explains the read.
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, Call::Delete, 2, Outcome::Indeterminate),
            (2, Call::Get, 3, read(4, None)),
        ]);
        check(&ops).unwrap();
    }

    #[test]
    fn wrong_cas_result_is_rejected() {
        let ops = history(&[
            (0, put("a"), 0, ok(1, Ret::Put)),
            (1, cas("a", "b"), 2, ok(3, Ret::Cas(false))),
        ]);
        check(&ops).unwrap_err();
    }

    #[test]
    fn many_open_writes_stay_cheap() {
        // 300 timed-out puts nobody reads and 300 timed-out deletes, interleaved with answered
        // puts and reads: a few states per operation, not 2^600.
        let mut ops = Vec::new();
        let mut clock = 0;
        for round in 0..300 {
            let value = format!("v{round}");
            ops.push((
                1,
                put(&format!("lost{round}")),
                clock,
                Outcome::Indeterminate,
            ));
            ops.push((2, Call::Delete, clock + 1, Outcome::Indeterminate));
            ops.push((0, put(&value), clock + 2, ok(clock + 3, Ret::Put)));
            ops.push((3, Call::Get, clock + 4, read(clock + 5, Some(&value))));
            clock += 6;
        }
        let reports = check(&history(&ops)).unwrap();
        assert!(reports[0].states < 20 * ops.len(), "{reports:?}");
        assert_eq!(reports[0].indeterminate, 600);
    }
}
