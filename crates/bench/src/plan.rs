//! Who subscribes to what, and where events are published.
//!
//! Connection `i` subscribes to three channels, `agent:a<i>`, `project:p<i / group>` and the
//! org channel, whatever the shape; the shape picks which of them events go to. With
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
}

impl PlanArgs {
    /// The plan these options describe.
    pub fn plan(&self) -> Plan {
        Plan::new(self.shape, self.conns, self.group, self.stalled_percent)
            .with_subscriptions(self.subscriptions)
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
            missing: HashMap::new(),
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
                index: i / self.group,
            },
            Chan {
                kind: Kind::Org,
                index: 0,
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
            Shape::Org => 1,
            Shape::Project => self.conns.div_ceil(self.group),
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
            Shape::Org => 0,
            Shape::Project => i / self.group,
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
        let members = match self.shape {
            Shape::Org => 0..self.conns,
            Shape::Project => {
                let start = c * self.group;
                start..(start + self.group).min(self.conns)
            }
            Shape::Agent => c..c + 1,
        };
        let reading = members.filter(|&i| !self.is_stalled(i)).count() as u64;
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
}
