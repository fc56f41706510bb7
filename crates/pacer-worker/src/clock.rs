//! Where the controller's clock stands against ours, and so when the fleet's common start is
//! on this worker's clock. NTP-style: of a few Ping/Pong exchanges, the one with the smallest
//! round trip tells best (its reply waited least on the way, so the controller's reading sits
//! nearest the middle of it). The arithmetic is pure ([`ClockSync`]) and tested on numbers;
//! [`measure`] only does the exchanges.

use std::time::Duration;

use pacer_proto::{controller_message::Body as In, worker_message::Body as Out};
use tokio::time::Instant;

use crate::WorkerError;
use crate::session::{End, Tx, next, send};

/// Ping/Pong exchanges before Ready: enough that one of them likely meets a quiet network
/// (the smallest round trip sets the clock offset), few enough to add only milliseconds.
pub(crate) const PINGS: usize = 8;

/// One Ping/Pong exchange: our clock when the Ping left and the Pong came back (microseconds
/// since the worker's epoch), and the controller's clock when it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) sent_us: u64,
    pub(crate) received_us: u64,
    pub(crate) controller_us: u64,
}

impl Sample {
    fn rtt(&self) -> Duration {
        Duration::from_micros(self.received_us.saturating_sub(self.sent_us))
    }

    /// The controller's clock minus ours, microseconds, taking its reading to be at the
    /// middle of the round trip.
    fn offset_us(&self) -> i128 {
        let mid = (i128::from(self.sent_us) + i128::from(self.received_us)) / 2;
        i128::from(self.controller_us) - mid
    }
}

/// The best of the samples seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClockSync {
    best: Option<Sample>,
}

impl ClockSync {
    /// Keep `s` if its round trip is the smallest yet.
    pub(crate) fn observe(&mut self, s: Sample) {
        if self.best.is_none_or(|b| s.rtt() < b.rtt()) {
            self.best = Some(s);
        }
    }

    /// The smallest round trip seen; `Duration::MAX` before any.
    pub(crate) fn rtt(&self) -> Duration {
        self.best.map_or(Duration::MAX, |b| b.rtt())
    }

    /// The controller's clock minus ours, microseconds, from the best sample.
    pub(crate) fn offset_us(&self) -> Option<i128> {
        self.best.map(|b| b.offset_us())
    }

    /// When to start, as time since the worker's epoch. A Start names the instant on the
    /// controller's clock (`start_at_us`, mapped onto ours by the offset; before the epoch
    /// means now) and how long until it when the Start was queued (`start_in`): without an
    /// offset, or from a controller that sends no instant, the Start left about half a round
    /// trip before it was `received`.
    pub(crate) fn start_since_epoch(
        &self,
        start_at_us: u64,
        start_in: Duration,
        received: Duration,
    ) -> Duration {
        match self.offset_us() {
            Some(offset) if start_at_us > 0 => {
                let local_us = i128::from(start_at_us) - offset;
                Duration::from_micros(u64::try_from(local_us.max(0)).unwrap_or(0))
            }
            _ => received + start_in.saturating_sub(self.rtt() / 2),
        }
    }
}

/// Exchange [`PINGS`] Ping/Pongs, timing them from `epoch`. `Ok(None)`: the controller said
/// Stop or Abort meanwhile.
pub(crate) async fn measure(
    tx: &Tx,
    inbound: &mut crate::served::Inbound,
    peer_timeout: Duration,
    epoch: Instant,
) -> Result<Option<ClockSync>, End> {
    let mut clock = ClockSync::default();
    for _ in 0..PINGS {
        let sent_us = epoch.elapsed().as_micros() as u64;
        send(tx, Out::Ping(pacer_proto::Ping { sent_us })).await?;
        loop {
            match next(inbound, peer_timeout).await? {
                In::Pong(p) if p.sent_us == sent_us => {
                    clock.observe(Sample {
                        sent_us,
                        received_us: epoch.elapsed().as_micros() as u64,
                        controller_us: p.controller_us,
                    });
                    break;
                }
                In::Pong(_) | In::Heartbeat(_) => {}
                In::Stop(_) | In::Abort(_) => return Ok(None),
                other => {
                    return Err(End::Fatal(WorkerError::Protocol(format!(
                        "{} while measuring the round trip (before Ready)",
                        other.kind()
                    ))));
                }
            }
        }
    }
    Ok(Some(clock))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_us: u64, received_us: u64, controller_us: u64) -> Sample {
        Sample {
            sent_us,
            received_us,
            controller_us,
        }
    }

    #[test]
    fn the_offset_is_the_controllers_reading_against_the_middle_of_the_round_trip() {
        let mut clock = ClockSync::default();
        // Sent at 1000, back at 1400: the controller read 5200 at our 1200.
        clock.observe(sample(1_000, 1_400, 5_200));
        assert_eq!(clock.offset_us(), Some(4_000));
        assert_eq!(clock.rtt(), Duration::from_micros(400));
        // A controller clock behind ours is a negative offset.
        let mut behind = ClockSync::default();
        behind.observe(sample(10_000, 10_200, 100));
        assert_eq!(behind.offset_us(), Some(100 - 10_100));
    }

    #[test]
    fn the_smallest_round_trip_wins_whatever_the_order() {
        let samples = [
            sample(0, 900, 9_000),
            sample(1_000, 1_100, 6_050),
            sample(2_000, 2_500, 7_900),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let mut clock = ClockSync::default();
            for i in order {
                clock.observe(samples[i]);
            }
            assert_eq!(clock.rtt(), Duration::from_micros(100));
            assert_eq!(clock.offset_us(), Some(5_000));
        }
        // A tie keeps the first.
        let mut clock = ClockSync::default();
        clock.observe(sample(0, 100, 1_050));
        clock.observe(sample(200, 300, 9_250));
        assert_eq!(clock.offset_us(), Some(1_000));
    }

    #[test]
    fn the_start_instant_is_mapped_onto_our_clock() {
        let mut clock = ClockSync::default();
        clock.observe(sample(1_000, 1_400, 5_200)); // offset 4000
        let received = Duration::from_micros(50_000);
        let start_in = Duration::from_millis(500);
        // The controller's 604_000 is our 600_000, whatever `start_in` and `received` say.
        assert_eq!(
            clock.start_since_epoch(604_000, start_in, received),
            Duration::from_micros(600_000)
        );
        // An instant before our epoch starts at the epoch (at once).
        assert_eq!(
            clock.start_since_epoch(3_000, start_in, received),
            Duration::ZERO
        );
    }

    #[test]
    fn without_an_instant_the_start_is_counted_from_receipt_less_half_the_round_trip() {
        let mut clock = ClockSync::default();
        clock.observe(sample(1_000, 1_400, 5_200)); // rtt 400 us
        let received = Duration::from_micros(50_000);
        assert_eq!(
            clock.start_since_epoch(0, Duration::from_micros(10_000), received),
            Duration::from_micros(50_000 + 10_000 - 200)
        );
        // A Start due sooner than the half round trip: at once.
        assert_eq!(
            clock.start_since_epoch(0, Duration::from_micros(100), received),
            received
        );
        // No sample at all: at once, whatever the instant says.
        assert_eq!(
            ClockSync::default().start_since_epoch(604_000, Duration::from_millis(500), received),
            received
        );
    }
}
