//! Integration tests: the real server on 127.0.0.1:0, real WebSocket clients, real HTTP.

mod util;

mod smoke;
