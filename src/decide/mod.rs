//! The pure decisions: what the daemon should do, given what it observed and
//! the time, with no I/O and no clock reads. Each is tested with tables of
//! situations; the loops in [`crate::daemon`] observe, call these, and act.
//!
//! This layer imports only [`crate::domain`] and [`crate::config`].
//!
//! - [`routes`]: which routes to create or replace, the Elastic IP decision;
//! - [`peers`]: the peer list and what each peer last said;
//! - [`cover`]: who is dead, who covers its AZ, and the guards of every
//!   take of routes (a rule table, tested as a property);
//! - [`holder`]: which of an AZ's NATs holds its routes when it has more
//!   than one;
//! - [`probe`]: the fall/rise state machine of the forwarding probe;
//! - [`health`]: whether this NAT is healthy, and the warnings of `/status`;
//! - [`flows`]: how long a flow hand-off lasts;
//! - [`backoff`]: every retry schedule, and the backoff type.

pub mod auth;
pub mod backoff;
pub mod cover;
pub mod flows;
pub mod health;
pub mod holder;
pub mod peers;
pub mod probe;
pub mod replicate;
pub mod routes;
