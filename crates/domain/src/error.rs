/// Errors a caller can act on. Each maps to one HTTP status and JMessage error code in the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A parameter or body is invalid: the message names it, says what is wrong and what is accepted.
    #[error("{0}")]
    Invalid(String),
    /// A whole request is over one of its limits.
    #[error("{0}")]
    TooLarge(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
