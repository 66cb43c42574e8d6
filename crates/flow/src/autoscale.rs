//! A registered executor's instances, as the runtime's autoscaler sees them (the rule and the
//! loop are the runtime's, the same for models and executors).

use std::sync::Weak;

use ferroserve_runtime::autoscale::{Load, Scaled};
use ferroserve_runtime::scheduler::Scheduler;
use ferroserve_runtime::Autoscaling;

use ferroserve_runtime::scheduler::Worker;

use crate::work::DocJob;

/// Builds instance number `n` of the deployment.
pub(crate) type Make = Box<dyn Fn(usize) -> Result<Box<dyn Worker<DocJob>>, String> + Send>;

/// A registered (or Python) executor's instances: the replicas of its shard's scheduler.
pub(crate) struct CustomScaled {
    pub config: Autoscaling,
    pub scheduler: Weak<Scheduler<DocJob>>,
    pub make: Make,
    /// Number of the next instance made.
    pub next: usize,
}

impl Scaled for CustomScaled {
    fn config(&self) -> Option<Autoscaling> {
        Some(self.config.clone())
    }

    fn load(&self) -> Option<Load> {
        let s = self.scheduler.upgrade()?;
        let (queued, running) = s.load();
        Some(Load {
            ongoing: queued + running,
            waiting: queued,
            replicas: s.replicas(),
        })
    }

    fn scale_to(&mut self, n: usize) -> Result<usize, String> {
        let Some(scheduler) = self.scheduler.upgrade() else {
            return Ok(0);
        };
        let current = scheduler.replicas();
        for _ in current..n {
            let instance = (self.make)(self.next)?;
            self.next += 1;
            scheduler.add(instance).map_err(|e| e.to_string())?;
        }
        // Extra instances stop after the request they are running: none fails.
        if n < current {
            scheduler.retire(current - n);
        }
        Ok(scheduler.replicas())
    }
}
