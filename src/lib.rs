//! natlb: a control plane for Linux NAT gateways.
//!
//! The pipeline, one module each:
//! `config` (parse + validate) → `model` (desired state) → `render` (pure: model + health →
//! ruleset description) → `nft` (netlink encode + send: the only code that touches the kernel's
//! tables) → `reconcile` (diff desired vs installed, one batch per change), driven by `daemon`.

pub mod admin;
pub mod config;
pub mod conntrack;
pub mod conntrack_pressure;
pub mod control;
pub mod daemon;
pub mod health;
pub mod least_conn;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod reconcile;
pub mod render;
pub mod state_dir;
pub mod sticky;
pub mod sticky_reader;
pub mod sysctl;
