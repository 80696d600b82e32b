//! The pending-node counter: the pure state machine at the heart of a run.
//!
//! **counter = the number of activated nodes that have not finished.** It
//! starts at the number of entry nodes that run. When a node completes, the
//! children whose parents have now all finished are decided: each either
//! runs (activated, +k) or is skipped; the finished node's token is consumed
//! (−1); all in one step, so the counter can only reach 0 when nothing is
//! left to run: the run is complete exactly then, and [`Step::finished`] is
//! true exactly once. A second completion of the same node is rejected and
//! changes nothing.
//!
//! Control flow keeps that rule. A node is decided once all its parents have
//! finished (completed or skipped): its `trigger` says whether skipped
//! parents let it run (`all_completed`: none may be skipped;
//! `any_completed`: at least one completed), then its `when` condition,
//! which the caller evaluates and hands in as a gate. A skipped node is
//! activated and finished in that same step: it never holds a token, and
//! its own children are decided at once (skips cascade). A run whose
//! remaining nodes are all skipped completes in the step that skips them.
//! A `foreach` node holds one token however many items it runs (see
//! `foreach`).
//!
//! No I/O here: the run actor feeds events in and persists what comes out,
//! and the property tests below drive it with random DAGs, conditions,
//! triggers, failures, duplicates and orders.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::workflow::{Dag, Trigger};

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Some parent has not finished yet.
    Waiting,
    /// Holds a token: running, or waiting for a retry.
    Active,
    /// Finished with an output.
    Completed,
    /// Not run: its condition or its trigger said so. Its output is `null`.
    Skipped,
    /// Failed after its last attempt.
    Failed,
    /// Stopped (or never reached) because the run failed or was cancelled.
    Cancelled,
}

impl NodeStatus {
    /// Completed or skipped: what a child waits for.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Skipped)
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, not yet initialised by a runner.
    Queued,
    /// Initialised; nodes are running.
    Running,
    /// Every node completed or was skipped.
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

/// Why a node was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its `when` condition was false or null.
    Condition,
    /// `all_completed` and this parent was skipped.
    ParentSkipped(usize),
    /// `any_completed` and every parent was skipped.
    NoParentCompleted,
}

impl SkipReason {
    /// The `reason` of a `node_skipped` event.
    pub fn describe(self, dag: &Dag) -> String {
        match self {
            Self::Condition => "when was false".into(),
            Self::ParentSkipped(p) => format!("parent {:?} was skipped", dag.node(p).id),
            Self::NoParentCompleted => "no parent completed".into(),
        }
    }
}

/// The outcome of one step (the start of a run, or a completion).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Nodes activated by this step.
    pub activated: Vec<usize>,
    /// Nodes skipped by this step, in the order they were decided.
    pub skipped: Vec<(usize, SkipReason)>,
    /// The counter after the step.
    pub counter: u32,
    /// True when this step finished the run.
    pub finished: bool,
}

/// What the end of a run (failure or cancellation) stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ended {
    /// Nodes that held a token (running or about to retry).
    pub cancelled: Vec<usize>,
    /// Nodes that had not been reached, now cancelled too.
    pub unreached: Vec<usize>,
}

/// A node's `when` condition, as evaluated by the caller: asked only for
/// nodes that have one and whose trigger lets them run.
pub type Gate<'a> = &'a mut dyn FnMut(usize) -> bool;

/// A run's node states and counter.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    status: RunStatus,
    nodes: Vec<NodeStatus>,
    /// Parents of each node that have not finished (completed or skipped).
    pending_parents: Vec<u32>,
    /// Parents of each node that completed.
    completed_parents: Vec<u32>,
    counter: u32,
    /// While a step is only tried ([`RunState::unknown_conditions`]): the
    /// old values of what it changed, to put back.
    journal: Option<Vec<Undo>>,
}

/// A value a tried step changed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Undo {
    Node(usize, NodeStatus),
    Pending(usize, u32),
    Completed(usize, u32),
}

impl RunState {
    /// A fresh run: entry nodes decided (run or skipped, with cascades),
    /// counter = number of entries that run.
    pub fn start(dag: &Dag, when: Gate) -> (Self, Step) {
        let mut s = Self::restore(
            dag,
            RunStatus::Running,
            vec![NodeStatus::Waiting; dag.len()],
        );
        let step = s.begin(dag, when);
        (s, step)
    }

    fn begin(&mut self, dag: &Dag, when: Gate) -> Step {
        let mut step = Step::default();
        let skipped = self.decide_all(dag, dag.entries.clone(), when, &mut step);
        self.release_children(dag, skipped, when, &mut step);
        self.counter = step.activated.len() as u32;
        self.end_step(step)
    }

    /// Rebuilds the state from persisted node statuses; the counter and the
    /// parent counts are derived, never trusted from storage.
    pub fn restore(dag: &Dag, status: RunStatus, nodes: Vec<NodeStatus>) -> Self {
        let count = |pred: fn(NodeStatus) -> bool| -> Vec<u32> {
            dag.parents
                .iter()
                .map(|ps| ps.iter().filter(|&&p| pred(nodes[p])).count() as u32)
                .collect()
        };
        let pending_parents = count(|s| !s.is_done());
        let completed_parents = count(|s| s == NodeStatus::Completed);
        let counter = nodes.iter().filter(|&&s| s == NodeStatus::Active).count() as u32;
        Self {
            status,
            nodes,
            pending_parents,
            completed_parents,
            counter,
            journal: None,
        }
    }

    fn set_node(&mut self, i: usize, s: NodeStatus) {
        if let Some(j) = &mut self.journal {
            j.push(Undo::Node(i, self.nodes[i]));
        }
        self.nodes[i] = s;
    }

    /// Counts one more finished parent of `c` (a completed one if
    /// `completed`); true when `c` has none left unfinished.
    fn parent_done(&mut self, c: usize, completed: bool) -> bool {
        if let Some(j) = &mut self.journal {
            j.push(Undo::Pending(c, self.pending_parents[c]));
            j.push(Undo::Completed(c, self.completed_parents[c]));
        }
        self.pending_parents[c] -= 1;
        self.completed_parents[c] += u32::from(completed);
        self.pending_parents[c] == 0
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

    /// Completes node `i`: decides the children whose parents have now all
    /// finished (activating or skipping them, skips cascading) and consumes
    /// `i`'s token, as one step.
    pub fn complete(&mut self, dag: &Dag, i: usize, when: Gate) -> Result<Step, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        if self.nodes[i] != NodeStatus::Active {
            return Err(Rejected::NotActive);
        }
        self.set_node(i, NodeStatus::Completed);
        let mut step = Step::default();
        self.release_children(dag, vec![i], when, &mut step);
        // +k then −1, applied together: the counter never passes through 0
        // while a child is about to be activated.
        self.counter = self.counter + step.activated.len() as u32 - 1;
        Ok(self.end_step(step))
    }

    /// The conditions a step would ask for that `known` cannot answer yet:
    /// the step is tried and undone (the state is left as it was, at the
    /// cost of what the step changes, not of the run's size), unknown
    /// conditions taken as true (a node that runs decides nothing
    /// further). Evaluate these, then ask again: a false one may make the
    /// cascade reach more conditions.
    pub fn unknown_conditions(
        &mut self,
        known: impl Fn(usize) -> Option<bool>,
        step: impl FnOnce(&mut Self, Gate),
    ) -> Vec<usize> {
        let (status, counter) = (self.status, self.counter);
        self.journal = Some(Vec::new());
        let mut unknown = Vec::new();
        step(self, &mut |c| {
            known(c).unwrap_or_else(|| {
                unknown.push(c);
                true
            })
        });
        for undo in self.journal.take().unwrap_or_default().into_iter().rev() {
            match undo {
                Undo::Node(i, s) => self.nodes[i] = s,
                Undo::Pending(i, v) => self.pending_parents[i] = v,
                Undo::Completed(i, v) => self.completed_parents[i] = v,
            }
        }
        (self.status, self.counter) = (status, counter);
        unknown
    }

    /// [`RunState::unknown_conditions`] of a run's start.
    pub fn unknown_start_conditions(
        dag: &Dag,
        known: impl Fn(usize) -> Option<bool>,
    ) -> Vec<usize> {
        Self::restore(
            dag,
            RunStatus::Running,
            vec![NodeStatus::Waiting; dag.len()],
        )
        .unknown_conditions(known, |s, gate| {
            s.begin(dag, gate);
        })
    }

    fn end_step(&mut self, mut step: Step) -> Step {
        step.counter = self.counter;
        step.finished = self.counter == 0;
        if step.finished {
            self.status = RunStatus::Completed;
        }
        step
    }

    /// Counts each of `done` as finished for its children and decides
    /// those that are now ready; skipped ones release their own children
    /// in turn.
    fn release_children(&mut self, dag: &Dag, done: Vec<usize>, when: Gate, step: &mut Step) {
        let mut finished = VecDeque::from(done);
        while let Some(f) = finished.pop_front() {
            let completed = self.nodes[f] == NodeStatus::Completed;
            let mut ready = Vec::new();
            for &c in &dag.children[f] {
                if self.parent_done(c, completed) {
                    ready.push(c);
                }
            }
            finished.extend(self.decide_all(dag, ready, when, step));
        }
    }

    /// Decides ready nodes: each is activated or skipped. Returns the
    /// skipped ones, whose children the caller releases.
    fn decide_all(
        &mut self,
        dag: &Dag,
        ready: Vec<usize>,
        when: Gate,
        step: &mut Step,
    ) -> Vec<usize> {
        let mut skipped = Vec::new();
        for c in ready {
            match self.decide(dag, c, when) {
                None => {
                    self.set_node(c, NodeStatus::Active);
                    step.activated.push(c);
                }
                Some(reason) => {
                    self.set_node(c, NodeStatus::Skipped);
                    step.skipped.push((c, reason));
                    skipped.push(c);
                }
            }
        }
        skipped
    }

    /// Why a ready node is skipped, or `None` if it runs.
    fn decide(&self, dag: &Dag, c: usize, when: Gate) -> Option<SkipReason> {
        let parents = &dag.parents[c];
        let all = parents.len() as u32;
        match dag.node(c).trigger {
            Trigger::AllCompleted if self.completed_parents[c] < all => {
                let p = parents
                    .iter()
                    .copied()
                    .find(|&p| self.nodes[p] == NodeStatus::Skipped)
                    .unwrap_or(parents[0]);
                return Some(SkipReason::ParentSkipped(p));
            }
            Trigger::AnyCompleted if all > 0 && self.completed_parents[c] == 0 => {
                return Some(SkipReason::NoParentCompleted)
            }
            _ => {}
        }
        if dag.node(c).when.is_some() && !when(c) {
            return Some(SkipReason::Condition);
        }
        None
    }

    /// Fails node `i` for good: the run fails, every other active node is
    /// cancelled, and so is every node not reached. Every token is consumed,
    /// so the counter ends at 0 with the run's status saying why.
    pub fn fail(&mut self, i: usize) -> Result<Ended, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        if self.nodes[i] != NodeStatus::Active {
            return Err(Rejected::NotActive);
        }
        self.nodes[i] = NodeStatus::Failed;
        self.counter -= 1;
        self.status = RunStatus::Failed;
        Ok(self.end_all())
    }

    /// Cancels the run: every active node is cancelled, and every node not
    /// reached.
    pub fn cancel(&mut self) -> Result<Ended, Rejected> {
        if self.status.is_terminal() {
            return Err(Rejected::RunEnded);
        }
        self.status = RunStatus::Cancelled;
        Ok(self.end_all())
    }

    fn end_all(&mut self) -> Ended {
        let mut ended = Ended::default();
        for (i, s) in self.nodes.iter_mut().enumerate() {
            match *s {
                NodeStatus::Active => ended.cancelled.push(i),
                NodeStatus::Waiting => ended.unreached.push(i),
                _ => continue,
            }
            *s = NodeStatus::Cancelled;
        }
        self.counter = 0;
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{NodeKind, NodeSpec, Workflow};
    use proptest::prelude::*;

    /// A node for tests: its parents, whether it joins with
    /// `any_completed`, and its condition's outcome if it has one.
    #[derive(Debug, Clone)]
    struct N {
        parents: Vec<usize>,
        any: bool,
        cond: Option<bool>,
    }

    fn n(parents: &[usize]) -> N {
        N {
            parents: parents.to_vec(),
            any: false,
            cond: None,
        }
    }

    fn build(nodes: &[N]) -> Dag {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, t)| NodeSpec {
                id: format!("n{i}"),
                kind: NodeKind::Delay { ms: 0 },
                depends_on: t.parents.iter().map(|p| format!("n{p}")).collect(),
                retry: None,
                timeout_ms: None,
                when: t.cond.map(|_| ".".into()),
                trigger: if t.any && !t.parents.is_empty() {
                    Trigger::AnyCompleted
                } else {
                    Trigger::AllCompleted
                },
                foreach: None,
                concurrency: None,
            })
            .collect();
        Workflow {
            tag: "t".into(),
            nodes,
            events: Default::default(),
        }
        .compile(usize::MAX)
        .unwrap()
    }

    fn dag(edges: &[Vec<usize>]) -> Dag {
        build(&edges.iter().map(|ps| n(ps)).collect::<Vec<_>>())
    }

    /// A gate answering from the test nodes' conditions.
    fn gate(nodes: &[N]) -> impl FnMut(usize) -> bool + '_ {
        move |c| {
            nodes[c]
                .cond
                .expect("asked only for nodes with a condition")
        }
    }

    fn no_conditions(_: usize) -> bool {
        unreachable!("no node has a condition")
    }

    #[test]
    fn seed_chain_counts_one_then_zero() {
        let d = dag(&[vec![], vec![0]]);
        let (mut s, st) = RunState::start(&d, &mut no_conditions);
        assert_eq!((s.counter(), st.activated), (1, vec![0]));
        let st = s.complete(&d, 0, &mut no_conditions).unwrap();
        assert_eq!(
            (st.activated.clone(), st.counter, st.finished),
            (vec![1], 1, false)
        );
        let st = s.complete(&d, 1, &mut no_conditions).unwrap();
        assert_eq!((st.counter, st.finished), (0, true));
        assert_eq!(s.status(), RunStatus::Completed);
    }

    #[test]
    fn diamond_waits_for_both_parents() {
        let d = dag(&[vec![], vec![0], vec![0], vec![1, 2]]);
        let (mut s, _) = RunState::start(&d, &mut no_conditions);
        let g = &mut no_conditions;
        assert_eq!(s.complete(&d, 0, g).unwrap().counter, 2);
        let st = s.complete(&d, 2, g).unwrap();
        assert!(st.activated.is_empty());
        assert_eq!(st.counter, 1);
        assert_eq!(s.complete(&d, 1, g).unwrap().activated, vec![3]);
        assert!(s.complete(&d, 3, g).unwrap().finished);
    }

    #[test]
    fn duplicates_and_strays_change_nothing() {
        let d = dag(&[vec![], vec![0]]);
        let (mut s, _) = RunState::start(&d, &mut no_conditions);
        let g = &mut no_conditions;
        assert_eq!(s.complete(&d, 1, g), Err(Rejected::NotActive));
        s.complete(&d, 0, g).unwrap();
        assert_eq!(s.complete(&d, 0, g), Err(Rejected::NotActive));
        assert_eq!(s.counter(), 1);
    }

    #[test]
    fn failure_cancels_siblings_and_unreached_nodes_and_ends_the_run() {
        let d = dag(&[vec![], vec![], vec![0, 1]]);
        let (mut s, _) = RunState::start(&d, &mut no_conditions);
        let ended = s.fail(0).unwrap();
        assert_eq!((ended.cancelled, ended.unreached), (vec![1], vec![2]));
        assert_eq!(s.status(), RunStatus::Failed);
        assert_eq!(s.counter(), 0);
        assert_eq!(
            s.complete(&d, 1, &mut no_conditions),
            Err(Rejected::RunEnded)
        );
        assert_eq!(s.cancel(), Err(Rejected::RunEnded));
    }

    #[test]
    fn restore_derives_the_counter() {
        let d = dag(&[vec![], vec![0], vec![0], vec![1, 2]]);
        let (mut s, _) = RunState::start(&d, &mut no_conditions);
        s.complete(&d, 0, &mut no_conditions).unwrap();
        s.complete(&d, 1, &mut no_conditions).unwrap();
        let mut r = RunState::restore(&d, RunStatus::Running, s.nodes().to_vec());
        assert_eq!(r.counter(), 1);
        assert_eq!(
            r.complete(&d, 2, &mut no_conditions).unwrap().activated,
            vec![3]
        );
    }

    /// search → (found: when true | nothing: when false) → join (any_completed)
    #[test]
    fn if_else_with_a_join() {
        let nodes = [
            n(&[]),
            N {
                cond: Some(true),
                ..n(&[0])
            },
            N {
                cond: Some(false),
                ..n(&[0])
            },
            N {
                any: true,
                ..n(&[1, 2])
            },
        ];
        let d = build(&nodes);
        let (mut s, _) = RunState::start(&d, &mut gate(&nodes));
        let st = s.complete(&d, 0, &mut gate(&nodes)).unwrap();
        assert_eq!(st.activated, vec![1]);
        assert_eq!(st.skipped, vec![(2, SkipReason::Condition)]);
        assert_eq!(st.counter, 1);
        let st = s.complete(&d, 1, &mut gate(&nodes)).unwrap();
        assert_eq!((st.activated.clone(), st.counter), (vec![3], 1));
        assert!(s.complete(&d, 3, &mut gate(&nodes)).unwrap().finished);
        assert_eq!(s.nodes()[2], NodeStatus::Skipped);
        // Restored with the skip: the join still waits for the other branch.
        let r = RunState::restore(
            &d,
            RunStatus::Running,
            vec![
                NodeStatus::Completed,
                NodeStatus::Active,
                NodeStatus::Skipped,
                NodeStatus::Waiting,
            ],
        );
        assert_eq!(r.counter(), 1);
    }

    #[test]
    fn skips_cascade_and_a_run_of_skipped_nodes_completes() {
        // n0 (when false) → n1 → n2; n3 (any_completed of n1, n4); n4 entry, when false.
        let nodes = [
            N {
                cond: Some(false),
                ..n(&[])
            },
            n(&[0]),
            n(&[1]),
            N {
                any: true,
                ..n(&[1, 4])
            },
            N {
                cond: Some(false),
                ..n(&[])
            },
        ];
        let d = build(&nodes);
        let (s, st) = RunState::start(&d, &mut gate(&nodes));
        assert!(st.activated.is_empty());
        assert!(st.finished);
        assert_eq!(s.status(), RunStatus::Completed);
        assert_eq!(
            st.skipped,
            vec![
                (0, SkipReason::Condition),
                (4, SkipReason::Condition),
                (1, SkipReason::ParentSkipped(0)),
                (2, SkipReason::ParentSkipped(1)),
                (3, SkipReason::NoParentCompleted),
            ]
        );
        assert!(s.nodes().iter().all(|&x| x == NodeStatus::Skipped));
    }

    #[test]
    fn unknown_conditions_are_found_round_by_round() {
        // n0 → n1 (when false) → n2 (when): a skipped n1 skips n2 without
        // asking. n0 → n3 (when false); n4 joins n1 and n3 (any_completed)
        // and is skipped too once both conditions are known.
        let nodes = [
            n(&[]),
            N {
                cond: Some(false),
                ..n(&[0])
            },
            N {
                cond: Some(true),
                ..n(&[1])
            },
            N {
                cond: Some(false),
                ..n(&[0])
            },
            N {
                any: true,
                ..n(&[1, 3])
            },
        ];
        let d = build(&nodes);
        let (mut s, _) = RunState::start(&d, &mut gate(&nodes));
        let mut known = std::collections::HashMap::new();
        let need = s.unknown_conditions(
            |c| known.get(&c).copied(),
            |s, g| {
                let _ = s.complete(&d, 0, g);
            },
        );
        assert_eq!(need, vec![1, 3]);
        known.extend(need.iter().map(|&c| (c, nodes[c].cond.unwrap())));
        let need = s.unknown_conditions(
            |c| known.get(&c).copied(),
            |s, g| {
                let _ = s.complete(&d, 0, g);
            },
        );
        assert!(need.is_empty(), "{need:?}");
        let st = s.complete(&d, 0, &mut |c| known[&c]).unwrap();
        assert!(st.finished);
        assert_eq!(st.skipped.len(), 4);
    }

    /// Random workflow: node i may depend on any earlier node, join with
    /// `any_completed`, and have a condition with a fixed outcome.
    fn arb_nodes() -> impl Strategy<Value = Vec<N>> {
        (1usize..24).prop_flat_map(|len| {
            (0..len)
                .map(|i| {
                    (
                        proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4)),
                        any::<bool>(),
                        prop_oneof![2 => Just(None), 1 => Just(Some(true)), 1 => Just(Some(false))],
                    )
                        .prop_map(|(parents, any, cond)| N {
                            parents,
                            any,
                            cond,
                        })
                })
                .collect::<Vec<_>>()
        })
    }

    /// What each node must end as, whatever the order: decided in
    /// topological order from its parents' outcomes, trigger and condition.
    fn oracle(nodes: &[N]) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = Vec::new();
        for t in nodes {
            let done = t
                .parents
                .iter()
                .filter(|&&p| out[p] == NodeStatus::Completed)
                .count();
            let trigger_ok = t.parents.is_empty()
                || if t.any {
                    done > 0
                } else {
                    done == t.parents.len()
                };
            out.push(if trigger_ok && t.cond != Some(false) {
                NodeStatus::Completed
            } else {
                NodeStatus::Skipped
            });
        }
        out
    }

    /// A gate that also checks it is asked once per node at most, and only
    /// for nodes whose trigger let them run.
    fn checked_gate<'a>(
        nodes: &'a [N],
        asked: &'a mut [bool],
        state: &'a [NodeStatus],
    ) -> impl FnMut(usize) -> bool + 'a {
        move |c| {
            assert!(!std::mem::replace(&mut asked[c], true), "n{c} asked twice");
            let t = &nodes[c];
            let completed = t
                .parents
                .iter()
                .filter(|&&p| state[p] == NodeStatus::Completed || state[p] == NodeStatus::Active)
                .count();
            assert!(
                t.parents.is_empty() || completed > 0,
                "n{c} asked with no parent completed"
            );
            t.cond.expect("asked only for nodes with a condition")
        }
    }

    proptest! {
        #[test]
        fn counter_invariant_holds_with_conditions_triggers_and_duplicates(
            nodes in arb_nodes(),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 64),
            dups in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let d = build(&nodes);
            let mut asked = vec![false; d.len()];
            let snapshot = vec![NodeStatus::Waiting; d.len()];
            let (mut s, st) = RunState::start(&d, &mut checked_gate(&nodes, &mut asked, &snapshot));
            // Every node ends exactly once: completed by us, or skipped by a step.
            let mut ended = vec![0u32; d.len()];
            let mut activated = vec![false; d.len()];
            let mut finished_signals = u32::from(st.finished);
            let track = |st: &Step, ended: &mut [u32], activated: &mut [bool]| {
                for &a in &st.activated {
                    assert!(!std::mem::replace(&mut activated[a], true), "n{a} activated twice");
                }
                for &(k, _) in &st.skipped {
                    assert!(!activated[k], "a skipped node held a token");
                    ended[k] += 1;
                }
            };
            track(&st, &mut ended, &mut activated);
            let mut pick = picks.iter().cycle();
            let mut dup = dups.iter().cycle();
            while !s.status().is_terminal() {
                let active = s.active();
                prop_assert!(!active.is_empty(), "stuck with nodes left");
                prop_assert_eq!(s.counter() as usize, active.len());
                let i = active[pick.next().unwrap().index(active.len())];
                // Trying the step changes nothing, and asks only about conditions.
                let before = s.clone();
                let need = s.unknown_conditions(|_| None, |s, g| {
                    let _ = s.complete(&d, i, g);
                });
                prop_assert_eq!(&s, &before);
                prop_assert!(need.iter().all(|&c| nodes[c].cond.is_some()));
                let snapshot = s.nodes().to_vec();
                let st = s.complete(&d, i, &mut checked_gate(&nodes, &mut asked, &snapshot)).unwrap();
                ended[i] += 1;
                track(&st, &mut ended, &mut activated);
                if st.finished { finished_signals += 1; }
                let left = s.nodes().iter().filter(|x| !x.is_done()).count();
                prop_assert_eq!(st.counter == 0, left == 0, "counter 0 before the end");
                prop_assert_eq!(st.counter, s.counter());
                if *dup.next().unwrap() {
                    // A duplicate completion (worker retry, redelivery) changes nothing.
                    let before = (s.counter(), s.nodes().to_vec());
                    let err = s.complete(&d, i, &mut |_| unreachable!()).unwrap_err();
                    prop_assert_eq!(err, if s.status().is_terminal() { Rejected::RunEnded } else { Rejected::NotActive });
                    prop_assert_eq!((s.counter(), s.nodes().to_vec()), before);
                }
            }
            prop_assert_eq!(finished_signals, 1);
            prop_assert!(ended.iter().all(|&x| x == 1), "{:?}", ended);
            prop_assert_eq!(s.status(), RunStatus::Completed);
            prop_assert_eq!(s.nodes().to_vec(), oracle(&nodes));
        }

        #[test]
        fn every_run_ends_once_and_every_node_ends_once(
            nodes in arb_nodes(),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 64),
            fail_at in 0usize..30,
            cancel in any::<bool>(),
        ) {
            let d = build(&nodes);
            let (mut s, st) = RunState::start(&d, &mut gate(&nodes));
            let mut pick = picks.iter().cycle();
            let mut terminal = u32::from(st.finished);
            let mut ended = vec![0u32; d.len()];
            for &(k, _) in &st.skipped { ended[k] += 1; }
            for step in 0.. {
                if s.status().is_terminal() { break; }
                let active = s.active();
                let i = active[pick.next().unwrap().index(active.len())];
                if step == fail_at {
                    let e = if cancel { s.cancel() } else { s.fail(i) };
                    let e = e.unwrap();
                    if !cancel { ended[i] += 1; }
                    for k in e.cancelled.iter().chain(&e.unreached) { ended[*k] += 1; }
                    prop_assert!(!e.cancelled.contains(&i) || cancel);
                    terminal += 1;
                } else {
                    let st = s.complete(&d, i, &mut gate(&nodes)).unwrap();
                    ended[i] += 1;
                    for &(k, _) in &st.skipped { ended[k] += 1; }
                    terminal += u32::from(st.finished);
                }
            }
            prop_assert_eq!(terminal, 1);
            prop_assert_eq!(s.counter(), 0);
            prop_assert!(ended.iter().all(|&x| x == 1), "{:?}", ended);
            prop_assert!(s.nodes().iter().all(|x| !matches!(x, NodeStatus::Waiting | NodeStatus::Active)));
            prop_assert!(s.fail(0).is_err() && s.cancel().is_err() && s.complete(&d, 0, &mut gate(&nodes)).is_err());
        }
    }
}
