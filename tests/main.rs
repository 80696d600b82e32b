//! Integration tests: the real daemon against a private real Redis, driven
//! over HTTP, Redis PubSub and real WebSocket clients. One test binary (see
//! `autotests = false`) keeps link time down.

mod support;

mod auth;
mod cli;
mod dashboard;
mod egress;
mod errors;
mod fanout;
mod flow;
mod limits;
mod recovery;
mod replay;
mod retention;
mod runner;
mod runs;
mod sandbox;
mod seed;
mod sse;
mod tasks;
mod tenancy;
mod workers;
