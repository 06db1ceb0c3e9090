//! The path from the router to one driver: a queue that costs nothing while empty.
//!
//! A channel would do, but tokio's allocates a block of 32 slots per channel up front (about
//! 8 KiB of `Output`s), which an idle connection would carry for its whole life. This queue
//! allocates only while something waits in it, takes one lock per batch from the router and one
//! per wake-up of the driver, and tracks the bytes waiting so that a slow consumer's QoS 0
//! messages can be dropped.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use bulwark_core::Output;
use bulwark_proto::{QoS, ReasonCode};

use crate::sync::lock;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Output>,
    /// Payload and topic bytes of the PUBLISH packets in `queue`.
    backlog: usize,
    /// Set when the engine closed the connection because its client broke the protocol or a
    /// limit: the reason code it was closed with.
    offence: Option<ReasonCode>,
    /// The router waits for this connection to forward what it has received (a takeover of
    /// its client identifier): answered with `ToRouter::Drained`.
    drain: bool,
    /// Something was pushed or asked since the driver last looked.
    signalled: bool,
    /// The driver waiting in [`Outbox::ready`]. A waker here rather than a `Notify`: the
    /// driver's wait is then a pointer in its future instead of a waiter node, which every
    /// idle connection would carry.
    waker: Option<Waker>,
}

impl State {
    /// Marks something to look at; the waker to wake once the lock is released.
    fn signal(&mut self) -> Option<Waker> {
        self.signalled = true;
        self.waker.take()
    }
}

/// Outputs waiting for one driver.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
}

/// Bytes a packet adds to a connection's backlog.
fn cost(output: &Output) -> usize {
    match output {
        Output::Publish(p) => p.publish.payload.len() + p.publish.topic.as_str().len(),
        Output::Packet(_) | Output::Accepted(_) | Output::Close => 0,
    }
}

impl Outbox {
    /// Appends `outputs` and wakes the driver. QoS 0 messages that find more than
    /// `max_backlog` bytes waiting are dropped; returns how many were.
    pub(crate) fn push(&self, outputs: &mut Vec<Output>, max_backlog: usize) -> u64 {
        let mut dropped = 0;
        let waker = {
            let mut state = lock(&self.state);
            let batch_cost: usize = outputs.iter().map(cost).sum();
            if state.queue.is_empty() && batch_cost <= max_backlog {
                // The common case: the driver took everything already and the batch drops
                // nothing. It becomes the queue as it is (no copy, no allocation); the
                // caller's buffer starts afresh.
                state.backlog = batch_cost;
                state.queue = VecDeque::from(std::mem::take(outputs));
                let waker = state.signal();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return 0;
            }
            for output in outputs.drain(..) {
                let qos0 =
                    matches!(&output, Output::Publish(p) if p.publish.qos == QoS::AtMostOnce);
                if qos0 && state.backlog > max_backlog {
                    dropped += 1;
                    continue;
                }
                state.backlog += cost(&output);
                state.queue.push_back(output);
            }
            state.signal()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        dropped
    }

    /// Takes everything waiting (nothing allocated is left behind).
    pub(crate) fn take(&self) -> VecDeque<Output> {
        let mut state = lock(&self.state);
        state.backlog = 0;
        std::mem::take(&mut state.queue)
    }

    /// Records that the engine closed this connection for `code`, an offence of its client.
    pub(crate) fn mark_offence(&self, code: ReasonCode) {
        lock(&self.state).offence = Some(code);
    }

    /// The offence recorded by [`Outbox::mark_offence`], if any.
    pub(crate) fn offence(&self) -> Option<ReasonCode> {
        lock(&self.state).offence
    }

    /// Asks the driver to forward what its client has sent so far, then say so.
    pub(crate) fn request_drain(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.drain = true;
            state.signal()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether a drain was asked for since the last call.
    pub(crate) fn take_drain(&self) -> bool {
        std::mem::take(&mut lock(&self.state).drain)
    }

    /// Resolves once something has been pushed (or a drain asked for) since it last resolved.
    /// Cancel safe: a signal that comes while nobody waits is kept for the next wait.
    pub(crate) fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            if std::mem::take(&mut state.signalled) {
                return Poll::Ready(());
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use bulwark_proto::{Publish, TopicName};
    use bytes::Bytes;

    fn publish(qos: QoS, len: usize) -> Output {
        let mut p = Publish::new(TopicName::new("t").unwrap(), Bytes::from(vec![0; len]));
        p.qos = qos;
        if qos != QoS::AtMostOnce {
            p.packet_id = bulwark_proto::PacketId::new(1);
        }
        Output::Publish(bulwark_core::OutgoingPublish {
            packet_id: p.packet_id,
            publish: std::sync::Arc::new(p),
            dup: false,
        })
    }

    #[test]
    fn qos0_is_dropped_over_the_backlog_but_qos1_and_close_are_not() {
        let outbox = Outbox::default();
        let mut batch = vec![publish(QoS::AtMostOnce, 99), publish(QoS::AtMostOnce, 10)];
        // The first fits (the backlog was empty), the second finds 100 bytes waiting.
        assert_eq!(outbox.push(&mut batch, 50), 1);
        let mut batch = vec![
            publish(QoS::AtMostOnce, 1),
            publish(QoS::AtLeastOnce, 1),
            Output::Close,
        ];
        assert_eq!(outbox.push(&mut batch, 50), 1);
        assert!(batch.is_empty());
        let taken = outbox.take();
        assert_eq!(taken.len(), 3);
        assert_eq!(taken.back(), Some(&Output::Close));
        // Taking resets the backlog.
        let mut batch = vec![publish(QoS::AtMostOnce, 1)];
        assert_eq!(outbox.push(&mut batch, 50), 0);
    }

    /// A driver already waiting is woken by a push and by a drain request, once each.
    #[tokio::test]
    async fn a_waiting_driver_is_woken() {
        let outbox = std::sync::Arc::new(Outbox::default());
        let second = std::time::Duration::from_secs(5);
        for push in [true, false] {
            let waiter = {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.ready().await })
            };
            tokio::task::yield_now().await;
            if push {
                outbox.push(&mut vec![Output::Close], 0);
            } else {
                outbox.request_drain();
            }
            tokio::time::timeout(second, waiter).await.unwrap().unwrap();
        }
        assert!(outbox.take_drain());
        assert_eq!(outbox.take().len(), 1);
        // Both signals were consumed: the next wait waits.
        let mut wait = std::pin::pin!(outbox.ready());
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let outbox = Outbox::default();
        outbox.push(&mut vec![Output::Close], 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready())
            .await
            .unwrap();
        assert_eq!(outbox.take().len(), 1);
    }
}
