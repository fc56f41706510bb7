//! Ctrl-C while a test runs, in two stages, the same for `pacer run` and a controller's fleet:
//! the first stops gracefully (in-flight iterations get their `gracefulStop`, the summary is
//! still printed), the second aborts. Written once so the two cannot drift apart.

use std::future::Future;

use tokio::task::JoinHandle;

/// Who the first Ctrl-C stops, for the line it prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopping {
    /// This process's own run (`pacer run`).
    ThisRun,
    /// Every worker of a controller's test.
    EveryWorker,
}

impl Stopping {
    /// The line printed on the first Ctrl-C (after a newline, so it does not join a progress
    /// line).
    fn line(self) -> &'static str {
        match self {
            Self::ThisRun => {
                "\nstopping: in-flight iterations get their gracefulStop (Ctrl-C again to abort)"
            }
            Self::EveryWorker => {
                "\nstopping every worker: in-flight iterations get their gracefulStop (Ctrl-C again to abort)"
            }
        }
    }
}

/// Watch for Ctrl-C until the returned task is aborted: `stop` on the first, `abort` on the
/// second.
pub fn on_ctrl_c(
    stopping: Stopping,
    stop: impl FnOnce() + Send + 'static,
    abort: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(two_stages(
        || async { tokio::signal::ctrl_c().await.is_ok() },
        stopping,
        stop,
        abort,
    ))
}

/// The two stages over any source of interrupts (`false`: no more will come).
async fn two_stages<F, Fut>(
    mut interrupted: F,
    stopping: Stopping,
    stop: impl FnOnce(),
    abort: impl FnOnce(),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !interrupted().await {
        return;
    }
    eprintln!("{}", stopping.line());
    stop();
    if interrupted().await {
        eprintln!("aborting");
        abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn the_first_interrupt_stops_and_the_second_aborts() {
        let signal = Arc::new(Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let aborted = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(two_stages(
            {
                let signal = signal.clone();
                move || {
                    let signal = signal.clone();
                    async move {
                        signal.notified().await;
                        true
                    }
                }
            },
            Stopping::ThisRun,
            {
                let stopped = stopped.clone();
                move || stopped.store(true, Ordering::SeqCst)
            },
            {
                let aborted = aborted.clone();
                move || aborted.store(true, Ordering::SeqCst)
            },
        ));
        signal.notify_one();
        while !stopped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!aborted.load(Ordering::SeqCst), "one Ctrl-C only stops");
        signal.notify_one();
        task.await.unwrap();
        assert!(aborted.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn no_interrupt_neither_stops_nor_aborts() {
        let called = Arc::new(AtomicBool::new(false));
        let (stop, abort) = (called.clone(), called.clone());
        two_stages(
            || async { false },
            Stopping::EveryWorker,
            move || stop.store(true, Ordering::SeqCst),
            move || abort.store(true, Ordering::SeqCst),
        )
        .await;
        assert!(!called.load(Ordering::SeqCst));
    }

    #[test]
    fn the_first_line_says_who_stops() {
        assert!(Stopping::ThisRun.line().starts_with("\nstopping: "));
        assert!(
            Stopping::EveryWorker
                .line()
                .starts_with("\nstopping every worker: ")
        );
    }
}
