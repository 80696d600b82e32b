//! The items of a `foreach` node: which to start, which are done, and the
//! output once all are.
//!
//! A `foreach` node holds one token in the counter (`counter`) however many
//! items it runs; this is the bookkeeping inside that token. Items start in
//! index order, at most `concurrency` at a time; each finishes once (a
//! duplicate is refused and changes nothing), and the node's output is the
//! array of item outputs in item order, whatever order they finished in. A
//! resumed run starts from the items already durable and never starts them
//! again. Pure: the run actor executes the items and persists each one.

use serde_json::Value;

use crate::counter::Rejected;

/// The items of one `foreach` node.
#[derive(Debug, Clone)]
pub struct Items {
    outputs: Vec<Option<Value>>,
    running: Vec<bool>,
    running_count: usize,
    /// The lowest index that may not have started yet.
    next: usize,
    done: usize,
}

impl Items {
    /// `total` items, of which `finished` are durable already.
    pub fn new(total: usize, finished: impl IntoIterator<Item = (usize, Value)>) -> Self {
        let mut outputs = vec![None; total];
        let mut done = 0;
        for (i, v) in finished {
            if let Some(slot) = outputs.get_mut(i) {
                done += usize::from(slot.is_none());
                *slot = Some(v);
            }
        }
        Self {
            outputs,
            running: vec![false; total],
            running_count: 0,
            next: 0,
            done,
        }
    }

    /// Items in all.
    pub fn total(&self) -> usize {
        self.outputs.len()
    }

    /// Items finished.
    pub fn done(&self) -> usize {
        self.done
    }

    /// True once every item has finished.
    pub fn is_complete(&self) -> bool {
        self.done == self.total()
    }

    /// Items running now.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.total()).filter(|&i| self.running[i])
    }

    /// Marks the next items as running, up to `concurrency` running in
    /// all, and returns them.
    pub fn start(&mut self, concurrency: usize) -> Vec<usize> {
        let mut started = Vec::new();
        while self.running_count < concurrency && self.next < self.total() {
            let i = self.next;
            self.next += 1;
            if self.outputs[i].is_none() && !self.running[i] {
                self.running[i] = true;
                self.running_count += 1;
                started.push(i);
            }
        }
        started
    }

    /// Item `i` finished with `out`. Answers whether every item has now.
    pub fn finish(&mut self, i: usize, out: Value) -> Result<bool, Rejected> {
        if !self.running.get(i).copied().unwrap_or(false) {
            return Err(Rejected::NotActive);
        }
        self.running[i] = false;
        self.running_count -= 1;
        self.outputs[i] = Some(out);
        self.done += 1;
        Ok(self.is_complete())
    }

    /// The node's output: the item outputs in item order (`null` for an
    /// item not finished, which a complete node has none of).
    pub fn output(&self) -> Value {
        Value::Array(
            self.outputs
                .iter()
                .map(|o| o.clone().unwrap_or(Value::Null))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn items_start_in_order_within_the_concurrency() {
        let mut it = Items::new(5, []);
        assert_eq!(it.start(2), vec![0, 1]);
        assert_eq!(it.start(2), Vec::<usize>::new());
        assert_eq!(it.finish(1, json!("b")), Ok(false));
        assert_eq!(it.finish(1, json!("b")), Err(Rejected::NotActive));
        assert_eq!(it.start(2), vec![2]);
        for i in [0, 2] {
            it.finish(i, json!(i)).unwrap();
        }
        assert_eq!(it.start(2), vec![3, 4]);
        it.finish(4, json!(4)).unwrap();
        assert_eq!(it.finish(3, json!(3)), Ok(true));
        assert_eq!(it.output(), json!([0, "b", 2, 3, 4]));
    }

    #[test]
    fn a_resumed_node_skips_durable_items() {
        let mut it = Items::new(4, [(0, json!("a")), (2, json!("c"))]);
        assert_eq!((it.done(), it.total()), (2, 4));
        assert_eq!(it.start(16), vec![1, 3]);
        it.finish(3, json!("d")).unwrap();
        assert!(it.finish(1, json!("b")).unwrap());
        assert_eq!(it.output(), json!(["a", "b", "c", "d"]));
        // An empty foreach is complete at once.
        assert!(Items::new(0, []).is_complete());
        assert_eq!(Items::new(0, []).output(), json!([]));
    }

    proptest! {
        #[test]
        fn every_item_runs_once_and_the_output_keeps_item_order(
            total in 0usize..60,
            durable in proptest::collection::vec(any::<bool>(), 60),
            concurrency in 1usize..20,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 64),
            dups in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let finished: Vec<(usize, Value)> =
                (0..total).filter(|&i| durable[i]).map(|i| (i, json!(i))).collect();
            let mut it = Items::new(total, finished.clone());
            let mut started = vec![0u32; total];
            let mut completions = u32::from(it.is_complete());
            let (mut pick, mut dup) = (picks.iter().cycle(), dups.iter().cycle());
            loop {
                for i in it.start(concurrency) {
                    started[i] += 1;
                }
                let running: Vec<usize> = it.running().collect();
                prop_assert!(running.len() <= concurrency);
                if running.is_empty() {
                    break;
                }
                let i = running[pick.next().unwrap().index(running.len())];
                if it.finish(i, json!(i)).unwrap() {
                    completions += 1;
                }
                if *dup.next().unwrap() {
                    let before = it.done();
                    prop_assert_eq!(it.finish(i, json!("again")), Err(Rejected::NotActive));
                    prop_assert_eq!(it.done(), before);
                }
            }
            prop_assert_eq!(completions, 1);
            prop_assert!(it.is_complete());
            for i in 0..total {
                prop_assert_eq!(started[i], u32::from(!durable[i]), "item {}", i);
            }
            prop_assert_eq!(it.output(), Value::Array((0..total).map(|i| json!(i)).collect()));
        }
    }
}
