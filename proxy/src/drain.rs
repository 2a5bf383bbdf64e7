//! Graceful shutdown: a signal that tells every listener and connection to wind down, and a
//! count of who is still working so shutdown can wait for them (up to a deadline).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The owner's side: trigger the drain and wait for it.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
    // Every `Watch` holds a sender clone; when `recv` yields `None`, all of them are gone.
    done_rx: mpsc::Receiver<()>,
}

/// A participant's side: learn that draining started, and keep shutdown waiting while held.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _held: mpsc::Sender<()>,
}

/// Creates a connected pair.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    (Signal { tx, done_rx }, Watch { rx, _held: done_tx })
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every participant finished.
    Drained,
    /// The deadline passed with work still running.
    DeadlineExceeded,
}

impl Signal {
    /// Tells all participants to drain and waits until they all have, or `deadline` passes.
    pub async fn drain(mut self, deadline: Duration) -> Outcome {
        let _ = self.tx.send(true);
        match tokio::time::timeout(deadline, self.done_rx.recv()).await {
            Ok(_) => Outcome::Drained,
            Err(_) => Outcome::DeadlineExceeded,
        }
    }
}

impl Watch {
    /// Resolves once draining has started.
    ///
    /// A connection's task polls this next to the connection on every wake-up, several times
    /// per request, and polling tokio's waiting `Notified` again takes its lock each time. So
    /// once its waker is registered, the wait is polled again only when the signal's version
    /// moved (one atomic load) or the task's waker changed; draining wakes the same waker, so
    /// nothing is missed.
    pub async fn signaled(&mut self) {
        let probe = self.rx.clone();
        // An error means the Signal was dropped, which also means "stop".
        let mut wait = pin!(self.rx.wait_for(|draining| *draining));
        let mut registered: Option<Waker> = None;
        poll_fn(|cx| {
            let unchanged = matches!(probe.has_changed(), Ok(false));
            if unchanged && registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            registered = Some(cx.waker().clone());
            wait.as_mut().poll(cx).map(|_| ())
        })
        .await
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// A view that reports draining without keeping shutdown waiting (for `/ready`).
    pub fn observer(&self) -> Observer {
        Observer(self.rx.clone())
    }
}

/// Sees whether draining started, but does not count as outstanding work.
#[derive(Clone, Debug)]
pub struct Observer(watch::Receiver<bool>);

impl Observer {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_watchers() {
        let (signal, watch) = channel();
        let mut w = watch.clone();
        drop(watch);
        let worker = tokio::spawn(async move {
            w.signaled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(w);
        });
        assert_eq!(signal.drain(Duration::from_secs(5)).await, Outcome::Drained);
        worker.await.expect("worker");
    }

    /// The connection side: `signaled` polled over and over next to other work (as `select!`
    /// does on every wake-up), then the drain starts and must be seen.
    #[tokio::test]
    async fn signaled_polled_many_times_still_sees_the_drain() {
        let (signal, watch) = channel();
        let mut w = watch.clone();
        drop(watch);
        let worker = tokio::spawn(async move {
            let mut ticks = 0u32;
            {
                let mut signaled = pin!(w.signaled());
                loop {
                    tokio::select! {
                        _ = signaled.as_mut() => break,
                        _ = tokio::task::yield_now() => ticks += 1,
                    }
                }
            }
            drop(w);
            ticks
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(signal.drain(Duration::from_secs(5)).await, Outcome::Drained);
        assert!(
            worker.await.expect("worker") > 0,
            "the drain came after other work"
        );
    }

    /// A drain signalled before the first poll, and the signal's owner gone: both end the wait.
    #[tokio::test]
    async fn signaled_before_the_first_poll_and_after_the_owner_left() {
        let (signal, mut watch) = channel();
        let _ = signal.tx.send(true);
        watch.signaled().await;
        let (signal, mut watch) = channel();
        drop(signal);
        watch.signaled().await;
    }

    #[tokio::test]
    async fn deadline() {
        let (signal, watch) = channel();
        assert_eq!(
            signal.drain(Duration::from_millis(20)).await,
            Outcome::DeadlineExceeded
        );
        drop(watch);
    }
}
