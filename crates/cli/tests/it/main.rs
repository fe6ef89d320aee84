//! Integration tests: the real server on 127.0.0.1:0, real WebSocket clients, real HTTP.

mod redis;
mod util;

mod admin;
mod backplane;
mod cli;
mod client;
mod cluster;
mod delivery;
mod haproxy;
mod hardening;
mod hostile;
mod local;
mod logs;
mod ops;
mod publish_api;
mod resume;
mod smoke;
mod tenancy;
mod tls;
mod ws_commands;
mod ws_connect;
