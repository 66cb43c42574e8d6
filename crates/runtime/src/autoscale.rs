//! Autoscaling with Ray Serve's rule, for every kind of work the runtime serves (a model
//! version's replicas, a Flow executor's instances): sample the requests running and waiting
//! every `metrics_interval_s`, average them over `look_back_period_s`, want
//! `ceil(average / target_ongoing_requests)` replicas within `[min_replicas, max_replicas]`, and
//! move there once that wish has held for `upscale_delay_s` (up) or `downscale_delay_s` (down).
//! A target at zero with requests waiting starts a replica at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::metrics::Gauge;

/// Ray Serve's `autoscaling_config`, with its names and meanings.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Autoscaling {
    /// Fewest instances; 0 lets an idle deployment scale to zero (the first request then waits,
    /// in the bounded queue, for an instance to start). Default: 1.
    pub min_replicas: usize,
    /// Most instances. Default: 1.
    pub max_replicas: usize,
    /// Instances at start. Default: `min_replicas`.
    pub initial_replicas: Option<usize>,
    /// Requests (running and waiting) each instance should have on average; the target is
    /// ongoing requests / this, rounded up. Default: 2.
    pub target_ongoing_requests: f64,
    /// How long the target must stay above the current count before scaling up. Default: 30.
    pub upscale_delay_s: f64,
    /// How long the target must stay below the current count before scaling down. Default: 600.
    pub downscale_delay_s: f64,
    /// How often ongoing requests are sampled and a decision made. Default: 10.
    pub metrics_interval_s: f64,
    /// Samples over this window are averaged. Default: 30.
    pub look_back_period_s: f64,
    /// How far each upscaling decision moves toward the target: from the current count by this
    /// share of the gap (Ray's `upscaling_factor`, which `smoothing_factor` sets for both
    /// directions); at least one instance. Default: 1 (all the way).
    pub upscaling_factor: f64,
    /// The same for scaling down (Ray's `downscaling_factor`). Default: 1.
    pub downscaling_factor: f64,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 1,
            initial_replicas: None,
            target_ongoing_requests: 2.0,
            upscale_delay_s: 30.0,
            downscale_delay_s: 600.0,
            metrics_interval_s: 10.0,
            look_back_period_s: 30.0,
            upscaling_factor: 1.0,
            downscaling_factor: 1.0,
        }
    }
}

impl Autoscaling {
    /// Instances at start.
    pub fn initial(&self) -> usize {
        self.initial_replicas.unwrap_or(self.min_replicas)
    }

    /// Checks the bounds and timings; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        let a = self;
        if a.max_replicas == 0 || a.min_replicas > a.max_replicas {
            return Err(format!(
                "autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1 (got {} and {})",
                a.min_replicas, a.max_replicas
            ));
        }
        if !(a.min_replicas..=a.max_replicas).contains(&a.initial()) {
            return Err(
                "autoscaling.initial_replicas must be between min_replicas and max_replicas".into(),
            );
        }
        let within = |name: &str, v: f64, low: f64, high: f64| {
            if v.is_finite() && (low..=high).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "autoscaling.{name} must be between {low} and {high}, got {v}"
                ))
            }
        };
        within(
            "target_ongoing_requests",
            a.target_ongoing_requests,
            0.001,
            1e6,
        )?;
        within(
            "metrics_interval_s",
            a.metrics_interval_s,
            0.01,
            MAX_SECONDS,
        )?;
        within(
            "look_back_period_s",
            a.look_back_period_s,
            0.01,
            MAX_SECONDS,
        )?;
        within("upscale_delay_s", a.upscale_delay_s, 0.0, MAX_SECONDS)?;
        within("upscaling_factor", a.upscaling_factor, 0.001, 100.0)?;
        within("downscaling_factor", a.downscaling_factor, 0.001, 100.0)?;
        within("downscale_delay_s", a.downscale_delay_s, 0.0, MAX_SECONDS)?;
        Ok(())
    }
}

/// The longest interval, window or delay autoscaling takes, in seconds (a week).
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Load samples kept for the look-back window, at most (older ones are dropped first).
const MAX_SAMPLES: usize = 10_000;

/// The load of what is scaled, at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Requests running and waiting.
    pub ongoing: usize,
    /// Requests waiting.
    pub waiting: usize,
    /// Replicas now.
    pub replicas: usize,
}

/// What an autoscaler scales.
pub trait Scaled: Send + 'static {
    /// The rule's settings now, or `None` once autoscaling is off (the autoscaler then stops).
    fn config(&self) -> Option<Autoscaling>;
    /// The load, or `None` once the scaled thing is gone (the autoscaler then stops).
    fn load(&self) -> Option<Load>;
    /// Moves toward `n` replicas (starting new ones before they take work, stopping only idle
    /// or finished ones); returns the replicas now.
    fn scale_to(&mut self, n: usize) -> Result<usize, String>;
}

/// One scaled thing's autoscaler; runs on its own thread until the target is gone or its
/// autoscaling is turned off.
pub struct Autoscaler {
    /// Name, for logs and the thread.
    pub name: String,
    /// What it scales.
    pub target: Box<dyn Scaled>,
    /// Where its decisions are reported (from [`crate::metrics::Metrics::deployment`]).
    pub report: ScaleReport,
}

/// Where an autoscaler reports: the replica gauges and the log of its decisions.
#[derive(Clone)]
pub struct ScaleReport {
    /// Replicas serving now.
    pub current: Gauge,
    /// The autoscaler's target.
    pub target: Gauge,
    /// The server's log of decisions.
    pub log: ScaleLog,
}

/// One autoscaling decision, as the console's log shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ScaleEvent {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The model or deployment scaled.
    pub name: String,
    /// Replicas before.
    pub from: usize,
    /// Replicas decided.
    pub to: usize,
    /// Requests running and waiting when it decided.
    pub ongoing: usize,
    /// Why scaling failed, when it did.
    pub error: Option<String>,
}

/// The server's latest autoscaling decisions, oldest first, at most [`ScaleLog::CAPACITY`]
/// (older ones are dropped): enough to see what happened lately without growing forever.
#[derive(Debug, Clone, Default)]
pub struct ScaleLog(Arc<Mutex<VecDeque<ScaleEvent>>>);

impl ScaleLog {
    /// Decisions kept.
    pub const CAPACITY: usize = 200;

    fn record(&self, event: ScaleEvent) {
        let mut events = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == Self::CAPACITY {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The decisions kept, oldest first.
    pub fn events(&self) -> Vec<ScaleEvent> {
        let events = self.0.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().cloned().collect()
    }
}

impl Autoscaler {
    /// Starts the autoscaler's thread.
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("autoscale-{}", self.name))
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(mut self) {
        let Some(mut config) = self.target.config() else {
            return;
        };
        let mut rule = Rule::new(config.clone());
        while let Some(load) = self.target.load() {
            self.report.current.set(load.replicas as i64);
            let (target, decision) =
                rule.observe(Instant::now(), load.ongoing, load.waiting, load.replicas);
            self.report.target.set(target as i64);
            if let Decision::ScaleTo(n) = decision {
                tracing::info!(
                    name = %self.name,
                    from = load.replicas,
                    to = n,
                    ongoing = load.ongoing,
                    "autoscaling"
                );
                let error = match self.target.scale_to(n) {
                    Ok(now) => {
                        self.report.current.set(now as i64);
                        None
                    }
                    Err(e) => {
                        tracing::error!(name = %self.name, error = %e, "cannot scale");
                        Some(e)
                    }
                };
                self.report.log.record(ScaleEvent {
                    time: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                    name: self.name.clone(),
                    from: load.replicas,
                    to: n,
                    ongoing: load.ongoing,
                    error,
                });
            }
            std::thread::sleep(Duration::from_secs_f64(config.metrics_interval_s));
            match self.target.config() {
                None => return,
                Some(now) if now != config => {
                    // New bounds (a management request): start the rule afresh.
                    rule = Rule::new(now.clone());
                    config = now;
                }
                Some(_) => {}
            }
        }
    }
}

/// What one look at the load decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Stay,
    ScaleTo(usize),
}

/// The decision rule, apart from threads and clocks so it can be tested with made-up time.
struct Rule {
    config: Autoscaling,
    samples: VecDeque<(Instant, f64)>,
    /// Since when the target has been above (or below) the current count.
    above_since: Option<Instant>,
    below_since: Option<Instant>,
}

impl Rule {
    fn new(config: Autoscaling) -> Self {
        Self {
            config,
            samples: VecDeque::new(),
            above_since: None,
            below_since: None,
        }
    }

    /// Records `ongoing` requests at `now` and returns the target and the decision for a
    /// deployment of `current` instances with `waiting` requests queued.
    fn observe(
        &mut self,
        now: Instant,
        ongoing: usize,
        waiting: usize,
        current: usize,
    ) -> (usize, Decision) {
        let c = &self.config;
        self.samples.push_back((now, ongoing as f64));
        if self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        let window = Duration::from_secs_f64(c.look_back_period_s);
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        let average = self.samples.iter().map(|s| s.1).sum::<f64>() / self.samples.len() as f64;
        let wanted = average / c.target_ongoing_requests;
        // Ray's smoothing: move only part of the way from the current count (at least one).
        let gap = wanted - current as f64;
        let factor = if gap > 0.0 {
            c.upscaling_factor
        } else {
            c.downscaling_factor
        };
        let moved = if current == 0 || factor == 1.0 {
            wanted.ceil()
        } else if gap > 0.0 {
            (current as f64 + gap * factor)
                .ceil()
                .max(current as f64 + 1.0)
        } else {
            (current as f64 + gap * factor)
                .ceil()
                .min(current as f64 - 1.0)
                .max(wanted.ceil())
        };
        let mut target = (moved.max(0.0) as usize).clamp(c.min_replicas, c.max_replicas);
        if current == 0 && waiting > 0 {
            // Requests are held for an instance that does not exist: start one now.
            target = target.max(1);
            self.above_since = None;
            return (target, Decision::ScaleTo(target));
        }
        let held = |since: &mut Option<Instant>, delay: f64| {
            let start = *since.get_or_insert(now);
            now.duration_since(start) >= Duration::from_secs_f64(delay)
        };
        let decision = if target > current {
            self.below_since = None;
            if held(&mut self.above_since, c.upscale_delay_s) {
                self.above_since = None;
                Decision::ScaleTo(target)
            } else {
                Decision::Stay
            }
        } else if target < current {
            self.above_since = None;
            if held(&mut self.below_since, c.downscale_delay_s) {
                Decision::ScaleTo(target)
            } else {
                Decision::Stay
            }
        } else {
            self.above_since = None;
            self.below_since = None;
            Decision::Stay
        };
        (target, decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Autoscaling {
        Autoscaling {
            min_replicas: 0,
            max_replicas: 3,
            initial_replicas: None,
            target_ongoing_requests: 2.0,
            upscale_delay_s: 1.0,
            downscale_delay_s: 5.0,
            metrics_interval_s: 0.5,
            look_back_period_s: 1.0,
            upscaling_factor: 1.0,
            downscaling_factor: 1.0,
        }
    }

    #[test]
    fn scales_up_after_the_delay_and_never_past_the_maximum() {
        let mut rule = Rule::new(config());
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        assert_eq!(rule.observe(at(0.0), 20, 10, 1), (3, Decision::Stay));
        assert_eq!(rule.observe(at(0.5), 20, 10, 1), (3, Decision::Stay));
        assert_eq!(rule.observe(at(1.0), 20, 10, 1), (3, Decision::ScaleTo(3)));
    }

    #[test]
    fn smoothing_factors_move_part_of_the_way_and_at_least_one() {
        let mut rule = Rule::new(Autoscaling {
            max_replicas: 10,
            upscale_delay_s: 0.0,
            downscale_delay_s: 0.0,
            upscaling_factor: 0.5,
            downscaling_factor: 0.25,
            ..config()
        });
        let t0 = Instant::now();
        // 16 ongoing at 2 each wants 8 from 2: half the gap is 3 more.
        assert_eq!(rule.observe(t0, 16, 0, 2).0, 5);
        // A small gap still moves by one.
        let mut rule = Rule::new(Autoscaling {
            upscaling_factor: 0.01,
            ..rule.config.clone()
        });
        assert_eq!(rule.observe(t0, 8, 0, 2).0, 3);
        // Down from 8 toward 0 (the minimum): a quarter of the gap.
        let mut rule = Rule::new(rule.config.clone());
        assert_eq!(rule.observe(t0, 0, 0, 8).0, 6);
    }

    #[test]
    fn scales_down_after_the_delay_to_the_minimum_and_from_zero_at_once() {
        let mut rule = Rule::new(config());
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // Idle: the target drops to 0 but waits out the downscale delay.
        assert_eq!(rule.observe(at(0.0), 0, 0, 2), (0, Decision::Stay));
        assert_eq!(rule.observe(at(4.0), 0, 0, 2), (0, Decision::Stay));
        assert_eq!(rule.observe(at(5.0), 0, 0, 2), (0, Decision::ScaleTo(0)));
        // A request arrives at zero instances: one starts now, whatever the delay.
        assert_eq!(rule.observe(at(5.5), 1, 1, 0), (1, Decision::ScaleTo(1)));
        // Load that comes and goes within the delay does not scale.
        let mut rule = Rule::new(config());
        assert_eq!(rule.observe(at(0.0), 8, 0, 1).1, Decision::Stay);
        assert_eq!(rule.observe(at(2.0), 2, 0, 1).1, Decision::Stay);
        assert_eq!(rule.observe(at(2.5), 8, 0, 1).1, Decision::Stay);
    }
}
