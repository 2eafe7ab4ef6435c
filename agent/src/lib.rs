//! `ms2m-agent`: the privileged node-local daemon. Everything that touches a node lives
//! here: checkpoint backends, the transfer engine, standalone restore, inspection.

pub mod registry;
pub mod transfer;
