//! The Cortex Realtime load generator.
//!
//! `cortex-bench run` opens N subscriber connections spread over several worker processes (a
//! process here may hold at most 20,000 open files) and several 127.0.0.x source addresses,
//! publishes through the target's HTTP API at a fixed rate or at saturation, and reports how
//! fast connections were made, what was delivered (lost, duplicated, out of order), the
//! publish-to-receive latency, and what the server spent per connection and per delivery, read
//! from `/proc` for the server PIDs it is given.
//!
//! The same tool measures the peers: a [`target::Target`] speaks Cortex Realtime's protocol,
//! nchan's WebSocket subscriber, or socket.io's engine.io framing. Every published event
//! carries a [`marker::Marker`] (its channel, a per-channel sequence number and its send time)
//! inside a string, so it survives each peer's framing unchanged.
//!
//! The layout: [`plan`] says who subscribes to what and where events go, [`route`] which node
//! a connection goes to (round robin, or by org like a load balancer), [`worker`] holds the
//! connections of one process, [`run`] coordinates the workers and publishes, [`report`]
//! prints the figures, [`procfs`] reads the server's memory and CPU, [`sample`] samples it for every PID while
//! the run goes on, [`timeline`] keeps latency second by second (a fault's before, during and
//! after), [`tls`] reaches `wss://` addresses.

pub mod marker;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod route;
pub mod run;
pub mod sample;
pub mod target;
pub mod timeline;
pub mod tls;
pub mod worker;
