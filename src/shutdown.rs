//! The one way a command is told to stop: a [`Shutdown`] handle, passed in (`main` makes one
//! from SIGINT/SIGTERM with [`on_signals`], a test from [`channel`]) and cloned into every task
//! that must stop: fetchers, processors, the enrichment refresh, the producer's reader.
//!
//! A stop is requested when the trigger fires **or is dropped**, so a task can never outlive
//! the command that started it by waiting on a trigger nobody holds.

use tokio::sync::watch;

/// Fires the stop request of its [`Shutdown`] handles (also when dropped).
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A stop request shared by the tasks of one command. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A trigger and the handle it fires.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Another handle fired by this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A handle that never fires (its trigger is kept alive for the life of the process).
    pub fn never() -> Shutdown {
        let (trigger, shutdown) = channel();
        std::mem::forget(trigger);
        shutdown
    }

    /// Whether a stop was requested (or the trigger is gone).
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves when a stop is requested.
    pub async fn requested(&mut self) {
        loop {
            if *self.rx.borrow_and_update() {
                return;
            }
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// [`requested`](Self::requested) as an owned future (for `select!` and APIs that take one).
    pub async fn wait(mut self) {
        self.requested().await
    }
}

/// A handle fired by the first SIGINT or SIGTERM; a second one exits the process at once (130).
///
/// The handlers are installed when this is called, not when the handle is first awaited: a
/// command looks at it only once its main loop runs, and until a handler is installed a SIGINT
/// would kill the process without draining. Must be called inside the runtime.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    match Signals::install() {
        Ok(mut signals) => {
            tokio::spawn(async move {
                signals.next().await;
                tracing::info!("Signal received: stopping cleanly (send it again to exit at once)");
                trigger.trigger();
                signals.next().await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot install the SIGINT/SIGTERM handlers; Ctrl-C will stop the process without draining");
            std::mem::forget(trigger);
        }
    }
    shutdown
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_trigger_and_on_drop() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        assert!(!a.is_requested());
        trigger.trigger();
        a.requested().await;
        assert!(shutdown.is_requested());

        let (trigger, mut b) = channel();
        drop(trigger);
        b.requested().await;
        assert!(b.is_requested());

        let never = Shutdown::never();
        assert!(!never.is_requested());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.wait()).await;
        assert!(waited.is_err());
    }
}
