//! Validated domain types and every NEMS rule, as pure functions over protobuf input.
//! A rule broken is a [`Rejection`]: a Spine code plus a diagnostics text a developer can
//! act on. Diagnostics never contain patient data (NHS numbers, names, payload text).

use nems_proto::spine::SpineCode;

pub mod catalogue;
pub mod criteria;
pub mod datetime;
pub mod event;
pub mod nhs;
pub mod patient;
pub mod subscription;

/// A NEMS rule broken by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The Spine code, which decides the HTTP status at the edge.
    pub code: SpineCode,
    /// What is wrong and how to fix it; never patient data.
    pub diagnostics: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(code: SpineCode, diagnostics: impl Into<String>) -> Self {
        Rejection {
            code,
            diagnostics: diagnostics.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.diagnostics)
    }
}

impl std::error::Error for Rejection {}
