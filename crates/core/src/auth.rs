/// Why a listener other machines can reach refuses repository load and unload when the server
/// has no management token.
pub const REMOTE_CHANGES_NEED_TOKEN: &str = "loading and unloading models on a listener other machines can reach needs the server's management token (--management-token); without one, use the management API on 127.0.0.1";

/// A secret that management requests must present (`Authorization: Bearer TOKEN`).
///
/// Compared in constant time, so how long a wrong guess takes says nothing about how close it
/// was. Its `Debug` does not print it.
///
/// ```
/// let token = ferroserve_core::Token::new("s3cret").unwrap();
/// assert!(token.matches_header("Bearer s3cret"));
/// assert!(!token.matches_header("Bearer s3creT"));
/// assert!(!token.matches_header("s3cret"));
/// ```
#[derive(Clone)]
pub struct Token(std::sync::Arc<str>);

impl Token {
    /// A token; `None` when it is empty or blank, which would protect nothing.
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Token(secret.into()))
    }

    /// Whether an `Authorization` header value carries this token (`Bearer TOKEN`).
    pub fn matches_header(&self, value: &str) -> bool {
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        constant_time_eq::constant_time_eq(presented.as_bytes(), self.0.as_bytes())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}
