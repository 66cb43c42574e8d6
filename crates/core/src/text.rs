/// The last `n` lines of `text` (a child process's output, a log), for error messages that show
/// what went wrong without all that came before.
///
/// ```
/// assert_eq!(ferroserve_core::last_lines("a\nb\nc\n", 2), "b\nc");
/// ```
pub fn last_lines(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.reverse();
    lines.join("\n")
}
