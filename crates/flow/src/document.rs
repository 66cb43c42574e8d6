//! Documents: the unit that flows between executors (Jina's Document).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One document: what a client sends and every executor reads and enriches.
///
/// In JSON, `blob` is base64 and absent fields are left out:
///
/// ```
/// use ferroserve_flow::Document;
///
/// let doc: Document = serde_json::from_str(r#"{"text": "hello", "tags": {"lang": "en"}}"#).unwrap();
/// assert_eq!(doc.text.as_deref(), Some("hello"));
/// assert!(!doc.id.is_empty(), "a document without an id gets one");
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Identifier; generated when the client sends none. Joins in a Flow merge by it.
    #[serde(default = "new_id")]
    pub id: String,
    /// Text content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Where the content lives (a file path, a URL, a data URI), as the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Binary content (an encoded image, say); base64 in JSON.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "blob_out",
        deserialize_with = "blob_in"
    )]
    pub blob: Option<Vec<u8>>,
    /// A tensor of numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<DocTensor>,
    /// A vector that represents the document (what encoders write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    /// Named scores (a classifier's probabilities, a search's similarity).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, f32>,
    /// Sub-documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Document>,
    /// Documents found for this one (what a search returns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Document>,
    /// Why an executor could not process this document. The other documents of the request go
    /// on; later executors pass this one through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<DocError>,
}

/// A document's failure: the executor and its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocError {
    /// The executor that failed the document (filled in by the Flow).
    pub executor: String,
    /// Why.
    pub message: String,
}

/// A dense FP32 tensor of a document: `shape` and the values in row-major order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Document {
    /// An empty document with a fresh id.
    pub fn new() -> Self {
        Self {
            id: new_id(),
            ..Default::default()
        }
    }

    /// A document with `text` and a fresh id.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            id: new_id(),
            text: Some(text.into()),
            ..Default::default()
        }
    }

    /// Marks this document failed with `message`, leaving the request's other documents to go
    /// on (an executor returns `Err` instead to fail the whole request).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(DocError {
            executor: String::new(),
            message: message.into(),
        });
    }

    /// Folds `other` (the same document as another branch of a Flow left it) into this one:
    /// content this one lacks is taken, tags and scores are united (the other branch's value
    /// wins a clash), chunks are appended.
    pub fn merge(&mut self, other: Document) {
        if self.text.is_none() {
            self.text = other.text;
        }
        if self.uri.is_none() {
            self.uri = other.uri;
        }
        if self.blob.is_none() {
            self.blob = other.blob;
        }
        if self.tensor.is_none() {
            self.tensor = other.tensor;
        }
        if self.embedding.is_none() {
            self.embedding = other.embedding;
        }
        self.tags.extend(other.tags);
        self.scores.extend(other.scores);
        self.chunks.extend(other.chunks);
        self.matches.extend(other.matches);
        if self.error.is_none() {
            self.error = other.error;
        }
    }
}

/// A process-unique id: the time the process started, and a counter.
fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!("{:x}-{:x}", start, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn blob_out<S: Serializer>(blob: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match blob {
        Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

fn blob_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| {
        base64::engine::general_purpose::STANDARD
            .decode(t.trim())
            .map_err(|e| serde::de::Error::custom(format!("blob is not base64: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_with_base64_blob() {
        let doc = Document {
            id: "a".into(),
            blob: Some(vec![0, 255, 7]),
            scores: [("cos".to_string(), 0.5)].into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["blob"], "AP8H");
        assert!(json.get("text").is_none());
        let back: Document = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
        let bad = serde_json::from_str::<Document>(r#"{"blob": "***"}"#).unwrap_err();
        assert!(bad.to_string().contains("base64"), "{bad}");
        let unknown = serde_json::from_str::<Document>(r#"{"txt": "x"}"#).unwrap_err();
        assert!(unknown.to_string().contains("txt"), "{unknown}");
    }

    #[test]
    fn merge_unites_tags_and_keeps_content() {
        let mut a = Document::text("x");
        a.tags.insert("upper".into(), Value::Bool(true));
        let mut b = a.clone();
        b.text = Some("other".into());
        b.tags.insert("lang".into(), Value::from("en"));
        b.embedding = Some(vec![1.0]);
        a.merge(b);
        assert_eq!(a.text.as_deref(), Some("x"));
        assert_eq!(a.tags.len(), 2);
        assert_eq!(a.embedding, Some(vec![1.0]));
    }
}
