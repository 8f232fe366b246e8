//! FHIR content negotiation (nems.md §2.4, decisions.md §8): which format a request body
//! is in, and which format to answer in. The subscription API takes the four XML and four
//! JSON FHIR media types; publish takes the XML ones only; no media type means XML;
//! `_format` overrides `Accept`. Anything else is `415 UNSUPPORTED_MEDIA_TYPE`.

use http::HeaderMap;
use http::header::{ACCEPT, CONTENT_TYPE};
use nems_proto::spine::SpineCode;

use crate::error::EdgeError;
use crate::fhir::Format;

/// Which formats an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    /// XML and JSON (subscriptions, metadata).
    XmlOrJson,
    /// XML only (publish).
    XmlOnly,
}

fn unsupported(what: &str, allowed: Formats) -> EdgeError {
    let list = match allowed {
        Formats::XmlOnly => {
            "application/fhir+xml or application/xml+fhir (publishing accepts XML only)"
        }
        Formats::XmlOrJson => {
            "application/fhir+xml, application/xml+fhir, application/fhir+json or application/json+fhir"
        }
    };
    EdgeError::new(
        SpineCode::UnsupportedMediaType,
        format!("{what} must be {list}, optionally with charset=utf-8"),
    )
}

/// Classifies one media type (`type/subtype; params`). `strict` accepts only the eight FHIR
/// types; otherwise plain `application/xml`, `text/xml` and `application/json` and the
/// wildcards are understood too (for `Accept`). `Some(None)` means "any".
fn classify(media: &str, strict: bool) -> Option<Option<Format>> {
    let mut parts = media.split(';');
    let essence = parts.next()?.trim().to_ascii_lowercase();
    for param in parts {
        let (name, value) = param.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        match name.as_str() {
            "charset" if value == "utf-8" => {}
            "fhirversion" | "q" => {}
            _ => return None,
        }
    }
    match essence.as_str() {
        "application/fhir+xml" | "application/xml+fhir" => Some(Some(Format::Xml)),
        "application/fhir+json" | "application/json+fhir" => Some(Some(Format::Json)),
        "application/xml" | "text/xml" if !strict => Some(Some(Format::Xml)),
        "application/json" if !strict => Some(Some(Format::Json)),
        "*/*" | "application/*" if !strict => Some(None),
        _ => None,
    }
}

fn allowed(format: Format, formats: Formats) -> bool {
    formats == Formats::XmlOrJson || format == Format::Xml
}

/// The format of the request body (`Content-Type`; XML when absent).
pub fn request_format(headers: &HeaderMap, formats: Formats) -> Result<Format, EdgeError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(Format::Xml);
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("Content-Type", formats))?;
    match classify(text, true) {
        Some(Some(format)) if allowed(format, formats) => Ok(format),
        _ => Err(unsupported("Content-Type", formats)),
    }
}

/// The format to answer in: `_format`, else `Accept`, else `fallback`.
pub fn response_format(
    headers: &HeaderMap,
    query: Option<&str>,
    formats: Formats,
    fallback: Format,
) -> Result<Format, EdgeError> {
    if let Some(requested) = format_param(query) {
        let format = match requested.to_ascii_lowercase().as_str() {
            "xml" => Some(Format::Xml),
            "json" => Some(Format::Json),
            other => classify(other, true).flatten(),
        };
        return match format {
            Some(f) if allowed(f, formats) => Ok(f),
            _ => Err(unsupported("_format", formats)),
        };
    }
    let Some(value) = headers.get(ACCEPT) else {
        return Ok(fallback);
    };
    let text = value.to_str().map_err(|_| unsupported("Accept", formats))?;
    let mut ranges: Vec<(f32, Option<Format>)> = Vec::new();
    for range in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let q = range
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("q="))
            .next()
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        if let Some(kind) = classify(range, false) {
            ranges.push((q, kind));
        }
    }
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, kind) in ranges {
        match kind {
            None => return Ok(fallback),
            Some(f) if allowed(f, formats) => return Ok(f),
            Some(_) => {}
        }
    }
    Err(unsupported("Accept", formats))
}

/// The `_format` query parameter, percent-decoded.
fn format_param(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "_format")
        .map(|(_, v)| {
            v.replace("%2B", "+")
                .replace("%2b", "+")
                .replace("%2F", "/")
                .replace("%2f", "/")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(content_type: Option<&str>, accept: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        if let Some(a) = accept {
            h.insert(ACCEPT, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn the_eight_media_types_and_the_default() {
        for (ct, format) in [
            ("application/fhir+xml", Format::Xml),
            ("application/fhir+xml;charset=utf-8", Format::Xml),
            ("application/xml+fhir", Format::Xml),
            ("application/xml+fhir; charset=UTF-8", Format::Xml),
            ("application/fhir+json", Format::Json),
            ("application/fhir+json;charset=utf-8", Format::Json),
            ("application/json+fhir", Format::Json),
            ("application/json+fhir;charset=utf-8", Format::Json),
        ] {
            assert_eq!(
                request_format(&headers(Some(ct), None), Formats::XmlOrJson).unwrap(),
                format,
                "{ct}"
            );
        }
        assert_eq!(
            request_format(&headers(None, None), Formats::XmlOrJson).unwrap(),
            Format::Xml
        );
        for bad in [
            "application/json",
            "text/plain",
            "application/fhir+xml;charset=latin1",
            "application/fhir+xml;version=9",
        ] {
            let e = request_format(&headers(Some(bad), None), Formats::XmlOrJson).unwrap_err();
            assert_eq!(e.code, SpineCode::UnsupportedMediaType, "{bad}");
        }
    }

    #[test]
    fn publish_is_xml_only() {
        assert_eq!(
            request_format(
                &headers(Some("application/fhir+xml"), None),
                Formats::XmlOnly
            )
            .unwrap(),
            Format::Xml
        );
        let e = request_format(
            &headers(Some("application/fhir+json"), None),
            Formats::XmlOnly,
        )
        .unwrap_err();
        assert!(e.diagnostics.contains("XML only"));
        assert!(
            response_format(
                &headers(None, Some("application/fhir+json")),
                None,
                Formats::XmlOnly,
                Format::Xml
            )
            .is_err()
        );
    }

    #[test]
    fn accept_and_format_parameter() {
        let h = |a| headers(None, Some(a));
        let xj = Formats::XmlOrJson;
        assert_eq!(
            response_format(&h("application/fhir+json"), None, xj, Format::Xml).unwrap(),
            Format::Json
        );
        assert_eq!(
            response_format(&h("*/*"), None, xj, Format::Json).unwrap(),
            Format::Json
        );
        assert_eq!(
            response_format(
                &h("text/html, application/json;q=0.5"),
                None,
                xj,
                Format::Xml
            )
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            response_format(
                &h("application/fhir+xml;q=0.2, application/fhir+json"),
                None,
                xj,
                Format::Xml
            )
            .unwrap(),
            Format::Json
        );
        assert!(response_format(&h("text/html"), None, xj, Format::Xml).is_err());
        assert_eq!(
            response_format(&headers(None, None), None, xj, Format::Json).unwrap(),
            Format::Json
        );
        // _format wins over Accept.
        assert_eq!(
            response_format(
                &h("application/fhir+xml"),
                Some("_format=json"),
                xj,
                Format::Xml
            )
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            response_format(
                &h("application/fhir+json"),
                Some("a=b&_format=application/fhir%2Bxml"),
                xj,
                Format::Xml
            )
            .unwrap(),
            Format::Xml
        );
        assert!(
            response_format(&headers(None, None), Some("_format=yaml"), xj, Format::Xml).is_err()
        );
    }
}
