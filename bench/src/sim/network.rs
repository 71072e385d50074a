//! The simulated network between replicas: every Raft message is delayed by a random
//! number of milliseconds (which also reorders them), and may be dropped or duplicated;
//! partitions cut a set of replicas off from the rest for a while.
//!
//! Messages wait in a heap ordered by (delivery time, send order), so equal delivery times
//! still come out in one order: a seed replays exactly.

use raft::eraftpb::Message;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// How hostile the network is.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delay of a message, uniform in `[1, delay_ms_max]`.
    pub delay_ms_max: u64,
}

impl Faults {
    /// A network that loses nothing and delivers within 2 ms (the liveness phase).
    pub fn calm() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            delay_ms_max: 2,
        }
    }
}

struct InFlight {
    at_ms: u64,
    seq: u64,
    msg: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// What became of a message handed to the network.
pub enum Sent {
    /// On its way.
    Queued,
    /// Lost (or cut by a partition); the sender may learn it did not arrive.
    Lost,
}

/// Messages in flight and the current partition.
pub struct Network {
    flights: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Replicas cut off from the others (empty: no partition).
    island: BTreeSet<u64>,
    /// When the partition heals.
    heal_at_ms: u64,
    /// Messages delivered, lost, duplicated (for the run's summary).
    pub counts: [u64; 3],
}

impl Network {
    /// An empty network with no partition.
    pub fn new() -> Network {
        Network {
            flights: BinaryHeap::new(),
            seq: 0,
            island: BTreeSet::new(),
            heal_at_ms: 0,
            counts: [0; 3],
        }
    }

    fn cut(&self, from: u64, to: u64) -> bool {
        self.island.contains(&from) != self.island.contains(&to)
    }

    /// Hands `msg` to the network at `now_ms`.
    pub fn send(
        &mut self,
        msg: Message,
        now_ms: u64,
        faults: Faults,
        rng: &mut ChaCha8Rng,
    ) -> Sent {
        if self.cut(msg.from, msg.to) || rng.gen_bool(faults.loss) {
            self.counts[1] += 1;
            return Sent::Lost;
        }
        let copies = if rng.gen_bool(faults.duplicate) { 2 } else { 1 };
        self.counts[2] += copies - 1;
        for _ in 0..copies {
            let at_ms = now_ms + rng.gen_range(1..=faults.delay_ms_max);
            self.seq += 1;
            self.flights.push(Reverse(InFlight {
                at_ms,
                seq: self.seq,
                msg: msg.clone(),
            }));
        }
        Sent::Queued
    }

    /// Messages due by `now_ms`, in delivery order. A partition that started while a
    /// message was in flight cuts it too.
    pub fn due(&mut self, now_ms: u64) -> Vec<Message> {
        let mut out = Vec::new();
        while self.flights.peek().is_some_and(|f| f.0.at_ms <= now_ms) {
            let f = self.flights.pop().expect("peeked").0;
            if self.cut(f.msg.from, f.msg.to) {
                self.counts[1] += 1;
            } else {
                self.counts[0] += 1;
                out.push(f.msg);
            }
        }
        out
    }

    /// Cuts `island` off from every other replica until `heal_at_ms`.
    pub fn partition(&mut self, island: BTreeSet<u64>, heal_at_ms: u64) {
        self.island = island;
        self.heal_at_ms = heal_at_ms;
    }

    /// The replicas currently cut off (empty when whole).
    pub fn island(&self) -> &BTreeSet<u64> {
        &self.island
    }

    /// Heals the partition if its time has come (or `now` forces it).
    pub fn heal(&mut self, now_ms: u64, force: bool) {
        if force || now_ms >= self.heal_at_ms {
            self.island.clear();
        }
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}
