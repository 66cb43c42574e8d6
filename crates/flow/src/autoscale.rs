//! Autoscaling a deployment's instances with Ray Serve's rule: sample the requests running and
//! waiting every `metrics_interval_s`, average them over `look_back_period_s`, want
//! `ceil(average / target_ongoing_requests)` instances within `[min_replicas, max_replicas]`,
//! and move there once that wish has held for `upscale_delay_s` (up) or `downscale_delay_s`
//! (down). A deployment at zero with requests waiting starts an instance at once.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ferroserve_runtime::metrics::Gauge;

use ferroserve_runtime::Runtime;

use crate::deployment::Instances;
use crate::spec::Autoscaling;
use crate::Executor;

/// Builds instance number `n` of the deployment.
pub(crate) type Make = Box<dyn Fn(usize) -> Result<Arc<dyn Executor>, String> + Send>;

/// What an autoscaler scales.
pub(crate) trait Scaled: Send {
    /// `(requests running and waiting, requests waiting, instances)`, or `None` once the
    /// deployment is gone.
    fn load(&self) -> Option<(usize, usize, usize)>;
    /// Moves toward `n` instances (starting new ones before they take work, stopping only idle
    /// or finished ones); returns the instances now.
    fn scale_to(&mut self, n: usize) -> Result<usize, String>;
}

/// A registered executor's instances.
pub(crate) struct CustomScaled {
    pub instances: Weak<Instances>,
    pub make: Make,
    /// Number of the next instance made.
    pub next: usize,
}

impl Scaled for CustomScaled {
    fn load(&self) -> Option<(usize, usize, usize)> {
        let i = self.instances.upgrade()?;
        Some((i.ongoing(), i.waiting(), i.size()))
    }

    fn scale_to(&mut self, n: usize) -> Result<usize, String> {
        let Some(instances) = self.instances.upgrade() else {
            return Ok(0);
        };
        for _ in instances.size()..n {
            instances.grow((self.make)(self.next)?);
            self.next += 1;
        }
        for _ in n..instances.size() {
            // Only idle instances go; busy ones are left for a later round.
            if !instances.shrink() {
                break;
            }
        }
        Ok(instances.size())
    }
}

/// A model folder's replicas, through the runtime.
pub(crate) struct ModelScaled {
    pub runtime: Weak<Runtime>,
    pub model: String,
}

impl Scaled for ModelScaled {
    fn load(&self) -> Option<(usize, usize, usize)> {
        let (queued, running, replicas) = self.runtime.upgrade()?.load_of(&self.model).ok()?;
        Some((queued + running, queued, replicas))
    }

    fn scale_to(&mut self, n: usize) -> Result<usize, String> {
        match self.runtime.upgrade() {
            Some(r) => r.scale(&self.model, n).map_err(|e| e.to_string()),
            None => Ok(0),
        }
    }
}

/// One deployment's autoscaler; runs on its own thread until the deployment is dropped.
pub(crate) struct Autoscaler {
    pub deployment: String,
    pub config: Autoscaling,
    pub target: Box<dyn Scaled>,
    /// `(serving now, target)`.
    pub gauges: (Gauge, Gauge),
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
        let window = Duration::from_secs_f64(c.look_back_period_s);
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        let average = self.samples.iter().map(|s| s.1).sum::<f64>() / self.samples.len() as f64;
        let mut target = ((average / c.target_ongoing_requests).ceil() as usize)
            .clamp(c.min_replicas, c.max_replicas);
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

impl Autoscaler {
    /// Starts the autoscaler's thread.
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("autoscale-{}", self.deployment))
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(mut self) {
        let mut rule = Rule::new(self.config.clone());
        let interval = Duration::from_secs_f64(self.config.metrics_interval_s);
        while let Some((ongoing, waiting, current)) = self.target.load() {
            self.gauges.0.set(current as i64);
            let (target, decision) = rule.observe(Instant::now(), ongoing, waiting, current);
            self.gauges.1.set(target as i64);
            if let Decision::ScaleTo(n) = decision {
                tracing::info!(
                    deployment = %self.deployment,
                    from = current,
                    to = n,
                    ongoing,
                    "autoscaling"
                );
                match self.target.scale_to(n) {
                    Ok(now) => {
                        self.gauges.0.set(now as i64);
                    }
                    Err(e) => {
                        tracing::error!(deployment = %self.deployment, error = %e, "cannot scale")
                    }
                }
            }
            std::thread::sleep(interval);
        }
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
