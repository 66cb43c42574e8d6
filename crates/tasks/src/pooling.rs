//! From token vectors to one sentence vector.

use crate::config::Pooling;
use crate::files::Files;
use crate::text::read_json;

/// The pooling sentence-transformers' `1_Pooling/config.json` asks for, if there is one.
pub(crate) fn from_sentence_transformers(files: &Files) -> Result<Option<Pooling>, String> {
    let Some(path) = files.try_find("1_Pooling/config.json") else {
        return Ok(None);
    };
    let config = read_json(&path).ok_or_else(|| format!("{}: not JSON", path.display()))?;
    let on = |key: &str| config.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(key, _)| on(key))
    .map(|(_, p)| p)
    .collect();
    match modes.as_slice() {
        [one] => Ok(Some(*one)),
        [] => Err(format!(
            "{}: no pooling mode this server supports is on (mean, cls, max)",
            path.display()
        )),
        _ => Err(format!(
            "{}: several pooling modes are on (their vectors would be concatenated); set text.pooling to one",
            path.display()
        )),
    }
}

/// Pools `hidden` (`tokens` rows of `dim` values, of which the first `len` are real) into `dim`
/// values.
pub(crate) fn pool(pooling: Pooling, hidden: &[f32], dim: usize, len: usize) -> Vec<f32> {
    let rows = hidden.chunks_exact(dim).take(len.max(1));
    match pooling {
        Pooling::Cls => hidden[..dim].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0.0f32; dim];
            let mut n = 0.0f32;
            for row in rows {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += v;
                }
                n += 1.0;
            }
            sum.iter_mut().for_each(|s| *s /= n);
            sum
        }
        Pooling::Max => {
            let mut max = vec![f32::NEG_INFINITY; dim];
            for row in rows {
                for (m, v) in max.iter_mut().zip(row) {
                    *m = m.max(*v);
                }
            }
            max
        }
    }
}

/// Scales `v` to unit length (leaves a zero vector alone).
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding() {
        // Two real tokens and one padding token of dimension 2.
        let h = [1.0, 4.0, 3.0, 2.0, 100.0, 100.0];
        assert_eq!(pool(Pooling::Mean, &h, 2, 2), [2.0, 3.0]);
        assert_eq!(pool(Pooling::Max, &h, 2, 2), [3.0, 4.0]);
        assert_eq!(pool(Pooling::Cls, &h, 2, 2), [1.0, 4.0]);
        let mut v = [3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
