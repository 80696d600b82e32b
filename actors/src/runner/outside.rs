//! The runner's part in work done outside: notices that a wait changed
//! (from `outside::listen`) go to the run actor holding that run.

use actix::prelude::*;

use super::Runner;
use crate::run::CheckWaits;

/// A wait of a run changed (a worker's report, a decision, a signal, a
/// claim); `run_id: None`: notices may have been missed, every live run
/// looks at all its waits.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct WaitsChanged {
    /// The run, or every live run.
    pub run_id: Option<String>,
    /// The node whose wait changed, when known.
    pub node: Option<usize>,
}

impl WaitsChanged {
    /// Every live run looks at all its waits.
    pub fn everything() -> Self {
        Self {
            run_id: None,
            node: None,
        }
    }
}

impl Handler<WaitsChanged> for Runner {
    type Result = ();

    fn handle(&mut self, msg: WaitsChanged, _ctx: &mut Self::Context) {
        match msg.run_id {
            Some(run_id) => {
                if let Some(a) = self.runs.get(&run_id) {
                    a.do_send(CheckWaits { node: msg.node });
                }
            }
            None => {
                for a in self.runs.values() {
                    a.do_send(CheckWaits { node: None });
                }
            }
        }
    }
}
