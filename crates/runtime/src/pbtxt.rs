//! Protocol buffers' text format, as Triton's `config.pbtxt` is written: fields `name: value`,
//! messages `name { ... }` (or `name: { ... }`, `name < ... >`), lists `name: [a, b]`, `#`
//! comments, optional `,`/`;` separators. Read into a tree of fields without a schema: what the
//! fields mean is [`crate::triton_config`]'s business.

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A quoted string, unescaped.
    Str(String),
    /// A number, an enum value or `true`/`false`, as written.
    Word(String),
    /// A nested message.
    Message(Message),
}

/// A message: its fields in order; a repeated field appears once per value.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Message(pub Vec<(String, Value)>);

impl Message {
    /// Every value of `name`.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Value> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The last value of `name` (protobuf's rule for a singular field written twice).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.all(name).last()
    }

    /// `name` as text (a string or a word).
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::Str(s) | Value::Word(s) => Some(s),
            Value::Message(_) => None,
        }
    }

    /// `name` as a whole number, or why not.
    pub fn int(&self, name: &str) -> Result<Option<i64>, String> {
        self.text(name)
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| format!("{name}: '{t}' is not a whole number"))
            })
            .transpose()
    }

    /// Every value of `name` as whole numbers.
    pub fn ints(&self, name: &str) -> Result<Vec<i64>, String> {
        self.all(name)
            .map(|v| match v {
                Value::Word(t) => t
                    .parse::<i64>()
                    .map_err(|_| format!("{name}: '{t}' is not a whole number")),
                _ => Err(format!("{name}: expected whole numbers")),
            })
            .collect()
    }

    /// Every value of `name` that is a message.
    pub fn messages<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a Message> + use<'a, 'n> {
        self.all(name).filter_map(|v| match v {
            Value::Message(m) => Some(m),
            _ => None,
        })
    }

    /// The field names, in order, each once.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (k, _) in &self.0 {
            if !out.contains(&k.as_str()) {
                out.push(k);
            }
        }
        out
    }
}

/// Parses a whole text-format message. Errors name the line.
pub(crate) fn parse(text: &str) -> Result<Message, String> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
        depth: 0,
    };
    let m = p.fields(None)?;
    p.skip();
    if p.at < p.chars.len() {
        return Err(p.error("unexpected text"));
    }
    Ok(m)
}

/// Messages nest at most this deep (a config is a few levels; a hostile file is not a stack
/// overflow).
const MAX_DEPTH: usize = 32;

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, what: &str) -> String {
        let line = self.chars[..self.at.min(self.chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count()
            + 1;
        format!("line {line}: {what}")
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    /// Skips blanks and comments.
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.at += 1;
            } else if c == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.at += 1;
                }
            } else {
                break;
            }
        }
    }

    /// Fields until `close` (or the end of the text when `None`).
    fn fields(&mut self, close: Option<char>) -> Result<Message, String> {
        let mut out = Vec::new();
        loop {
            self.skip();
            match (self.peek(), close) {
                (None, None) => return Ok(Message(out)),
                (None, Some(c)) => return Err(self.error(&format!("missing '{c}'"))),
                (Some(c), Some(want)) if c == want => {
                    self.at += 1;
                    return Ok(Message(out));
                }
                _ => {}
            }
            let name = self.word();
            if name.is_empty() {
                return Err(self.error("expected a field name"));
            }
            self.skip();
            let colon = self.peek() == Some(':');
            if colon {
                self.at += 1;
                self.skip();
            }
            match self.peek() {
                Some('[') => {
                    self.at += 1;
                    loop {
                        self.skip();
                        if self.peek() == Some(']') {
                            self.at += 1;
                            break;
                        }
                        let v = self.value()?;
                        out.push((name.clone(), v));
                        self.skip();
                        match self.peek() {
                            Some(',') => self.at += 1,
                            Some(']') => {}
                            _ => return Err(self.error("expected ',' or ']' in a list")),
                        }
                    }
                }
                Some('{') | Some('<') => out.push((name, self.value()?)),
                _ if colon => out.push((name, self.value()?)),
                _ => return Err(self.error(&format!("expected ':' or '{{' after '{name}'"))),
            }
            self.skip();
            if matches!(self.peek(), Some(',') | Some(';')) {
                self.at += 1;
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(open @ ('{' | '<')) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error("messages nest too deep"));
                }
                self.at += 1;
                let m = self.fields(Some(if open == '{' { '}' } else { '>' }))?;
                self.depth -= 1;
                Ok(Value::Message(m))
            }
            Some(q @ ('"' | '\'')) => {
                // Adjacent strings concatenate, as protobuf allows.
                let mut s = self.string(q)?;
                loop {
                    self.skip();
                    match self.peek() {
                        Some(q @ ('"' | '\'')) => s.push_str(&self.string(q)?),
                        _ => return Ok(Value::Str(s)),
                    }
                }
            }
            _ => {
                let w = self.word();
                if w.is_empty() {
                    Err(self.error("expected a value"))
                } else {
                    Ok(Value::Word(w))
                }
            }
        }
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
        {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn string(&mut self, quote: char) -> Result<String, String> {
        self.at += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok(s);
                }
                Some('\\') => {
                    self.at += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.at += 1;
                    s.push(match c {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                Some(c) => {
                    self.at += 1;
                    s.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tritons_example() {
        let m = parse(
            r#"
name: "add_sub"   # the model
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 4 ] }
]
output { name: "OUTPUT0" data_type: TYPE_INT32 dims: 4 }
instance_group [{ count: 2, kind: KIND_CPU }]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters: { key: "EXECUTION_ENV_PATH", value: {string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz"}}
"#,
        )
        .unwrap();
        assert_eq!(m.text("name"), Some("add_sub"));
        assert_eq!(m.int("max_batch_size").unwrap(), Some(8));
        let inputs: Vec<&Message> = m.messages("input").collect();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[1].text("data_type"), Some("TYPE_INT32"));
        assert_eq!(inputs[0].ints("dims").unwrap(), [4]);
        let db = m.messages("dynamic_batching").next().unwrap();
        assert_eq!(db.ints("preferred_batch_size").unwrap(), [4, 8]);
        assert_eq!(m.names().last(), Some(&"parameters"));
    }

    #[test]
    fn mistakes_name_the_line() {
        assert!(parse("name: \"x\"\ninput [ { name: 1 ")
            .unwrap_err()
            .starts_with("line 2"));
        assert!(parse("a: 'unterminated\n")
            .unwrap_err()
            .contains("unterminated"));
        assert!(parse(&"a {".repeat(100)).unwrap_err().contains("too deep"));
    }
}
