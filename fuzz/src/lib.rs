//! The pure part of msp-agent's evidence code (events, bundle, keys, spool format,
//! verify) and of its journal rules (a journal entry, the rules as checks), compiled from the agent's own source files without the S3 client and the
//! rest of the daemon, so that an instrumented fuzz build takes a minute, not twenty.
//! (The modules refer to each other as `super::…`, which resolves here at the root.)
#![allow(dead_code)]

#[path = "../../src/prove/bundle.rs"]
pub mod bundle;
#[path = "../../src/events.rs"]
pub mod events;
#[path = "../../src/prove/keys.rs"]
pub mod keys;
#[path = "../../src/prove/spool.rs"]
pub mod spool;
#[path = "../../src/prove/verify.rs"]
pub mod verify;

/// The same paths as in the agent: `msp_agent::prove::bundle::…`.
pub mod prove {
    pub use super::{bundle, keys, spool, verify};
}

/// The journal rules and what they read: `msp_agent::decide::journal::…`.
pub mod decide;
pub mod watch;
