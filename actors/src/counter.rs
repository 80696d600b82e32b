//! The pending-node counter: the pure state machine at the heart of a run.
//!
//! **counter = the number of activated nodes that have not finished.** It
//! starts at the number of entry nodes. When a node completes, the children
//! whose parents have now all completed are activated (+k) and the finished
//! node's token is consumed (−1) in one step, so the counter can only reach 0
//! when nothing is left to run: the run is complete exactly then, and
//! [`Step::finished`] is true exactly once. A second completion of the same
//! node is rejected and changes nothing.
//!
//! No I/O here: the run actor feeds events in and persists what comes out,
//! and the property tests below drive it with random DAGs and orders.

use serde::{Deserialize, Serialize};

use crate::workflow::Dag;

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Some parent has not completed yet.
    Waiting,
    /// Holds a token: running, or waiting for a retry.
    Active,
    /// Finished with an output.
    Completed,
    /// Failed after its last attempt.
    Failed,
    /// Stopped because the run failed or was cancelled.
    Cancelled,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not yet initialised by a runner.
    Queued,
    /// Initialised; nodes are running.
    Running,
    /// Every node completed.
    Completed,
    /// A node failed after its retries.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl RunStatus {
    /// True once the run can change no more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The lower-case name used in Redis and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`RunStatus::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The node is not active: a duplicate or stray completion.
    NotActive,
    /// The run has already ended.
    RunEnded,
}

/// The outcome of one completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Children activated by this completion.
    pub activated: Vec<usize>,
    /// The counter after the step.
    pub counter: u32,
    /// True when this completion finished the run.
    pub finished: bool,
}

/// A run's node states and counter.
#[derive(Debug, Clone)]
pub struct RunState {
    status: RunStatus,
    nodes: Vec<NodeStatus>,
    /// Parents of each node that have not completed.
    unfinished_parents: Vec<u32>,
    counter: u32,
}

impl RunState {
    /// A fresh run: entry nodes active, counter = number of entries.
    pub fn start(dag: &Dag) -> Self {
        let mut nodes = vec![NodeStatus::Waiting; dag.len()];
        for &e in &dag.entries {
            nodes[e] = NodeStatus::Active;
        }
        Self::restore(dag, RunStatus::Running, nodes)
    }

    /// Rebuilds the state from persisted node statuses; the counter and the
    /// parent counts are derived, never trusted from storage.
    pub fn restore(dag: &Dag, status: RunStatus, nodes: Vec<NodeStatus>) -> Self {
        let unfinished_parents = dag
            .parents
            .iter()
            .map(|ps| {
                ps.iter()
                    .filter(|&&p| nodes[p] != NodeStatus::Completed)
                    .count() as u32
            })
            .collect();
        let counter = nodes.iter().filter(|&&s| s == NodeStatus::Active).count() as u32;
        Self {
            status,
            nodes,
            unfinished_parents,
            counter,
        }
    }

    /// The run's status.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// Activated nodes that have not finished.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Each node's status, by index.
    pub fn nodes(&self) -> &[NodeStatus] {
        &self.nodes
    }

    /// Nodes currently holding a token.
    pub fn active(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i] == NodeStatus::Active)
            .collect()
    }

    /// Completes node `i`: activates ready children and consumes `i`'s token
    /// as one step.
    pub fn complete(&mut self, dag: &Dag, i: usize) -> Result<Step, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        if self.nodes[i] != NodeStatus::Active {
            return Err(Rejected::NotActive);
        }
        self.nodes[i] = NodeStatus::Completed;
        let mut activated = Vec::new();
        for &c in &dag.children[i] {
            self.unfinished_parents[c] -= 1;
            if self.unfinished_parents[c] == 0 {
                self.nodes[c] = NodeStatus::Active;
                activated.push(c);
            }
        }
        // +k then −1, applied together: the counter never passes through 0
        // while a child is about to be activated.
        self.counter = self.counter + activated.len() as u32 - 1;
        let finished = self.counter == 0;
        if finished {
            self.status = RunStatus::Completed;
        }
        Ok(Step {
            activated,
            counter: self.counter,
            finished,
        })
    }

    /// Fails node `i` for good: the run fails and every other active node is
    /// cancelled. Returns the cancelled nodes. Every token is consumed, so the
    /// counter ends at 0 with the run's status saying why.
    pub fn fail(&mut self, i: usize) -> Result<Vec<usize>, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        if self.nodes[i] != NodeStatus::Active {
            return Err(Rejected::NotActive);
        }
        self.nodes[i] = NodeStatus::Failed;
        self.counter -= 1;
        self.status = RunStatus::Failed;
        Ok(self.cancel_active())
    }

    /// Cancels the run: every active node is cancelled. Returns them.
    pub fn cancel(&mut self) -> Result<Vec<usize>, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        self.status = RunStatus::Cancelled;
        Ok(self.cancel_active())
    }

    fn cancel_active(&mut self) -> Vec<usize> {
        let active = self.active();
        for &a in &active {
            self.nodes[a] = NodeStatus::Cancelled;
        }
        self.counter = 0;
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{NodeKind, NodeSpec, Workflow};
    use proptest::prelude::*;

    fn dag(edges: &[Vec<usize>]) -> Dag {
        let nodes = edges
            .iter()
            .enumerate()
            .map(|(i, ps)| NodeSpec {
                id: format!("n{i}"),
                kind: NodeKind::Delay { ms: 0 },
                depends_on: ps.iter().map(|p| format!("n{p}")).collect(),
                retry: None,
                timeout_ms: None,
            })
            .collect();
        Workflow {
            tag: "t".into(),
            nodes,
        }
        .compile(usize::MAX)
        .unwrap()
    }

    #[test]
    fn seed_chain_counts_one_then_zero() {
        let d = dag(&[vec![], vec![0]]);
        let mut s = RunState::start(&d);
        assert_eq!(s.counter(), 1);
        let st = s.complete(&d, 0).unwrap();
        assert_eq!(
            (st.activated.clone(), st.counter, st.finished),
            (vec![1], 1, false)
        );
        let st = s.complete(&d, 1).unwrap();
        assert_eq!((st.counter, st.finished), (0, true));
        assert_eq!(s.status(), RunStatus::Completed);
    }

    #[test]
    fn diamond_waits_for_both_parents() {
        let d = dag(&[vec![], vec![0], vec![0], vec![1, 2]]);
        let mut s = RunState::start(&d);
        assert_eq!(s.complete(&d, 0).unwrap().counter, 2);
        let st = s.complete(&d, 2).unwrap();
        assert!(st.activated.is_empty());
        assert_eq!(st.counter, 1);
        assert_eq!(s.complete(&d, 1).unwrap().activated, vec![3]);
        assert!(s.complete(&d, 3).unwrap().finished);
    }

    #[test]
    fn duplicates_and_strays_change_nothing() {
        let d = dag(&[vec![], vec![0]]);
        let mut s = RunState::start(&d);
        assert_eq!(s.complete(&d, 1), Err(Rejected::NotActive));
        s.complete(&d, 0).unwrap();
        assert_eq!(s.complete(&d, 0), Err(Rejected::NotActive));
        assert_eq!(s.counter(), 1);
    }

    #[test]
    fn failure_cancels_siblings_and_ends_the_run() {
        let d = dag(&[vec![], vec![], vec![0, 1]]);
        let mut s = RunState::start(&d);
        assert_eq!(s.fail(0).unwrap(), vec![1]);
        assert_eq!(s.status(), RunStatus::Failed);
        assert_eq!(s.counter(), 0);
        assert_eq!(s.complete(&d, 1), Err(Rejected::RunEnded));
        assert_eq!(s.cancel(), Err(Rejected::RunEnded));
    }

    #[test]
    fn restore_derives_the_counter() {
        let d = dag(&[vec![], vec![0], vec![0], vec![1, 2]]);
        let mut s = RunState::start(&d);
        s.complete(&d, 0).unwrap();
        s.complete(&d, 1).unwrap();
        let mut r = RunState::restore(&d, RunStatus::Running, s.nodes().to_vec());
        assert_eq!(r.counter(), 1);
        assert_eq!(r.complete(&d, 2).unwrap().activated, vec![3]);
    }

    /// Random DAG: node i may depend on any earlier node.
    fn arb_dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..24).prop_flat_map(|n| {
            (0..n)
                .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4)))
                .collect::<Vec<_>>()
        })
    }

    proptest! {
        #[test]
        fn counter_invariant_holds(edges in arb_dag(), picks in proptest::collection::vec(any::<prop::sample::Index>(), 200), dups in proptest::collection::vec(any::<bool>(), 200)) {
            let d = dag(&edges);
            let mut s = RunState::start(&d);
            let mut done = vec![false; d.len()];
            let mut finished_signals = 0;
            let mut pick = picks.iter().cycle();
            let mut dup = dups.iter().cycle();
            let mut completed = 0;
            while completed < d.len() {
                let active = s.active();
                prop_assert!(!active.is_empty(), "stuck with nodes left");
                prop_assert_eq!(s.counter() as usize, active.len());
                let i = active[pick.next().unwrap().index(active.len())];
                let st = s.complete(&d, i).unwrap();
                completed += 1;
                prop_assert!(!done[i]);
                done[i] = true;
                if st.finished { finished_signals += 1; }
                prop_assert_eq!(st.counter == 0, completed == d.len(), "counter 0 before the end");
                if *dup.next().unwrap() {
                    // A duplicate completion (worker retry, redelivery) changes nothing.
                    let before = s.counter();
                    prop_assert_eq!(s.complete(&d, i).unwrap_err(), if completed == d.len() { Rejected::RunEnded } else { Rejected::NotActive });
                    prop_assert_eq!(s.counter(), before);
                }
            }
            prop_assert_eq!(finished_signals, 1);
            prop_assert!(done.iter().all(|&x| x));
            prop_assert_eq!(s.status(), RunStatus::Completed);
        }

        #[test]
        fn every_run_ends_once(edges in arb_dag(), picks in proptest::collection::vec(any::<prop::sample::Index>(), 64), fail_at in 0usize..30, cancel in any::<bool>()) {
            let d = dag(&edges);
            let mut s = RunState::start(&d);
            let mut pick = picks.iter().cycle();
            let mut terminal = 0;
            for step in 0.. {
                if s.status().is_terminal() { break; }
                let active = s.active();
                let i = active[pick.next().unwrap().index(active.len())];
                if step == fail_at {
                    let r = if cancel { s.cancel() } else { s.fail(i) };
                    prop_assert!(r.is_ok());
                    terminal += 1;
                } else if s.complete(&d, i).unwrap().finished {
                    terminal += 1;
                }
            }
            prop_assert_eq!(terminal, 1);
            prop_assert_eq!(s.counter(), 0);
            prop_assert!(s.fail(0).is_err() && s.cancel().is_err() && s.complete(&d, 0).is_err());
        }
    }
}
