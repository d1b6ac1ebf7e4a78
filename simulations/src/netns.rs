//! Netns scenarios: real `metac node`s in network namespaces (metac_tests::Lab).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::report::{Row, Summary};

/// What a netns run does to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Partition and heal.
    PartitionHeal,
    /// Churn.
    Churn,
    /// Kill.
    Kill,
}

/// Options of a netns run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes.
    pub nodes: usize,
    /// Scenario.
    pub scenario: Scenario,
    /// Loss.
    pub loss: f64,
    /// Latency.
    pub latency: Option<String>,
    /// Binary.
    pub metac: Option<PathBuf>,
}

/// Runs a scenario.
pub fn run(_o: &Options) -> Result<(Vec<Row>, Summary)> {
    bail!("not yet")
}
