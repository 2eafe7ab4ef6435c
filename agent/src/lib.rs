//! `ms2m-agent`: the privileged node-local daemon. Everything that touches a node lives
//! here: checkpoint backends, the transfer engine, standalone restore, inspection.

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod crio_layout;
pub mod criu_check;
pub mod daemon;
pub mod image_store;
pub mod inspect;
pub mod jobs;
pub mod listeners;
pub mod metrics;
pub mod recovery;
pub mod registry;
pub mod restore;
pub mod rootfs_diff;
pub mod runc;
pub mod sd_notify;
pub mod tls;
pub mod transfer;
