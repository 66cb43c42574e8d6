//! Class names, softmax and top-k.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::config::ClassificationConfig;
use crate::files::Files;

/// A model's class names, index by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(Arc<[String]>);

impl Labels {
    /// Loads the names for `classes` classes as `config` says (see
    /// [`ClassificationConfig::labels`]).
    pub(crate) fn load(
        config: &ClassificationConfig,
        files: &Files,
        classes: usize,
    ) -> Result<Self, String> {
        let file = match &config.labels {
            Some(name) => Some(files.find(name)?),
            None => files
                .try_find("index_to_name.json")
                .or_else(|| files.try_find("config.json").filter(|p| has_id2label(p))),
        };
        let names = match file {
            Some(path) => read(&path)?,
            None => Vec::new(),
        };
        if names.is_empty() {
            return Ok(Self((0..classes).map(|i| format!("LABEL_{i}")).collect()));
        }
        if names.len() != classes {
            return Err(format!(
                "the labels name {} classes but the model outputs {classes}",
                names.len()
            ));
        }
        Ok(Self(names.into()))
    }

    /// The name of class `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.0[index]
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn has_id2label(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("id2label").is_some())
}

/// Reads `{"0": "name"}`, `{"0": ["wnid", "name"]}` or a config's `id2label` into a dense list.
fn read(path: &Path) -> Result<Vec<String>, String> {
    let fail = |m: String| format!("{}: {m}", path.display());
    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let map = value
        .get("id2label")
        .unwrap_or(&value)
        .as_object()
        .ok_or_else(|| fail("expected an object of index to name".into()))?;
    let mut names = vec![None; map.len()];
    for (key, v) in map {
        let i: usize = key
            .parse()
            .ok()
            .filter(|&i| i < map.len())
            .ok_or_else(|| fail(format!("key '{key}' is not an index below {}", map.len())))?;
        let name = match v {
            Value::String(s) => s.clone(),
            // TorchServe also accepts ImageNet's ["n01440764", "tench"].
            Value::Array(a) => a
                .last()
                .and_then(Value::as_str)
                .ok_or_else(|| fail(format!("entry '{key}' is not a list of strings")))?
                .to_string(),
            _ => return Err(fail(format!("entry '{key}' is not a string"))),
        };
        names[i] = Some(name);
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| n.ok_or_else(|| fail(format!("index {i} has no name"))))
        .collect()
}

/// One input's probabilities over the classes, with their names.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Probability (or score, when softmax is off) of each class, by index.
    pub probabilities: Vec<f32>,
    /// Class names, by index.
    pub labels: Labels,
}

impl Scores {
    /// The `k` most likely classes, most likely first: `(index, name, probability)`.
    pub fn top_k(&self, k: usize) -> Vec<(usize, &str, f32)> {
        let mut order: Vec<usize> = (0..self.probabilities.len()).collect();
        let k = k.min(order.len());
        let by_score =
            |a: &usize, b: &usize| self.probabilities[*b].total_cmp(&self.probabilities[*a]);
        if k < order.len() && k > 0 {
            order.select_nth_unstable_by(k - 1, by_score);
        }
        order.truncate(k);
        order.sort_by(by_score);
        order
            .into_iter()
            .map(|i| (i, self.labels.name(i), self.probabilities[i]))
            .collect()
    }
}

/// Softmax in place, stable for large logits.
pub(crate) fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = [1000.0, 1001.0, 999.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[0] && v[0] > v[2]);
    }

    #[test]
    fn top_k_is_sorted_and_bounded() {
        let s = Scores {
            probabilities: vec![0.1, 0.5, 0.15, 0.25],
            labels: Labels(["a", "b", "c", "d"].map(String::from).into()),
        };
        let top: Vec<&str> = s.top_k(3).into_iter().map(|t| t.1).collect();
        assert_eq!(top, ["b", "d", "c"]);
        assert_eq!(s.top_k(10).len(), 4);
        assert!(s.top_k(0).is_empty());
    }
}
