//! Integration tests for `cortex_protocol`: the channel grammar and the event catalogue, checked
//! against CONTRACT.md sections 3, 5 and 7 through the crate's public API only.

mod channels;
mod events;
mod schemas;
