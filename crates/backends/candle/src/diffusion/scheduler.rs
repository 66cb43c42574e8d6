//! Noise schedulers: Euler discrete, DDIM and PNDM, as diffusers implements them, configured
//! from the pipeline's `scheduler/scheduler_config.json`.
//!
//! As in diffusers' `from_config`, any of the three can run from the config saved for another:
//! the shared fields (betas, spacing, prediction type) carry over and each scheduler's own
//! fields take their defaults when the file lacks them.

use std::path::Path;
use std::str::FromStr;

use candle_core::Tensor;
use serde::Deserialize;

use crate::{files, CandleError};

/// Which scheduler denoises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// diffusers' `EulerDiscreteScheduler`.
    Euler,
    /// diffusers' `DDIMScheduler` (deterministic, eta 0).
    Ddim,
    /// diffusers' `PNDMScheduler` (Runge-Kutta warm-up, then linear multistep).
    Pndm,
}

impl SchedulerKind {
    /// The names requests use.
    pub const NAMES: &'static [&'static str] = &["euler", "ddim", "pndm"];

    /// The kind named by diffusers' class name in a scheduler config.
    fn from_class(class: &str) -> Option<Self> {
        match class {
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "DDIMScheduler" => Some(Self::Ddim),
            "PNDMScheduler" => Some(Self::Pndm),
            _ => None,
        }
    }
}

impl FromStr for SchedulerKind {
    type Err = CandleError;

    fn from_str(s: &str) -> Result<Self, CandleError> {
        match s.to_ascii_lowercase().as_str() {
            "euler" | "euler_discrete" | "eulerdiscretescheduler" => Ok(Self::Euler),
            "ddim" | "ddimscheduler" => Ok(Self::Ddim),
            "pndm" | "pndmscheduler" => Ok(Self::Pndm),
            _ => Err(CandleError::Invalid(format!(
                "unknown scheduler '{s}' (expected one of: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// `scheduler_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default = "default_train_steps")]
    num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    beta_start: f64,
    #[serde(default = "default_beta_end")]
    beta_end: f64,
    #[serde(default = "default_schedule")]
    beta_schedule: String,
    #[serde(default)]
    trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction")]
    prediction_type: String,
    #[serde(default)]
    timestep_spacing: Option<String>,
    #[serde(default)]
    steps_offset: usize,
    // Each scheduler's own fields; their defaults differ between schedulers.
    #[serde(default)]
    clip_sample: Option<bool>,
    #[serde(default)]
    clip_sample_range: Option<f64>,
    #[serde(default)]
    set_alpha_to_one: Option<bool>,
    #[serde(default)]
    skip_prk_steps: Option<bool>,
    // Options this implementation refuses rather than ignores.
    #[serde(default)]
    use_karras_sigmas: Option<bool>,
    #[serde(default)]
    rescale_betas_zero_snr: Option<bool>,
    #[serde(default)]
    thresholding: Option<bool>,
    #[serde(default)]
    interpolation_type: Option<String>,
    #[serde(default)]
    final_sigmas_type: Option<String>,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_schedule() -> String {
    "linear".to_string()
}
fn default_prediction() -> String {
    "epsilon".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prediction {
    Epsilon,
    Velocity,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    Leading,
    Linspace,
    Trailing,
}

/// A checked scheduler config with the cumulative alphas computed.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: SchedulerConfig,
    default_kind: SchedulerKind,
    prediction: Prediction,
    alphas_cumprod: Vec<f64>,
}

impl Schedule {
    /// Reads and checks `scheduler_config.json` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CandleError> {
        let path = dir.join("scheduler_config.json");
        let config: SchedulerConfig = files::json(&path)?;
        Self::new(config).map_err(|e| CandleError::file(&path, e))
    }

    fn new(config: SchedulerConfig) -> Result<Self, CandleError> {
        let unsupported = |what: &str| Err(CandleError::Unsupported(what.to_string()));
        if config.use_karras_sigmas == Some(true) {
            return unsupported("use_karras_sigmas");
        }
        if config.rescale_betas_zero_snr == Some(true) {
            return unsupported("rescale_betas_zero_snr");
        }
        if config.thresholding == Some(true) {
            return unsupported("thresholding");
        }
        if config
            .interpolation_type
            .as_deref()
            .is_some_and(|t| t != "linear")
        {
            return unsupported("interpolation_type other than linear");
        }
        if config
            .final_sigmas_type
            .as_deref()
            .is_some_and(|t| t != "zero")
        {
            return unsupported("final_sigmas_type other than zero");
        }
        let prediction = match config.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::Velocity,
            "sample" => Prediction::Sample,
            other => return unsupported(&format!("prediction_type '{other}'")),
        };
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(CandleError::Invalid("num_train_timesteps is 0".into()));
        }
        let betas: Vec<f64> = match (&config.trained_betas, config.beta_schedule.as_str()) {
            (Some(b), _) if b.len() == n => b.clone(),
            (Some(b), _) => {
                return Err(CandleError::Invalid(format!(
                    "trained_betas has {} values for {n} timesteps",
                    b.len()
                )))
            }
            (None, "linear") => linspace(config.beta_start, config.beta_end, n),
            (None, "scaled_linear") => {
                linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            (None, "squaredcos_cap_v2") => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                    })
                    .collect()
            }
            (None, other) => return unsupported(&format!("beta_schedule '{other}'")),
        };
        let mut product = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                product *= 1.0 - b;
                product
            })
            .collect();
        let default_kind = config
            .class_name
            .as_deref()
            .and_then(SchedulerKind::from_class)
            .unwrap_or(SchedulerKind::Pndm);
        Ok(Self {
            config,
            default_kind,
            prediction,
            alphas_cumprod,
        })
    }

    /// The scheduler the pipeline was saved with (PNDM when the class is not one of the three).
    pub fn default_kind(&self) -> SchedulerKind {
        self.default_kind
    }

    /// A scheduler of `kind` set up for `steps` inference steps.
    pub fn scheduler(&self, kind: SchedulerKind, steps: usize) -> Result<Scheduler, CandleError> {
        let n = self.config.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(CandleError::Invalid(format!(
                "num_inference_steps must be between 1 and {n}, got {steps}"
            )));
        }
        // Euler's default spacing is linspace, the others' leading.
        let spacing = match self.config.timestep_spacing.as_deref() {
            Some("leading") => Spacing::Leading,
            Some("linspace") => Spacing::Linspace,
            Some("trailing") => Spacing::Trailing,
            None if kind == SchedulerKind::Euler => Spacing::Linspace,
            None => Spacing::Leading,
            Some(other) => {
                return Err(CandleError::Unsupported(format!(
                    "timestep_spacing '{other}'"
                )))
            }
        };
        let offset = self.config.steps_offset;
        let ratio = n / steps;
        // Descending timesteps, as diffusers computes them for DDIM and Euler.
        let descending: Vec<f64> = match spacing {
            Spacing::Leading => (0..steps)
                .rev()
                .map(|i| (i * ratio + offset) as f64)
                .collect(),
            Spacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .collect(),
            Spacing::Trailing => {
                let r = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| (n as f64 - i as f64 * r).round() - 1.0)
                    .collect()
            }
        };
        let state = match kind {
            SchedulerKind::Euler => {
                let full: Vec<f64> = self
                    .alphas_cumprod
                    .iter()
                    .map(|a| ((1.0 - a) / a).sqrt())
                    .collect();
                let mut sigmas: Vec<f64> = descending.iter().map(|&t| interp(t, &full)).collect();
                sigmas.push(0.0);
                let max = sigmas.iter().copied().fold(0.0, f64::max);
                let init_sigma = match spacing {
                    Spacing::Linspace | Spacing::Trailing => max,
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                };
                State::Euler { sigmas, init_sigma }
            }
            SchedulerKind::Ddim => {
                // DDIM's timesteps are whole numbers.
                let rounded = descending.iter().map(|t| t.round()).collect();
                return Ok(Scheduler {
                    timesteps: rounded,
                    state: State::Ddim {
                        final_alpha: self.final_alpha(true),
                        clip: self
                            .config
                            .clip_sample
                            .unwrap_or(true)
                            .then(|| self.config.clip_sample_range.unwrap_or(1.0)),
                        ratio,
                    },
                    schedule: self.clone(),
                });
            }
            SchedulerKind::Pndm => {
                let pndm = self.pndm(steps, spacing, ratio);
                if pndm.timesteps.is_empty() {
                    return Err(CandleError::Invalid(
                        "the pndm scheduler needs at least 2 num_inference_steps".into(),
                    ));
                }
                return Ok(pndm);
            }
        };
        Ok(Scheduler {
            timesteps: descending,
            state,
            schedule: self.clone(),
        })
    }

    fn final_alpha(&self, default_one: bool) -> f64 {
        if self.config.set_alpha_to_one.unwrap_or(default_one) {
            1.0
        } else {
            self.alphas_cumprod[0]
        }
    }

    fn pndm(&self, steps: usize, spacing: Spacing, ratio: usize) -> Scheduler {
        let n = self.config.num_train_timesteps;
        let offset = self.config.steps_offset as i64;
        // Ascending, as diffusers' PNDM builds them.
        let base: Vec<i64> = match spacing {
            Spacing::Leading => (0..steps).map(|i| (i * ratio) as i64 + offset).collect(),
            Spacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .map(|t| t.round() as i64)
                .collect(),
            Spacing::Trailing => {
                let r = n as f64 / steps as f64;
                let mut t: Vec<i64> = (0..steps)
                    .map(|i| (n as f64 - i as f64 * r).round() as i64 - 1)
                    .collect();
                t.reverse();
                t
            }
        };
        let skip_prk = self.config.skip_prk_steps.unwrap_or(false);
        let (prk, plms): (Vec<i64>, Vec<i64>) = if skip_prk {
            let mut plms: Vec<i64> = base[..base.len() - 1].to_vec();
            if base.len() >= 2 {
                plms.push(base[base.len() - 2]);
            }
            plms.extend(base.last());
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // Runge-Kutta warm-up on the last four (PNDM's order) timesteps: each with a point
            // half a step later, every point twice but the first and last.
            let half = (n / steps / 2) as i64;
            let tail = &base[base.len().saturating_sub(4)..];
            let mut points: Vec<i64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
            points.pop();
            let doubled: Vec<i64> = points.iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled
                .get(1..doubled.len().saturating_sub(1))
                .unwrap_or_default()
                .to_vec();
            prk.reverse();
            let mut plms = base[..base.len().saturating_sub(3)].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let timesteps = prk.iter().chain(&plms).map(|&t| t as f64).collect();
        Scheduler {
            timesteps,
            state: State::Pndm(Box::new(Pndm {
                prk_len: prk.len(),
                prk,
                ratio: (n / steps) as i64,
                final_alpha: self.final_alpha(false),
                counter: 0,
                ets: Vec::new(),
                cur_sample: None,
                cur_output: None,
            })),
            schedule: self.clone(),
        }
    }

    fn alpha(&self, t: i64, final_alpha: f64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        } else {
            final_alpha
        }
    }
}

fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| start + step * i as f64).collect()
}

/// `values` (one per whole timestep) read at a fractional timestep, as `np.interp` does.
fn interp(t: f64, values: &[f64]) -> f64 {
    let last = values.len() - 1;
    if t <= 0.0 {
        return values[0];
    }
    if t >= last as f64 {
        return values[last];
    }
    let i = t.floor() as usize;
    let frac = t - i as f64;
    values[i] + (values[i + 1] - values[i]) * frac
}

#[derive(Debug, Clone)]
struct Pndm {
    prk: Vec<i64>,
    prk_len: usize,
    ratio: i64,
    final_alpha: f64,
    counter: usize,
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
    cur_output: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum State {
    Euler {
        sigmas: Vec<f64>,
        init_sigma: f64,
    },
    Ddim {
        final_alpha: f64,
        clip: Option<f64>,
        ratio: usize,
    },
    Pndm(Box<Pndm>),
}

/// One generation's scheduler: its timesteps, and the state multistep methods keep.
#[derive(Debug, Clone)]
pub struct Scheduler {
    timesteps: Vec<f64>,
    state: State,
    schedule: Schedule,
}

impl Scheduler {
    /// The timesteps to give the UNet, one per UNet call, in order.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// What the initial noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        match &self.state {
            State::Euler { init_sigma, .. } => *init_sigma,
            _ => 1.0,
        }
    }

    /// The UNet's input at step `i` for `sample`.
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        match &self.state {
            State::Euler { sigmas, .. } => sample / (sigmas[i] * sigmas[i] + 1.0).sqrt(),
            _ => Ok(sample.clone()),
        }
    }

    /// Keeps the batch rows at `rows` in the scheduler's own state (when generations leave a
    /// batch).
    pub fn select(&mut self, rows: &Tensor) -> candle_core::Result<()> {
        if let State::Pndm(p) = &mut self.state {
            for e in &mut p.ets {
                *e = e.index_select(rows, 0)?;
            }
            for t in [&mut p.cur_sample, &mut p.cur_output].into_iter().flatten() {
                *t = t.index_select(rows, 0)?;
            }
        }
        Ok(())
    }

    /// The sample after step `i`, from the UNet's output for it.
    pub fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let timestep = self.timesteps[i];
        let prediction = self.schedule.prediction;
        match &mut self.state {
            State::Euler { sigmas, .. } => {
                let (sigma, next) = (sigmas[i], sigmas[i + 1]);
                let original = match prediction {
                    Prediction::Epsilon => (sample - (output * sigma)?)?,
                    Prediction::Velocity => {
                        let s2 = sigma * sigma + 1.0;
                        ((output * (-sigma / s2.sqrt()))? + (sample / s2)?)?
                    }
                    Prediction::Sample => output.clone(),
                };
                let derivative = ((sample - original)? / sigma)?;
                sample + (derivative * (next - sigma))?
            }
            State::Ddim {
                final_alpha,
                clip,
                ratio,
            } => {
                let t = timestep as i64;
                let prev = t - *ratio as i64;
                let a = self.schedule.alpha(t, *final_alpha);
                let a_prev = self.schedule.alpha(prev, *final_alpha);
                let b = 1.0 - a;
                let (mut original, epsilon) = match prediction {
                    Prediction::Epsilon => (
                        ((sample - (output * b.sqrt())?)? / a.sqrt())?,
                        output.clone(),
                    ),
                    Prediction::Sample => (
                        output.clone(),
                        ((sample - (output * a.sqrt())?)? / b.sqrt())?,
                    ),
                    Prediction::Velocity => (
                        ((sample * a.sqrt())? - (output * b.sqrt())?)?,
                        ((output * a.sqrt())? + (sample * b.sqrt())?)?,
                    ),
                };
                if let Some(range) = clip {
                    original = original.clamp(-*range, *range)?;
                }
                (original * a_prev.sqrt())? + (epsilon * (1.0 - a_prev).sqrt())?
            }
            State::Pndm(p) => {
                let schedule = &self.schedule;
                if p.counter < p.prk_len {
                    p.step_prk(schedule, output, timestep as i64, sample)
                } else {
                    p.step_plms(schedule, output, timestep as i64, sample)
                }
            }
        }
    }
}

impl Pndm {
    fn step_prk(
        &mut self,
        s: &Schedule,
        output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let diff = if self.counter % 2 == 1 {
            0
        } else {
            self.ratio / 2
        };
        let prev = timestep - diff;
        let t = self.prk[self.counter / 4 * 4];
        let add = |acc: &Option<Tensor>, x: Tensor| -> candle_core::Result<Tensor> {
            match acc {
                Some(a) => a + x,
                None => Ok(x),
            }
        };
        let output = match self.counter % 4 {
            0 => {
                self.cur_output = Some(add(&self.cur_output, (output * (1.0 / 6.0))?)?);
                self.ets.push(output.clone());
                self.cur_sample = Some(sample.clone());
                output.clone()
            }
            1 | 2 => {
                self.cur_output = Some(add(&self.cur_output, (output * (1.0 / 3.0))?)?);
                output.clone()
            }
            _ => {
                let total = add(&self.cur_output, (output * (1.0 / 6.0))?)?;
                self.cur_output = None;
                total
            }
        };
        let base = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let out = self.prev_sample(s, &base, t, prev, &output);
        self.counter += 1;
        out
    }

    fn step_plms(
        &mut self,
        s: &Schedule,
        output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let mut t = timestep;
        let mut prev = t - self.ratio;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(output.clone());
        } else {
            prev = t;
            t += self.ratio;
        }
        let mut sample = sample.clone();
        let e = &self.ets;
        let n = e.len();
        let combined = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            output.clone()
        } else if n == 1 && self.counter == 1 {
            if let Some(cur) = self.cur_sample.take() {
                sample = cur;
            }
            ((output + &e[0])? / 2.0)?
        } else if n == 2 {
            (((&e[1] * 3.0)? - &e[0])? / 2.0)?
        } else if n == 3 {
            ((((&e[2] * 23.0)? - (&e[1] * 16.0)?)? + (&e[0] * 5.0)?)? / 12.0)?
        } else {
            let k = n - 4;
            (((((&e[k + 3] * 55.0)? - (&e[k + 2] * 59.0)?)? + (&e[k + 1] * 37.0)?)?
                - (&e[k] * 9.0)?)?
                / 24.0)?
        };
        let out = self.prev_sample(s, &sample, t, prev, &combined);
        self.counter += 1;
        out
    }

    /// Formula (9) of the PNDM paper, as diffusers' `_get_prev_sample`.
    fn prev_sample(
        &self,
        s: &Schedule,
        sample: &Tensor,
        t: i64,
        prev: i64,
        output: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let a = s.alpha(t, self.final_alpha);
        let a_prev = s.alpha(prev, self.final_alpha);
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let output = match s.prediction {
            Prediction::Velocity => ((output * a.sqrt())? + (sample * b.sqrt())?)?,
            _ => output.clone(),
        };
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        (sample * sample_coeff)? - (output * ((a_prev - a) / denom))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(extra: &str) -> Schedule {
        let json = format!(
            r#"{{"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "leading"{extra}}}"#
        );
        Schedule::new(serde_json::from_str(&json).unwrap()).unwrap()
    }

    #[test]
    fn timesteps_match_diffusers() {
        let s = schedule("");
        let euler = s.scheduler(SchedulerKind::Euler, 4).unwrap();
        assert_eq!(euler.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
        let ddim = s.scheduler(SchedulerKind::Ddim, 5).unwrap();
        assert_eq!(ddim.timesteps(), &[801.0, 601.0, 401.0, 201.0, 1.0]);
        let pndm = s.scheduler(SchedulerKind::Pndm, 4).unwrap();
        let want = [751, 626, 626, 501, 501, 376, 376, 251, 251, 126, 126, 1, 1];
        assert_eq!(pndm.timesteps(), want.map(f64::from));
        let pndm = s.scheduler(SchedulerKind::Pndm, 5).unwrap();
        let want = [
            801, 701, 701, 601, 601, 501, 501, 401, 401, 301, 301, 201, 201, 1,
        ];
        assert_eq!(pndm.timesteps(), want.map(f64::from));
        let skip = schedule(r#", "skip_prk_steps": true"#);
        let plms = skip.scheduler(SchedulerKind::Pndm, 4).unwrap();
        assert_eq!(plms.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
    }

    #[test]
    fn bad_names_and_steps_are_refused() {
        let e = "karras".parse::<SchedulerKind>().unwrap_err().to_string();
        assert!(e.contains("euler, ddim, pndm"), "{e}");
        let e = schedule("").scheduler(SchedulerKind::Ddim, 0).unwrap_err();
        assert!(e.to_string().contains("num_inference_steps"), "{e}");
    }
}
