//! Mail client discovery on the web listener: Mozilla autoconfig (Thunderbird, K-9, many
//! phones) and Microsoft Autodiscover POX (Outlook, iOS "Exchange" probing).
//!
//! Public: no session, no CSRF, no secret in any answer. The answer never depends on
//! whether the mailbox exists — only the domain is looked up (is it served here?) — so
//! discovery tells an outsider nothing about which addresses are real. A domain served
//! elsewhere gets 404, so a client moves on to its next guess; the store being down gets
//! 503, which clients treat as "try again".
//!
//! Autodiscover's quirks, kept: its path is matched without case (Outlook sends
//! `/Autodiscover/Autodiscover.xml`), and a request without a usable address gets
//! Autodiscover's own error document with 200, as Exchange does, rather than a bare 400.
//! Bodies are capped by the router's limit (413); request bodies are never logged.

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{not_found, AppState, WebState, MAX_BODY_BYTES};
use crate::devices::{autoconfig, autodiscover, ClientSettings};
use crate::names::{normalize_domain, Address};

/// Where Thunderbird looks first, on the mail domain's own web server.
pub const AUTOCONFIG_WELL_KNOWN: &str = "/.well-known/autoconfig/mail/config-v1.1.xml";
/// Where it looks on `autoconfig.<domain>`.
pub const AUTOCONFIG_ISP: &str = "/mail/config-v1.1.xml";
/// Autodiscover's path, lower-cased; requests match it without case.
pub const AUTODISCOVER: &str = "/autodiscover/autodiscover.xml";

const XML: &str = "application/xml; charset=utf-8";

type QueryResult = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn query_value<'a>(query: &'a QueryResult, name: &str) -> Option<&'a str> {
    let Ok(Query(pairs)) = query else {
        return None;
    };
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn xml(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, XML)], body).into_response()
}

/// Whether the domain is served here: `Err` is the answer to give instead (404 or 503).
async fn check_served(state: &WebState, domain: &str) -> Result<(), Box<Response>> {
    match state.store.served_domain(domain).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Box::new(not_found(state))),
        Err(e) => {
            tracing::error!(target: "mailauthd::web", error = %e, "store error answering mail client discovery");
            Err(Box::new(state.problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "The mailbox service is unavailable right now. Try again in a minute.",
            )))
        }
    }
}

/// The domain of `autoconfig.<domain>` in a Host header (port dropped).
fn autoconfig_host_domain(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let name = match host.rsplit_once(':') {
        // A bracketed IPv6 literal is never autoconfig.<domain>.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.to_ascii_lowercase();
    let domain = name.strip_prefix("autoconfig.")?;
    normalize_domain(domain).ok()
}

/// `GET /.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=…` (and `/mail/…`).
pub async fn autoconfig(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    let Some(clients) = &state.clients else {
        return not_found(&state);
    };
    let domain = match query_value(&query, "emailaddress") {
        Some(text) => Address::parse(text).ok().map(|a| a.domain().to_string()),
        None => autoconfig_host_domain(&headers),
    };
    let Some(domain) = domain else {
        return not_found(&state);
    };
    if let Err(r) = check_served(&state, &domain).await {
        return *r;
    }
    xml(autoconfig::document(
        clients,
        &domain,
        &state.settings.title,
    ))
}

/// The router's fallback: Autodiscover at its path in any case, a 404 page for the rest.
pub async fn autodiscover_or_not_found(
    State(state): State<AppState>,
    request: Request,
) -> Response {
    let is_autodiscover = request.uri().path().eq_ignore_ascii_case(AUTODISCOVER);
    let method = request.method().clone();
    let Some(clients) = state.clients.as_ref().filter(|_| is_autodiscover) else {
        return not_found(&state);
    };
    let address = match method {
        Method::GET => {
            let query: QueryResult = Query::try_from_uri(request.uri());
            query_value(&query, "emailaddress").map(str::to_string)
        }
        Method::POST => match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
            Ok(body) => address_in_body(&body),
            Err(_) => {
                tracing::warn!(target: "mailauthd::web", limit = MAX_BODY_BYTES, "autodiscover request refused: body too large");
                return state.problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "That request was far larger than any mail client sends.",
                );
            }
        },
        _ => return not_found(&state),
    };
    autodiscover_answer(&state, clients, address.as_deref()).await
}

/// The address an Autodiscover body asks about; `None` when it names none or cannot be
/// read. A document type declaration is refused before the parser sees it: Autodiscover
/// requests never carry one, and entities are how XML attacks start.
fn address_in_body(body: &Bytes) -> Option<String> {
    let declares = body
        .windows(b"<!DOCTYPE".len())
        .any(|w| w.eq_ignore_ascii_case(b"<!DOCTYPE") || w.starts_with(b"<!ENTITY"));
    if declares {
        return None;
    }
    autodiscover::requested_address(body).ok().flatten()
}

async fn autodiscover_answer(
    state: &WebState,
    clients: &ClientSettings,
    address: Option<&str>,
) -> Response {
    let Some(address) = address.and_then(|a| Address::parse(a).ok()) else {
        return xml(autodiscover::invalid_request());
    };
    if let Err(r) = check_served(state, address.domain()).await {
        return *r;
    }
    xml(autodiscover::response(clients, address.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_autoconfig_host_names_the_domain() {
        assert_eq!(
            autoconfig_host_domain(&host("Autoconfig.Example.org:8443")).as_deref(),
            Some("example.org")
        );
        assert_eq!(
            autoconfig_host_domain(&host("autoconfig.example.org")).as_deref(),
            Some("example.org")
        );
        assert_eq!(autoconfig_host_domain(&host("mail.example.org")), None);
        assert_eq!(autoconfig_host_domain(&host("autoconfig.")), None);
        assert_eq!(autoconfig_host_domain(&HeaderMap::new()), None);
    }

    #[test]
    fn declarations_are_refused_before_parsing() {
        let evil = Bytes::from_static(
            b"<?xml version=\"1.0\"?><!doctype x [<!ENTITY a \"b\">]><Autodiscover/>",
        );
        assert_eq!(address_in_body(&evil), None);
        let evil = Bytes::from_static(b"<Autodiscover><!ENTITY a \"b\"></Autodiscover>");
        assert_eq!(address_in_body(&evil), None);
    }
}
