//! The operator's catalogue of workflows: the `*.json` files of
//! `--workflows-dir`, read and validated at start-up (and then stored with
//! `store::workflows`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::workflow::{Dag, Workflow};

/// Reads every `*.json` file of `dir` as a workflow and validates it.
/// A file that does not parse or validate is an error naming the file.
pub fn read_dir(dir: &Path, max_nodes: usize) -> Result<Vec<Dag>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::InvalidInput(format!("workflows dir {}: {e}", dir.display())))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", p.display())))?;
            let bad = |e: String| Error::InvalidWorkflow(format!("{}: {e}", p.display()));
            let json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let wf = Workflow::from_json(json).map_err(bad)?;
            wf.compile(max_nodes).map_err(bad)
        })
        .collect()
}
