//! Which node a connection goes to, first and after its node went away: what the load
//! balancer in front of the nodes would decide.
//!
//! - [`Route::RoundRobin`]: connection `i` starts on node `i % N`; when its node goes away it
//!   moves to another at random among those not refused lately (a balancer that spreads the
//!   clients of a lost node over the others).
//! - [`Route::Org`]: every connection of an org goes to the same node, chosen by hashing the
//!   org's name over the nodes (rendezvous hashing: the node with the highest hash of org and
//!   node); when that node goes away they all move to the org's next node by the same rule on
//!   the nodes left, and the other orgs stay where they are (a balancer that routes by org).
//!
//! It never opens a connection; the worker asks it where to go.

use std::time::Instant;

use clap::ValueEnum;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// How connections are spread over the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Connection i on node i % N; after a loss, another node at random.
    #[default]
    #[value(name = "rr")]
    RoundRobin,
    /// By org: the org's node by rendezvous hashing; after a loss, the org's next node.
    Org,
}

/// The node connection `i`, in org `org`, tries first among `n` nodes.
pub fn first_node(route: Route, i: u32, org: &str, n: usize) -> usize {
    match route {
        Route::RoundRobin => i as usize % n.max(1),
        Route::Org => org_node(org, n, |_| true),
    }
}

/// The node to try after `node` refused or dropped the connection; `down[k]`: until when node
/// k is avoided (it refused lately).
pub fn next_node(route: Route, node: usize, org: &str, down: &[Option<Instant>]) -> usize {
    match route {
        Route::RoundRobin => other_node(node, down),
        Route::Org => {
            let n = down.len();
            if n < 2 {
                return 0;
            }
            let now = Instant::now();
            let up = |k: usize| k != node && down[k].is_none_or(|until| until <= now);
            if (0..n).any(up) {
                org_node(org, n, up)
            } else {
                org_node(org, n, |k| k != node)
            }
        }
    }
}

/// The org's node among those of `0..n` that `allowed` keeps: the highest score of org and
/// node (0 when none is allowed).
pub fn org_node(org: &str, n: usize, allowed: impl Fn(usize) -> bool) -> usize {
    let h = fnv1a(org.as_bytes());
    (0..n)
        .filter(|&k| allowed(k))
        .max_by_key(|&k| mix(h ^ mix(k as u64 + 1)))
        .unwrap_or(0)
}

/// FNV-1a, 64 bits: stable across runs, processes and Rust versions (std's hasher is not
/// promised to be), so every worker process routes an org to the same node.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads the bits, so that close inputs score far apart.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Another node than `node`, at random among those not refused lately (`down[i]`: until when
/// node i is avoided; if every other is, any other): a load balancer spreads the clients of a
/// node that went away over the nodes still up, rather than sending them all to its
/// neighbour or back to a dead one.
pub fn other_node(node: usize, down: &[Option<Instant>]) -> usize {
    let n = down.len();
    if n < 2 {
        return 0;
    }
    let now = Instant::now();
    let up: Vec<usize> = (0..n)
        .filter(|&i| i != node && down[i].is_none_or(|until| until <= now))
        .collect();
    if up.is_empty() {
        return (node + 1 + rand::rng().random_range(0..n - 1)) % n;
    }
    up[rand::rng().random_range(0..up.len())]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_dropped_connection_moves_to_another_node_spread_over_all_of_them() {
        assert_eq!(other_node(0, &[None]), 0);
        let mut hits = [0u32; 6];
        let mut down = vec![None; 6];
        for _ in 0..6_000 {
            let n = other_node(2, &down);
            assert_ne!(n, 2, "never the node that went away");
            hits[n] += 1;
        }
        assert_eq!(hits[2], 0);
        for (n, &h) in hits.iter().enumerate().filter(|&(n, _)| n != 2) {
            assert!((900..=1500).contains(&h), "node {n} got {h} of 6,000");
        }
        // Node 4 refused lately: avoided while others are up; once all are, any other.
        down[4] = Some(Instant::now() + Duration::from_secs(60));
        assert!((0..1_000).all(|_| ![2, 4].contains(&other_node(2, &down))));
        let all = vec![Some(Instant::now() + Duration::from_secs(60)); 6];
        assert!((0..100).all(|_| other_node(2, &all) != 2));
    }

    #[test]
    fn round_robin_starts_connection_i_on_node_i_mod_n() {
        let firsts: Vec<usize> = (0..7)
            .map(|i| first_node(Route::RoundRobin, i, "o", 3))
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            first_node(Route::RoundRobin, 5, "o", 0),
            0,
            "no division by zero"
        );
    }

    #[test]
    fn by_org_every_connection_of_an_org_is_on_one_node_and_the_orgs_spread_evenly() {
        let orgs: Vec<String> = (0..8_000).map(|k| format!("bench-{k}")).collect();
        let mut per_node = [0u32; 8];
        for (k, org) in orgs.iter().enumerate() {
            let node = first_node(Route::Org, k as u32, org, 8);
            // Any connection of the org, whatever its index: the same node.
            assert_eq!(first_node(Route::Org, k as u32 + 8_000, org, 8), node);
            per_node[node] += 1;
        }
        for (n, &c) in per_node.iter().enumerate() {
            assert!((850..=1150).contains(&c), "node {n} got {c} of 8,000 orgs");
        }
        // The same on every call (every worker process computes it alone).
        assert_eq!(
            org_node("bench-17", 8, |_| true),
            org_node("bench-17", 8, |_| true)
        );
    }

    #[test]
    fn by_org_a_lost_node_moves_only_its_orgs_each_to_one_surviving_node() {
        let n = 6;
        let none = vec![None; n];
        let mut moved_to = [0u32; 6];
        for k in 0..3_000 {
            let org = format!("bench-{k}");
            let home = first_node(Route::Org, 0, &org, n);
            let next = next_node(Route::Org, home, &org, &none);
            assert_ne!(next, home, "never back to the node that went away");
            // The rule on the surviving list: the org's node among the others.
            assert_eq!(next, org_node(&org, n, |x| x != home));
            // Every connection of the org moves to the same node.
            assert_eq!(next_node(Route::Org, home, &org, &none), next);
            if home == 2 {
                moved_to[next] += 1;
            } else {
                // An org elsewhere keeps its node when node 2 goes away.
                assert_eq!(org_node(&org, n, |x| x != 2), home);
            }
        }
        // Node 2's orgs spread over the five others.
        assert_eq!(moved_to[2], 0);
        assert!(
            moved_to.iter().enumerate().all(|(k, &c)| k == 2 || c >= 50),
            "{moved_to:?}"
        );
        // A node refused lately is avoided too, while another is up; with all refused, any
        // node but the one just lost.
        let org = "bench-5";
        let home = first_node(Route::Org, 0, org, n);
        let second = org_node(org, n, |x| x != home);
        let mut down = vec![None; n];
        down[second] = Some(Instant::now() + Duration::from_secs(60));
        let third = next_node(Route::Org, home, org, &down);
        assert!(third != home && third != second);
        let all = vec![Some(Instant::now() + Duration::from_secs(60)); n];
        assert_eq!(next_node(Route::Org, home, org, &all), second);
        assert_eq!(next_node(Route::Org, 0, org, &[None]), 0);
    }
}
