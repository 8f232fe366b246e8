//! `POST /STU3/Subscription`, `GET` and `DELETE /STU3/Subscription/{id}`: check the headers,
//! then read the body, translate FHIR to protobuf, call core, translate back. No NEMS rule is
//! applied here.

use http::header::{ETAG, LAST_MODIFIED, LOCATION};
use http::{HeaderMap, HeaderValue, StatusCode};
use nems_proto::spine::SpineCode;
use nems_proto::v1 as pb;

use super::{
    AppState, Ctx, HttpResponse, RequestBody, check_headers, empty_response, error_response,
    fhir_response, notices_body, read_body,
};
use crate::error::EdgeError;
use crate::fhir::{FhirError, Format};
use crate::jwt::Operation;
use crate::negotiate::{Formats, request_format, response_format};
use crate::translate::subscription as translate;

/// Maps a body parse failure.
pub fn fhir_error(e: FhirError) -> EdgeError {
    match e {
        FhirError::NotWellFormed(text) => EdgeError::new(SpineCode::MessageNotWellFormed, text),
        FhirError::Invalid(text) => EdgeError::new(SpineCode::InvalidResource, text),
    }
}

/// `POST /STU3/Subscription`.
pub async fn create(
    state: &AppState,
    headers: &HeaderMap,
    body: impl RequestBody,
    ctx: &Ctx,
) -> HttpResponse {
    let body_format = request_format(headers, Formats::XmlOrJson);
    let format = response_format(
        headers,
        ctx.query.as_deref(),
        Formats::XmlOrJson,
        *body_format.as_ref().unwrap_or(&Format::Xml),
    );
    // An unsupported Content-Type is answered in the format `_format` or `Accept` asks for.
    let (body_format, format) = match (body_format, format) {
        (Ok(body_format), Ok(format)) => (body_format, format),
        (Err(e), format) => {
            return error_response(&e, format.unwrap_or(Format::Xml), &ctx.request_id);
        }
        (Ok(_), Err(e)) => return error_response(&e, Format::Xml, &ctx.request_id),
    };
    match create_inner(state, headers, body, body_format, format, ctx).await {
        Ok(response) => response,
        Err(e) => error_response(&e, format, &ctx.request_id),
    }
}

async fn create_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: impl RequestBody,
    body_format: Format,
    format: Format,
    ctx: &Ctx,
) -> Result<HttpResponse, EdgeError> {
    let checked = check_headers(state, headers, Operation::Create, ctx)?;
    let body = read_body(body, state.config.max_body_bytes).await?;
    if body.is_empty() {
        return Err(EdgeError::new(
            SpineCode::BadRequest,
            "a Subscription resource is required in the body",
        ));
    }
    let resource = translate::parse(body_format, &body).map_err(fhir_error)?;
    let request = pb::CreateSubscriptionRequest {
        caller: Some(checked.caller),
        subscription: Some(resource),
    };
    let created = state
        .core
        .call(|mut core| {
            let request = request.clone();
            async move { core.subscriptions.create_subscription(request).await }
        })
        .await
        .map_err(|s| EdgeError::from_core(&s, &ctx.request_id))?
        .into_inner();
    let location = format!("{}/STU3/Subscription/{}", state.config.base_url, created.id);
    let mut response = match notices_body(&created.notices, format, &ctx.request_id) {
        Some(body) => fhir_response(StatusCode::CREATED, format, body),
        None => empty_response(StatusCode::CREATED),
    };
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    if let Some(stored) = &created.subscription {
        version_headers(response.headers_mut(), stored);
    }
    tracing::info!(request_id = %ctx.request_id, subscription = %created.id, "subscription created");
    Ok(response)
}

/// `GET /STU3/Subscription/{id}`.
pub async fn read(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    body: impl RequestBody,
    ctx: &Ctx,
) -> HttpResponse {
    let format = match response_format(
        headers,
        ctx.query.as_deref(),
        Formats::XmlOrJson,
        Format::Xml,
    ) {
        Ok(f) => f,
        Err(e) => return error_response(&e, Format::Xml, &ctx.request_id),
    };
    let result = async {
        let checked = check_headers(state, headers, Operation::Read, ctx)?;
        if !read_body(body, state.config.max_body_bytes)
            .await?
            .is_empty()
        {
            return Err(EdgeError::new(
                SpineCode::BadRequest,
                "a read must not carry a body",
            ));
        }
        let request = pb::GetSubscriptionRequest {
            caller: Some(checked.caller),
            id: id.to_ascii_lowercase(),
        };
        let got = state
            .core
            .call(|mut core| {
                let request = request.clone();
                async move { core.subscriptions.get_subscription(request).await }
            })
            .await
            .map_err(|s| EdgeError::from_core(&s, &ctx.request_id))?
            .into_inner();
        let resource = got.subscription.unwrap_or_default();
        let mut response =
            fhir_response(StatusCode::OK, format, translate::write(format, &resource));
        version_headers(response.headers_mut(), &resource);
        Ok(response)
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e, format, &ctx.request_id))
}

/// `DELETE /STU3/Subscription/{id}`.
pub async fn delete(state: &AppState, headers: &HeaderMap, id: &str, ctx: &Ctx) -> HttpResponse {
    let format = match response_format(
        headers,
        ctx.query.as_deref(),
        Formats::XmlOrJson,
        Format::Xml,
    ) {
        Ok(f) => f,
        Err(e) => return error_response(&e, Format::Xml, &ctx.request_id),
    };
    let result = async {
        let checked = check_headers(state, headers, Operation::Delete, ctx)?;
        let request = pb::DeleteSubscriptionRequest {
            caller: Some(checked.caller),
            id: id.to_ascii_lowercase(),
        };
        state
            .core
            .call(|mut core| {
                let request = request.clone();
                async move { core.subscriptions.delete_subscription(request).await }
            })
            .await
            .map_err(|s| EdgeError::from_core(&s, &ctx.request_id))?;
        tracing::info!(request_id = %ctx.request_id, subscription = %id, "subscription deleted");
        Ok(empty_response(StatusCode::OK))
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e, format, &ctx.request_id))
}

/// `ETag` (weak, from `meta.versionId`) and `Last-Modified` (from `meta.lastUpdated`).
fn version_headers(headers: &mut HeaderMap, resource: &pb::SubscriptionResource) {
    let Some(meta) = &resource.meta else { return };
    if !meta.version_id.is_empty()
        && let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", meta.version_id))
    {
        headers.insert(ETAG, v);
    }
    if let Some(http_date) = http_date(&meta.last_updated)
        && let Ok(v) = HeaderValue::from_str(&http_date)
    {
        headers.insert(LAST_MODIFIED, v);
    }
}

/// Formats a FHIR instant as an HTTP date (RFC 7231 IMF-fixdate).
fn http_date(instant: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(instant, &Rfc3339).ok()?;
    let t = t.to_offset(time::UtcOffset::UTC);
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    Some(format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        days[t.weekday().number_days_from_monday() as usize],
        t.day(),
        months[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(
            super::http_date("2024-01-31T10:00:00.123+01:00").as_deref(),
            Some("Wed, 31 Jan 2024 09:00:00 GMT")
        );
        assert_eq!(super::http_date("nonsense"), None);
    }
}
