//! A registered executor's instances, as the runtime's autoscaler sees them (the rule and the
//! loop are the runtime's, the same for models and executors).

use std::sync::{Arc, Weak};

use ferroserve_runtime::autoscale::{Load, Scaled};
use ferroserve_runtime::Autoscaling;

use crate::deployment::Instances;
use crate::Executor;

/// Builds instance number `n` of the deployment.
pub(crate) type Make = Box<dyn Fn(usize) -> Result<Arc<dyn Executor>, String> + Send>;

/// A registered executor's instances.
pub(crate) struct CustomScaled {
    pub config: Autoscaling,
    pub instances: Weak<Instances>,
    pub make: Make,
    /// Number of the next instance made.
    pub next: usize,
}

impl Scaled for CustomScaled {
    fn config(&self) -> Option<Autoscaling> {
        Some(self.config.clone())
    }

    fn load(&self) -> Option<Load> {
        let i = self.instances.upgrade()?;
        Some(Load {
            ongoing: i.ongoing(),
            waiting: i.waiting(),
            replicas: i.size(),
        })
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
