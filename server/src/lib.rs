//! `hongbao serve`: the engine behind HTTP + JSON and a WebSocket per member, with tokens
//! signed by the chat host and bound to a device, rate limits, metrics and a live page.
//!
//! | module | role |
//! |---|---|
//! | `service` | the app put together: bounds, operations routes, start, graceful stop |
//! | `api` | the REST routes, each behind the token it deserves |
//! | `cluster` | which engine answers: the one engine, or a partition here or forwarded to its node |
//! | `ws` | a member's WebSocket: auth, events, grabs |
//! | `hub` | one engine subscription fanned out to the sockets, with a replay window |
//! | `auth` | tokens (JWT, EdDSA): verifying, minting, keys |
//! | `reply` | JSON errors and the status each kind deserves |
//! | `abuse` | rate limits per member and per address |
//! | `telemetry` | Prometheus metrics and logs |
//! | `page` | the live page, embedded |
//! | `demo` | `--demo`: an org, groups, members and sign-in links |
//! | `settings` | every setting and bound: flags, environment, TOML file |

pub mod abuse;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod demo;
pub mod hub;
pub mod page;
pub mod reply;
pub mod service;
pub mod settings;
pub mod telemetry;
pub mod ws;

pub use service::{start, Running};
pub use settings::{ServeArgs, Settings};
