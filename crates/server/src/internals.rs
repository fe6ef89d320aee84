//! Internals for the fan-out benchmark and the fuzz targets (feature `internals`). Not an API:
//! nothing here is stable, and an embedder never needs it.

pub use crate::auth::JwtVerifier;
pub use crate::http::publisher::read_head;
pub use crate::hub::{ChannelKey, ConnId, Hub, Subscriber, Tally};
pub use crate::ws::outbox::{Batch, Outbox, Queue};
