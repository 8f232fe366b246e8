//! `GET /STU3/metadata`: the CapabilityStatement, in XML or JSON.

use http::{HeaderMap, StatusCode};

use super::{AppState, Ctx, HttpResponse, error_response, fhir_response};
use crate::fhir::Format;
use crate::fhir::capability::{self, CapabilityInfo};
use crate::negotiate::{Formats, response_format};

/// Serves the CapabilityStatement.
pub fn get(state: &AppState, headers: &HeaderMap, ctx: &Ctx) -> HttpResponse {
    let format = match response_format(
        headers,
        ctx.query.as_deref(),
        Formats::XmlOrJson,
        Format::Xml,
    ) {
        Ok(f) => f,
        Err(e) => return error_response(&e, Format::Xml, &ctx.request_id),
    };
    let info = CapabilityInfo {
        base_url: state.config.base_url.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        date: "2026-11-21".into(),
    };
    fhir_response(StatusCode::OK, format, capability::write(format, &info))
}
