//! The forwarding heartbeat: probes sent through the NAT path ([`probe`])
//! and the pure fall/rise state machine that decides what to do about
//! them ([`state`]).

pub mod probe;
pub mod state;
