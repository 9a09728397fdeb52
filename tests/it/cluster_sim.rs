//! Deterministic cluster simulation (issue 3, point 7; issue 13, point 7): 3 and 5 members built
//! from the production raft and apply code, driven step by step from a seed under drops, delays,
//! duplicates, partitions and crashes (which lose unsynced raft and applied state), with log
//! truncation and snapshot installs, membership changes (learner added, promoted, a voter
//! removed), and the safety invariants checked after every step.
//!
//! CI runs the fixed seeds below. To replay a failure, or to search more widely:
//!
//! ```text
//! OXETCD_SIM_SEED=<n> cargo test --release --test it cluster_sim::<test name>   # one seed
//! OXETCD_SIM_SEEDS=<count> [OXETCD_SIM_SEED=<base>] cargo test --release --test it cluster_sim::
//! OXETCD_SIM_STEPS=<steps>                                                       # longer runs
//! OXETCD_SIM_TRACE=1                                  # print every step's action and raft state
//! ```
//!
//! The `harness_catches_*` tests plant a fault in the harness's own Ready sink or restart path
//! (never in production code) and require a run to fail; the `*_check_fires` tests feed each
//! invariant check a violation directly. Together they show that every check can fail.

use crate::sim;

use std::time::Instant;

use oxetcd::proto::etcdserverpb::PutRequest;
use oxetcd::proto::oxetcdpb::{InternalRequest, internal_request::Request};
use prost::Message as _;
use raft::eraftpb::Entry;
use sim::check::{self, Acked, History};
use sim::member::{Member, Sabotage};
use sim::{Failure, SimConfig, Summary};

/// Seeds CI runs for each cluster size.
const CI_SEEDS: std::ops::RangeInclusive<u64> = 1..=8;
/// Steps of faults and load per seed (healing and the final checks come after).
const CI_STEPS: u64 = 3000;
/// Where `OXETCD_SIM_SEEDS` starts when no `OXETCD_SIM_SEED` is given (clear of the CI seeds).
const SEARCH_BASE_SEED: u64 = 1_000_000;

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(e) => panic!("{name}={raw:?} is not a number: {e}"),
    }
}

/// The seeds and step count this invocation runs.
fn plan() -> (Vec<u64>, u64) {
    let steps = env_u64("OXETCD_SIM_STEPS").unwrap_or(CI_STEPS);
    let seeds = match (env_u64("OXETCD_SIM_SEED"), env_u64("OXETCD_SIM_SEEDS")) {
        (Some(seed), None) => vec![seed],
        (base, Some(count)) => {
            let base = base.unwrap_or(SEARCH_BASE_SEED);
            (base..base + count).collect()
        }
        (None, None) => CI_SEEDS.collect(),
    };
    (seeds, steps)
}

/// A scratch directory, in memory when the machine has /dev/shm (RocksDB opens and closes a lot).
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("creating a temporary directory")
}

fn run_one(members: usize, seed: u64, steps: u64, sabotage: Sabotage) -> Result<Summary, Failure> {
    let dir = scratch_dir();
    sim::run(
        &SimConfig {
            members,
            seed,
            steps,
            sabotage,
            trace: std::env::var_os("OXETCD_SIM_TRACE").is_some(),
        },
        dir.path(),
    )
}

/// What the CI seeds of one cluster size must have done between them, so that a change that
/// quietly stops the schedule from reaching snapshots, membership changes or lost applied state
/// fails instead of passing vacuously.
fn assert_coverage(test: &str, summaries: &[Summary]) {
    let total = |f: fn(&Summary) -> u64| summaries.iter().map(f).sum::<u64>();
    let covered = [
        ("snapshots sent", total(|s| s.snapshots_sent)),
        (
            "snapshots installed",
            total(|s| s.snapshots_installed + s.snapshots_installed_at_start),
        ),
        ("log truncations", total(|s| s.log_truncations)),
        ("learners added", total(|s| s.learners_added)),
        ("promotions", total(|s| s.promotions)),
        ("removals", total(|s| s.removals)),
        (
            "applied entries lost to crashes",
            total(|s| s.applied_entries_lost),
        ),
    ];
    eprintln!(
        "{test}: coverage over {} seeds: {covered:?}",
        summaries.len()
    );
    for (what, count) in covered {
        assert!(count > 0, "{test}: the CI seeds had no {what}: {covered:?}");
    }
}

/// Runs `seeds` spread over the machine's cores; panics with the replay command on a failure.
fn run_seeds(test: &str, members: usize) {
    let (seeds, steps) = plan();
    let ci_plan = std::env::var_os("OXETCD_SIM_SEED").is_none()
        && std::env::var_os("OXETCD_SIM_SEEDS").is_none()
        && std::env::var_os("OXETCD_SIM_STEPS").is_none();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len())
        .max(1);
    let started = Instant::now();
    let chunks: Vec<Vec<u64>> = (0..workers)
        .map(|w| seeds.iter().copied().skip(w).step_by(workers).collect())
        .collect();
    let (mut failures, summaries): (Vec<Failure>, Vec<Summary>) = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    let mut summaries = Vec::new();
                    for seed in chunk {
                        let t = Instant::now();
                        match run_one(members, seed, steps, Sabotage::None) {
                            Ok(summary) => {
                                eprintln!(
                                    "{test}: seed {seed} ok in {:.1}s: {summary}",
                                    t.elapsed().as_secs_f64()
                                );
                                summaries.push(summary);
                            }
                            Err(failure) => {
                                eprintln!("{test}: FAILED {failure}");
                                failures.push(failure);
                            }
                        }
                    }
                    (failures, summaries)
                })
            })
            .collect();
        let mut failures = Vec::new();
        let mut summaries = Vec::new();
        for h in handles {
            let (f, s) = h
                .join()
                .expect("a simulation worker panicked outside a run");
            failures.extend(f);
            summaries.extend(s);
        }
        (failures, summaries)
    });
    eprintln!(
        "{test}: {} seeds × {steps} steps in {:.1}s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    failures.sort_by_key(|f| f.seed);
    if let Some(first) = failures.first() {
        panic!(
            "{members}-member simulation failed ({} of {} seeds); first: {first}\n\
             replay: OXETCD_SIM_SEED={} OXETCD_SIM_STEPS={steps} cargo test --release --test it \
             cluster_sim::{test}",
            failures.len(),
            seeds.len(),
            first.seed
        );
    }
    if ci_plan {
        assert_coverage(test, &summaries);
    }
}

#[test]
fn three_members() {
    run_seeds("three_members", 3);
}

#[test]
fn five_members() {
    run_seeds("five_members", 5);
}

#[test]
fn a_seed_replays_exactly() {
    let once = run_one(3, 42, 800, Sabotage::None).unwrap();
    let again = run_one(3, 42, 800, Sabotage::None).unwrap();
    assert_eq!(once, again);
    let other = run_one(3, 43, 800, Sabotage::None).unwrap();
    assert_ne!(once.committed_digest, other.committed_digest);
}

/// Runs seeds with `sabotage` until one fails; returns that failure.
fn first_failure(sabotage: Sabotage, members: usize, steps: u64, seeds_max: u64) -> Failure {
    for seed in 1..=seeds_max {
        if let Err(failure) = run_one(members, seed, steps, sabotage) {
            eprintln!("{sabotage:?} caught: {failure}");
            return failure;
        }
    }
    panic!("{sabotage:?} went unnoticed over {seeds_max} seeds of {steps} steps");
}

#[test]
fn harness_catches_lost_commit_index_writes() {
    let failure = first_failure(Sabotage::SkipUnsyncedWrites, 3, 1500, 8);
    assert!(
        failure.what.contains("ahead of its persisted commit index"),
        "unexpected failure: {failure}"
    );
}

#[test]
fn harness_catches_divergent_apply() {
    let failure = first_failure(Sabotage::SkipApplyOnMember1, 3, 1500, 8);
    assert!(
        failure.what.contains("state machine safety") || failure.what.contains("acknowledged put"),
        "unexpected failure: {failure}"
    );
}

#[test]
fn harness_catches_wiped_members() {
    // Raft itself refuses a follower that lost entries it acknowledged; the harness must turn
    // that panic into a replayable failure.
    let failure = first_failure(Sabotage::WipeOnRestart, 3, 1500, 8);
    assert!(
        failure.what.contains("panic"),
        "unexpected failure: {failure}"
    );
}

// The checks on their own, fed violations the production code (hopefully) never produces.

fn put_entry(index: u64, key: &str, value: &str) -> Entry {
    let data = InternalRequest {
        id: index,
        caller: None,
        quota_bytes: 0,
        request: Some(Request::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })),
    }
    .encode_to_vec();
    Entry {
        index,
        term: 1,
        data,
        ..Entry::default()
    }
}

/// A member running on its own (nothing drives its raft), whose applier the test feeds.
fn standalone_member(id: u64, dir: &std::path::Path) -> Member {
    let mut m = Member::new(id, dir.join(format!("member-{id}")), &[id]);
    m.start(Sabotage::None).unwrap();
    m
}

#[test]
fn election_safety_check_fires() {
    let mut h = History::default();
    h.record_leader(3, 1).unwrap();
    h.record_leader(3, 1).unwrap();
    h.record_leader(4, 2).unwrap();
    let err = h.record_leader(3, 2).unwrap_err();
    assert!(err.contains("election safety"), "{err}");
}

#[test]
fn log_matching_checks_fire() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Member::new(1, dir.path().join("a"), &[1]);
    let mut b = Member::new(2, dir.path().join("b"), &[2]);
    a.mirror = vec![(1, 10), (1, 11), (2, 12)];
    b.mirror = vec![(1, 10), (1, 11), (2, 12), (2, 13)];
    check::check_log_matching(&[a, b]).unwrap();
    let mut a = Member::new(1, dir.path().join("a"), &[1]);
    let mut b = Member::new(2, dir.path().join("b"), &[2]);
    a.mirror = vec![(1, 10), (1, 99), (2, 12)];
    b.mirror = vec![(1, 10), (1, 11), (2, 12), (3, 13)];
    let err = check::check_log_matching(&[a, b]).unwrap_err();
    assert!(err.contains("differ at index 2"), "{err}");

    let mut h = History::default();
    h.check_entry(1, 5, 2, 0xaa, 1).unwrap();
    h.check_entry(2, 5, 2, 0xaa, 1).unwrap();
    let err = h.check_entry(3, 5, 2, 0xbb, 1).unwrap_err();
    assert!(err.contains("log matching"), "{err}");
    let err = h.check_entry(3, 5, 2, 0xaa, 2).unwrap_err();
    assert!(err.contains("log matching"), "{err}");
}

#[test]
fn committed_entry_check_fires() {
    // Index 1 is the bootstrap snapshot; logs start at 2.
    let mut h = History::default();
    h.check_committed(1, 2, (1, 0xaa)).unwrap();
    h.check_committed(2, 2, (1, 0xaa)).unwrap();
    let err = h.check_committed(2, 2, (2, 0xbb)).unwrap_err();
    assert!(err.contains("committed entry changed"), "{err}");
    assert!(
        h.check_committed(1, 4, (1, 0xcc)).is_err(),
        "a gap in the record"
    );
}

#[test]
fn state_machine_check_fires() {
    let dir = scratch_dir();
    let mut h = History::default();
    let mut a = standalone_member(1, dir.path());
    let mut b = standalone_member(2, dir.path());
    for (m, value) in [(&mut a, "x"), (&mut b, "x")] {
        m.live
            .as_mut()
            .unwrap()
            .applier
            .apply_entries(vec![put_entry(1, "k", value)]);
        check::check_state(m, &mut h).unwrap();
    }
    for (m, value) in [(&mut a, "y"), (&mut b, "z")] {
        m.live
            .as_mut()
            .unwrap()
            .applier
            .apply_entries(vec![put_entry(2, "k", value)]);
    }
    check::check_state(&mut a, &mut h).unwrap();
    let err = check::check_state(&mut b, &mut h).unwrap_err();
    assert!(err.contains("state machine safety"), "{err}");
}

#[test]
fn acknowledged_put_check_fires() {
    let dir = scratch_dir();
    let mut h = History::default();
    let mut members = vec![standalone_member(1, dir.path())];
    let acked = Acked {
        request_id: 7,
        key: b"k".to_vec(),
        value: b"acknowledged".to_vec(),
    };
    // The first put creates revision 2.
    h.record_ack(2, acked.clone(), &mut members).unwrap();
    let err = h
        .record_ack(
            2,
            Acked {
                request_id: 8,
                ..acked.clone()
            },
            &mut members,
        )
        .unwrap_err();
    assert!(err.contains("two acknowledged puts"), "{err}");
    let m = &mut members[0];
    check::check_acked(m, &h).unwrap();
    m.live
        .as_mut()
        .unwrap()
        .applier
        .apply_entries(vec![put_entry(1, "k", "something else")]);
    let err = check::check_acked(m, &h).unwrap_err();
    assert!(err.contains("acknowledged put lost"), "{err}");
}
