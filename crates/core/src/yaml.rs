//! A bound on how deeply a YAML file may nest, checked on the text before any parser sees it.
//!
//! The YAML parser's time grows with the square of the nesting depth: a 60,000-level file
//! took 21 s to refuse. No configuration a person writes nests more than a dozen levels, so
//! files past [`MAX_YAML_DEPTH`] are refused in a single pass over their text.

/// Deepest nesting accepted in a YAML file.
pub const MAX_YAML_DEPTH: usize = 64;

/// Refuses YAML text that may nest deeper than [`MAX_YAML_DEPTH`] levels.
///
/// The depth is over-estimated, never under: every indentation level still open, every
/// `- ` or `? ` that starts a nested item on a line, and every open `[` or `{` count, with quoted
/// strings and comments left out.
///
/// ```
/// use ferroserve_core::check_yaml_depth;
///
/// assert!(check_yaml_depth("replicas: 2\ndynamic_batching:\n  max_queue_size: 8\n").is_ok());
/// assert!(check_yaml_depth(&"[".repeat(100)).is_err());
/// ```
pub fn check_yaml_depth(text: &str) -> Result<(), String> {
    let mut indents: Vec<usize> = Vec::new();
    let mut brackets = 0usize;
    for (number, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if body.trim().is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        // Inside a flow collection indentation means nothing.
        if brackets == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let (items, open) = scan_line(body, &mut brackets);
        let depth = indents.len() + items + open.max(brackets);
        if depth > MAX_YAML_DEPTH {
            return Err(format!(
                "the YAML nests deeper than {MAX_YAML_DEPTH} levels (line {})",
                number + 1
            ));
        }
    }
    Ok(())
}

/// Counts the block items a line opens (`- - - x`) and updates the flow-collection depth;
/// returns the items and the deepest flow depth reached on the line.
fn scan_line(body: &str, brackets: &mut usize) -> (usize, usize) {
    let bytes = body.as_bytes();
    let mut items = 0;
    let mut i = 0;
    while i + 1 < bytes.len() && matches!(bytes[i], b'-' | b'?') && bytes[i + 1] == b' ' {
        items += 1;
        i += 2;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
    }
    let mut deepest = *brackets;
    let mut quote: Option<u8> = None;
    let mut prev = b' ';
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'#' if prev == b' ' || prev == b'\t' => break,
                b'[' | b'{' => {
                    *brackets += 1;
                    deepest = deepest.max(*brackets);
                }
                b']' | b'}' => *brackets = brackets.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
        i += 1;
    }
    (items, deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_files_pass() {
        let flow = "jtype: Flow\nwith:\n  port: 8080\nexecutors:\n  - name: a\n    uses: A\n    uses_with: {x: [1, 2, {y: \"[[[[\"}]}\n    # [[[[[[ a comment\n  - name: b\n    needs: [a]\n";
        check_yaml_depth(flow).unwrap();
    }

    #[test]
    fn deep_files_are_refused_quickly() {
        let cases = [
            "[".repeat(60_000),
            "{a: ".repeat(60_000),
            (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
            "- ".repeat(200) + "x",
            format!("a:\n{}", (0..100).map(|_| "  [\n").collect::<String>()),
        ];
        for text in cases {
            let started = std::time::Instant::now();
            let e = check_yaml_depth(&text).unwrap_err();
            assert!(e.contains("deeper than 64"), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn brackets_in_quotes_do_not_count() {
        let text = format!("a: '{}'\nb: \"{}\"\n", "[".repeat(500), "{".repeat(500));
        check_yaml_depth(&text).unwrap();
    }
}
