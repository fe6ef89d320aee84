//! Who subscribes to what, and where events are published.
//!
//! Connection `i` subscribes to three channels, `agent:a<i>`, a `project:` channel of about
//! `group` connections and its org's channel, whatever the shape; the shape picks which of
//! them events go to. With `orgs` N, connection `i` is in org `i % N`, and so is every channel
//! it is in: channel index `x` of any kind belongs to org `x % N` (the org channel of org `k`
//! has index `k`; project `P` groups the connections of org `P % N` whose rank within their
//! org, `i / N`, divided by `group` is `P / N`). With one org, project `p` is `i / group`. With
//! [`Subscriptions::One`] it subscribes only to the one events go to (the cheapest setup for a
//! server that multiplexes channels on one socket, such as nchan). A
//! stalled connection (the slow-consumer scenario) subscribes and then never reads; it is left
//! out of the expected deliveries.

use std::collections::HashMap;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::marker::{Chan, Kind};

/// Where events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Every event on the one org channel: a broadcast to every connection.
    Org,
    /// Events round-robin over the project channels: groups of about 50.
    Project,
    /// Events round-robin over the agent channels: 1:1.
    Agent,
}

/// How many channels each connection subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscriptions {
    /// Its agent, project and org channels.
    Three,
    /// Only the channel of the shape.
    One,
}

/// Who subscribes to what: the options of `cortex-bench run`, passed on to every worker.
#[derive(Clone, Debug, clap::Args)]
pub struct PlanArgs {
    /// Where events go: one org channel, project groups, or 1:1 agent channels.
    #[arg(long, value_enum, default_value = "org")]
    pub shape: Shape,
    /// Subscriber connections in the whole run.
    #[arg(long, default_value_t = 1000)]
    pub conns: u32,
    /// Connections per project channel.
    #[arg(long, default_value_t = 50)]
    pub group: u32,
    /// Percentage of connections that subscribe and never read (slow consumers).
    #[arg(long, default_value_t = 0)]
    pub stalled_percent: u32,
    /// Channels each connection subscribes to: its agent, project and org channels, or only
    /// the one the shape publishes to.
    #[arg(long, value_enum, default_value = "three")]
    pub subscriptions: Subscriptions,
    /// Orgs: connection i is in org i % N (its token, its channels), and publishes spread over
    /// the orgs (the org shape: one broadcast channel per org).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub orgs: u32,
}

impl PlanArgs {
    /// The plan these options describe.
    pub fn plan(&self) -> Plan {
        Plan::new(self.shape, self.conns, self.group, self.stalled_percent)
            .with_subscriptions(self.subscriptions)
            .with_orgs(self.orgs)
    }

    /// The same options as command-line arguments, for a worker process.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--shape".into(),
            value_name(&self.shape),
            "--conns".into(),
            self.conns.to_string(),
            "--group".into(),
            self.group.to_string(),
            "--stalled-percent".into(),
            self.stalled_percent.to_string(),
            "--subscriptions".into(),
            value_name(&self.subscriptions),
            "--orgs".into(),
            self.orgs.to_string(),
        ]
    }
}

/// The command-line spelling of a value.
pub(crate) fn value_name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .expect("no value is skipped")
        .get_name()
        .to_owned()
}

/// The subscriptions and publish targets of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The shape.
    pub shape: Shape,
    /// How many connections.
    pub conns: u32,
    /// Connections per project channel.
    pub group: u32,
    /// Percentage of connections that never read (0 to 100).
    pub stalled_percent: u32,
    /// How many channels each connection subscribes to.
    pub subscriptions: Subscriptions,
    /// How many orgs (at least 1).
    pub orgs: u32,
    /// Subscribers that are not there (failed to connect), per publish channel index.
    missing: HashMap<u32, u64>,
}

impl Plan {
    /// A plan for `conns` connections.
    pub fn new(shape: Shape, conns: u32, group: u32, stalled_percent: u32) -> Plan {
        Plan {
            shape,
            conns,
            group: group.max(1),
            stalled_percent: stalled_percent.min(100),
            subscriptions: Subscriptions::Three,
            orgs: 1,
            missing: HashMap::new(),
        }
    }

    /// The same plan with `orgs` orgs (at least 1).
    pub fn with_orgs(mut self, orgs: u32) -> Plan {
        self.orgs = orgs.max(1);
        self
    }

    /// The org of connection `i`, and of every channel of index `i`: `i % orgs`.
    pub fn org_of(&self, i: u32) -> u32 {
        i % self.orgs
    }

    /// The project channel connection `i` is in.
    fn project_of(&self, i: u32) -> u32 {
        let n = self.orgs;
        i % n + n * ((i / n) / self.group)
    }

    /// How many connections org `k` has.
    fn org_size(&self, k: u32) -> u32 {
        if k >= self.conns {
            0
        } else {
            (self.conns - k).div_ceil(self.orgs)
        }
    }

    /// The connections subscribed to publish-shape channel `c` (every one, stalled included).
    fn members(&self, c: u32) -> Box<dyn Iterator<Item = u32> + '_> {
        let n = self.orgs;
        match self.shape {
            Shape::Org => Box::new((c..self.conns).step_by(n as usize)),
            Shape::Project => {
                let (k, q) = (c % n, c / n);
                Box::new(
                    (q * self.group..(q + 1) * self.group)
                        .map(move |rank| k + n * rank)
                        .take_while(move |&i| i < self.conns),
                )
            }
            Shape::Agent => Box::new((c..c + 1).filter(move |&i| i < self.conns)),
        }
    }

    /// The same plan with `subscriptions` per connection.
    pub fn with_subscriptions(mut self, subscriptions: Subscriptions) -> Plan {
        self.subscriptions = subscriptions;
        self
    }

    /// The channels connection `i` subscribes to: agent, project, org; or only the shape's.
    pub fn subscriptions(&self, i: u32) -> Vec<Chan> {
        if self.subscriptions == Subscriptions::One {
            return vec![self.channel(self.publish_index(i))];
        }
        vec![
            Chan {
                kind: Kind::Agent,
                index: i,
            },
            Chan {
                kind: Kind::Project,
                index: self.project_of(i),
            },
            Chan {
                kind: Kind::Org,
                index: self.org_of(i),
            },
        ]
    }

    /// Whether connection `i` never reads.
    pub fn is_stalled(&self, i: u32) -> bool {
        i % 100 < self.stalled_percent
    }

    /// How many channels events are published to.
    pub fn publish_channels(&self) -> u32 {
        match self.shape {
            Shape::Org => self.orgs.min(self.conns),
            // Project P's first member, (P % N) + N * (P / N) * group, grows with P: the
            // projects with members are 0 .. their count.
            Shape::Project => (0..self.orgs.min(self.conns))
                .map(|k| self.org_size(k).div_ceil(self.group))
                .sum(),
            Shape::Agent => self.conns,
        }
    }

    /// Publish channel `c` (0 .. [`Plan::publish_channels`]).
    pub fn channel(&self, c: u32) -> Chan {
        let kind = match self.shape {
            Shape::Org => Kind::Org,
            Shape::Project => Kind::Project,
            Shape::Agent => Kind::Agent,
        };
        Chan { kind, index: c }
    }

    /// The publish channel index that connection `i` receives on.
    fn publish_index(&self, i: u32) -> u32 {
        match self.shape {
            Shape::Org => self.org_of(i),
            Shape::Project => self.project_of(i),
            Shape::Agent => i,
        }
    }

    /// Takes connection `i` out of the expected deliveries (it failed to connect).
    pub fn remove(&mut self, i: u32) {
        if !self.is_stalled(i) {
            *self.missing.entry(self.publish_index(i)).or_default() += 1;
        }
    }

    /// How many connections should receive each event published on channel `c`.
    pub fn fanout(&self, c: u32) -> u64 {
        let reading = self.members(c).filter(|&i| !self.is_stalled(i)).count() as u64;
        reading.saturating_sub(self.missing.get(&c).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_args_survive_the_trip_to_a_worker() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            plan: PlanArgs,
        }
        let first = Cli::parse_from(["x", "--shape", "project", "--conns", "7", "--group", "3"]);
        let mut argv = vec!["x".to_owned()];
        argv.extend(first.plan.to_args());
        let again = Cli::parse_from(argv);
        assert_eq!(again.plan.to_args(), first.plan.to_args());
        assert_eq!(again.plan.shape, Shape::Project);
        assert_eq!(again.plan.plan().publish_channels(), 3);
    }

    #[test]
    fn fanout_counts_the_reading_members_of_each_channel() {
        let p = Plan::new(Shape::Project, 120, 50, 0);
        assert_eq!(p.publish_channels(), 3);
        assert_eq!((p.fanout(0), p.fanout(1), p.fanout(2)), (50, 50, 20));
        assert_eq!(p.subscriptions(117)[1], p.channel(2));
        let one = p.clone().with_subscriptions(Subscriptions::One);
        assert_eq!(one.subscriptions(117), vec![p.channel(2)]);
        assert_eq!(one.fanout(2), 20);

        let mut p = Plan::new(Shape::Org, 1000, 50, 1);
        assert_eq!(p.fanout(0), 990);
        p.remove(5);
        p.remove(100); // stalled: was never expected
        assert_eq!(p.fanout(0), 989);

        let mut p = Plan::new(Shape::Agent, 10, 50, 0);
        p.remove(3);
        assert_eq!((p.fanout(3), p.fanout(4)), (0, 1));
    }

    #[test]
    fn with_many_orgs_connection_i_and_all_its_channels_are_in_org_i_mod_n() {
        let (conns, orgs, group) = (100u32, 3u32, 5u32);
        let base = Plan::new(Shape::Org, conns, group, 0).with_orgs(orgs);
        let mut project_members: HashMap<u32, Vec<u32>> = HashMap::new();
        for i in 0..conns {
            let subs = base.subscriptions(i);
            assert_eq!(base.org_of(i), i % orgs);
            assert_eq!(
                subs[0],
                Chan {
                    kind: Kind::Agent,
                    index: i
                }
            );
            assert_eq!(
                subs[2],
                Chan {
                    kind: Kind::Org,
                    index: i % orgs
                }
            );
            assert_eq!(subs[1].index % orgs, i % orgs, "its project is in its org");
            project_members.entry(subs[1].index).or_default().push(i);
        }
        // Broadcasts: one channel per org, reaching that org's connections.
        assert_eq!(base.publish_channels(), 3);
        assert_eq!(
            (base.fanout(0), base.fanout(1), base.fanout(2)),
            (34, 33, 33)
        );
        // Groups: 7 a org (34 or 33 members in groups of 5), indexes 0..21 with no gap, each
        // of at most 5 connections of one org, every connection in exactly one.
        let p = Plan::new(Shape::Project, conns, group, 0).with_orgs(orgs);
        assert_eq!(p.publish_channels(), 21);
        let mut total = 0;
        for c in 0..p.publish_channels() {
            let members = &project_members[&c];
            assert_eq!(p.fanout(c), members.len() as u64, "project {c}");
            assert!((1..=5).contains(&members.len()));
            assert!(members.iter().all(|&i| i % orgs == c % orgs));
            assert_eq!(
                p.channel(c),
                Chan {
                    kind: Kind::Project,
                    index: c
                }
            );
            total += members.len();
        }
        assert_eq!(total, conns as usize);
        assert!(!project_members.contains_key(&21));
        // A connection that failed leaves its own org's and project's counts only.
        let mut b = base.clone();
        b.remove(4);
        assert_eq!((b.fanout(0), b.fanout(1), b.fanout(2)), (34, 32, 33));
        let mut q = p.clone();
        let its = p.subscriptions(4)[1].index;
        q.remove(4);
        assert_eq!(q.fanout(its), p.fanout(its) - 1);
        // One org: the plan as it always was.
        let one = Plan::new(Shape::Project, 120, 50, 0);
        assert_eq!(one.subscriptions(117)[1].index, 117 / 50);
        assert_eq!(
            one.subscriptions(117)[2],
            Chan {
                kind: Kind::Org,
                index: 0
            }
        );
        // More orgs than connections: the empty ones get no channel.
        let few = Plan::new(Shape::Org, 2, 5, 0).with_orgs(8);
        assert_eq!(few.publish_channels(), 2);
        let few = Plan::new(Shape::Project, 2, 5, 0).with_orgs(8);
        assert_eq!(few.publish_channels(), 2);
    }
}
