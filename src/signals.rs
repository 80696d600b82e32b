//! The daemon's process edge: runs [`flowcast::serve`] on an actix system and
//! turns SIGTERM/SIGINT into its shutdown token. The first signal starts the
//! drain; a second one exits at once (status 130), for an operator who does
//! not want to wait for the grace period.

use flowcast::config::ServeConfig;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Runs the daemon until a signal has drained it.
pub fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let system = actix_rt::System::new();
    let r = system.block_on(async move {
        let shutdown = CancellationToken::new();
        // Listen from the start: a signal during start-up, or a second one
        // sent right after the first, is never missed (nor fatal).
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                let token = shutdown.clone();
                actix_rt::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    log::info!("signal received: draining; a second signal exits at once");
                    token.cancel();
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    log::warn!("second signal: exiting now");
                    std::process::exit(130);
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("cannot listen for signals ({e}); the daemon runs until killed")
            }
        }
        flowcast::serve(cfg, shutdown).await
    });
    if r.is_err() {
        // Start-up failed with actors possibly created but never polled:
        // dropping the runtime would start them outside it (a panic that
        // hides the error). The process is exiting; let it go unfreed.
        std::mem::forget(system);
    }
    r
}
