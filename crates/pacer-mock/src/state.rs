//! The state one running mock shares between its handlers and its [`crate::Control`].
//!
//! Each concern has its own lock, taken briefly and never across an `.await`, so a slow
//! response (latency, stall) never blocks the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::{ClientConfig, MockConfig};
use crate::control::Faults;
use crate::endpoints::JobStore;
use crate::limits::{LimitEngine, duration_us};
use crate::stats::{Recorder, StatsView};
use crate::tokens::TokenStore;

pub(crate) struct Shared {
    pub config: MockConfig,
    /// Origin of every `*Us` timestamp.
    pub start: Instant,
    pub clients: HashMap<String, ClientConfig>,
    pub tokens: Mutex<TokenStore>,
    pub limits: Mutex<LimitEngine>,
    pub token_limit: Mutex<LimitEngine>,
    pub recorder: Mutex<Recorder>,
    pub faults: Mutex<Faults>,
    pub jobs: Mutex<JobStore>,
    /// The only counter of `--static` mode (a lock would cost throughput).
    pub static_requests: AtomicU64,
    /// The body of every `--static` answer (`staticBody`, or `{"ok":true}`).
    pub static_body: bytes::Bytes,
}

impl Shared {
    pub(crate) fn new(config: MockConfig, static_body: bytes::Bytes) -> Self {
        Shared {
            start: Instant::now(),
            clients: config
                .clients
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            tokens: Mutex::new(TokenStore::default()),
            limits: Mutex::new(LimitEngine::new(&config.limits)),
            token_limit: Mutex::new(LimitEngine::for_token_endpoint(
                config.token_rate_limit.as_ref(),
            )),
            recorder: Mutex::new(Recorder::new(
                config.record_arrivals,
                config.max_arrivals,
                config.max_workers,
            )),
            faults: Mutex::new(Faults::from_config(&config)),
            jobs: Mutex::new(JobStore::default()),
            static_requests: AtomicU64::new(0),
            static_body,
            config,
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        duration_us(self.start.elapsed())
    }

    pub(crate) fn stats(&self) -> StatsView {
        let now = self.now_us();
        let mut view = StatsView::empty(now, self.config.static_mode);
        if self.config.static_mode {
            view.requests.total = self.static_requests.load(Ordering::Relaxed);
            return view;
        }
        view.tokens.live = self.tokens.lock().live(now);
        self.recorder.lock().fill(&mut view);
        view.limits = self.limits.lock().stats();
        view.token_limit = self.token_limit.lock().stats().into_iter().next();
        let f = self.faults.lock();
        view.faults.pending429 = f.force429;
        view.faults.pending401 = f.force401;
        view
    }

    pub(crate) fn reset(&self) {
        self.static_requests.store(0, Ordering::Relaxed);
        self.recorder.lock().reset();
        self.limits.lock().reset();
        self.token_limit.lock().reset();
        *self.faults.lock() = Faults::from_config(&self.config);
        *self.jobs.lock() = JobStore::default();
    }
}
