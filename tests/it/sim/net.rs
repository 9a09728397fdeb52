//! The simulated network between members: every message raft sends is queued with a delivery
//! tick, and may be dropped, duplicated, reordered (delivery order among due messages is random)
//! or cut by a partition that is in force when it would arrive. A snapshot message carries its
//! file's bytes, as the peer transport streams the file after the message.

use std::sync::Arc;

use raft::eraftpb::Message;

use super::rng::Rng;

/// Messages in flight before the network starts dropping new ones (a full link loses packets).
const IN_FLIGHT_MAX: usize = 20_000;

/// How lossy and slow the network currently is.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// A message is deliverable 0..=delay_ticks_max ticks after it was sent.
    pub delay_ticks_max: u64,
}

impl Weather {
    pub const CALM: Weather = Weather {
        drop_per_mille: 0,
        duplicate_per_mille: 0,
        delay_ticks_max: 1,
    };

    pub fn random(rng: &mut Rng) -> Weather {
        Weather {
            drop_per_mille: rng.pick(&[0, 0, 10, 50, 200, 500]),
            duplicate_per_mille: rng.pick(&[0, 0, 10, 50, 200]),
            delay_ticks_max: rng.pick(&[0, 1, 1, 2, 5, 12]),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut: u64,
}

/// A raft message on the wire, with the snapshot file it names if it is a `MsgSnapshot`.
#[derive(Clone)]
pub struct Packet {
    pub msg: Message,
    pub file: Option<Arc<Vec<u8>>>,
}

struct InFlight {
    deliver_at_tick: u64,
    packet: Packet,
}

pub struct Network {
    in_flight: Vec<InFlight>,
    /// Partition group of member `id` at `groups[id - 1]`; only members of one group can talk.
    groups: Vec<u8>,
    pub weather: Weather,
    pub stats: NetStats,
}

/// What a delivery round took off the network.
pub struct Due {
    /// To be stepped into their targets, in this order.
    pub deliver: Vec<Packet>,
    /// Lost to a partition: the sender's transport would notice and report the peer unreachable.
    pub cut: Vec<Packet>,
}

impl Network {
    pub fn new(members: usize) -> Network {
        Network {
            in_flight: Vec::new(),
            groups: vec![0; members],
            weather: Weather::CALM,
            stats: NetStats::default(),
        }
    }

    /// Queues `packets`; returns the snapshot messages among those dropped (their sender's
    /// transport sees the stream fail and reports it to raft).
    pub fn send(&mut self, rng: &mut Rng, now_tick: u64, packets: Vec<Packet>) -> Vec<Message> {
        let mut failed_snapshots = Vec::new();
        for packet in packets {
            self.stats.sent += 1;
            if rng.chance(self.weather.drop_per_mille) || self.in_flight.len() >= IN_FLIGHT_MAX {
                self.stats.dropped += 1;
                if packet.file.is_some() {
                    failed_snapshots.push(packet.msg);
                }
                continue;
            }
            if rng.chance(self.weather.duplicate_per_mille) {
                self.stats.duplicated += 1;
                let deliver_at_tick = now_tick + rng.below(self.weather.delay_ticks_max + 1);
                self.in_flight.push(InFlight {
                    deliver_at_tick,
                    packet: packet.clone(),
                });
            }
            let deliver_at_tick = now_tick + rng.below(self.weather.delay_ticks_max + 1);
            self.in_flight.push(InFlight {
                deliver_at_tick,
                packet,
            });
        }
        failed_snapshots
    }

    /// Takes up to `max` of the messages due at `now_tick`, in random order.
    pub fn take_due(&mut self, rng: &mut Rng, now_tick: u64, max: usize) -> Due {
        let mut due: Vec<usize> = (0..self.in_flight.len())
            .filter(|&i| self.in_flight[i].deliver_at_tick <= now_tick)
            .collect();
        rng.shuffle(&mut due);
        due.truncate(max);
        // Remove from the highest position down so earlier positions stay valid.
        let mut order: Vec<(usize, usize)> = due.iter().copied().enumerate().collect();
        order.sort_by_key(|&(_, pos)| std::cmp::Reverse(pos));
        let mut taken: Vec<Option<Packet>> = vec![None; due.len()];
        for (rank, pos) in order {
            taken[rank] = Some(self.in_flight.swap_remove(pos).packet);
        }
        let mut out = Due {
            deliver: Vec::new(),
            cut: Vec::new(),
        };
        for packet in taken.into_iter().flatten() {
            if self.connected(packet.msg.from, packet.msg.to) {
                self.stats.delivered += 1;
                out.deliver.push(packet);
            } else {
                self.stats.cut += 1;
                out.cut.push(packet);
            }
        }
        out
    }

    pub fn due_count(&self, now_tick: u64) -> usize {
        self.in_flight
            .iter()
            .filter(|m| m.deliver_at_tick <= now_tick)
            .count()
    }

    pub fn partition(&mut self, groups: Vec<u8>) {
        assert_eq!(groups.len(), self.groups.len(), "one group per member");
        self.groups = groups;
    }

    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }

    pub fn connected(&self, a: u64, b: u64) -> bool {
        let group = |id: u64| self.groups[(id - 1) as usize];
        group(a) == group(b)
    }
}
