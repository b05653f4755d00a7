//! Cross-origin access for browser apps: the calls a web app of another origin makes (an
//! order's state and its watch upgrade with a watch token, its history with an ops token), for
//! the origins `--cors-origin` names (none by default, so a page of another site reads nothing).

use actix_cors::Cors;
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::HttpRequest;

use crate::http::error::ApiError;

/// How long a browser may reuse a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_S: usize = 600;

/// The CORS middleware for the REST reads a watcher's page makes (off without origins).
///
/// An origin not in the list gets its answer without CORS headers rather than a 400: the
/// browser then withholds it from the page, and clients that are not browsers (which may send
/// any `Origin`) work as before.
pub fn reads(origins: &[String]) -> Condition<Cors> {
    let cors = origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods(["GET"])
        .allowed_headers([header::AUTHORIZATION, header::ACCEPT])
        .block_on_origin_mismatch(false)
        .max_age(PREFLIGHT_MAX_AGE_S);
    Condition::new(!origins.is_empty(), cors)
}

/// Refuses a WebSocket upgrade that a page of a foreign origin started.
///
/// Browsers send no preflight for WebSocket, but always an `Origin`: a page may watch when it
/// comes from this server itself (the live page) or from a listed origin. Apps and other
/// non-browser clients send none and are not concerned.
pub fn check_origin(req: &HttpRequest, origins: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let same_site = host.is_some_and(|host| host_of(origin) == Some(host));
    if same_site
        || origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a page of origin {origin:?} may not watch: the server lists it in no --cors-origin"
    )))
}

/// `host[:port]` of an origin (`scheme://host[:port]`).
fn host_of(origin: &str) -> Option<&str> {
    origin.split_once("://").map(|(_, host)| host)
}

/// Parses one `--cors-origin`: `http(s)://host[:port]` exactly as a browser sends it in
/// `Origin` (lowercase, no path, no trailing slash), so that comparing is a string match.
pub fn parse_origin(value: &str) -> Result<String, String> {
    let origin = value.trim().to_ascii_lowercase();
    let host = match origin.split_once("://") {
        Some(("http" | "https", host)) => host,
        _ => return Err(format!("{value:?}: an origin is http(s)://host[:port]")),
    };
    let bad = host.is_empty()
        || host
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '*' | '@') || c.is_whitespace());
    if bad {
        return Err(format!(
            "{value:?}: an origin is http(s)://host[:port], without path, wildcard or user"
        ));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn origins_parse_as_browsers_send_them_and_anything_else_is_refused() {
        assert_eq!(
            parse_origin("https://Shop.Example.com").unwrap(),
            "https://shop.example.com"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:5173").unwrap(),
            "http://127.0.0.1:5173"
        );
        for bad in [
            "shop.example.com",
            "ftp://shop.example.com",
            "https://",
            "https://shop.example.com/",
            "https://shop.example.com/track",
            "https://*.example.com",
            "https://user@shop.example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn a_watch_upgrade_from_a_foreign_page_is_refused_unless_listed() {
        let listed = vec!["https://shop.example.com".to_string()];
        let from = |origin: Option<&str>| {
            let mut req = TestRequest::get().insert_header((header::HOST, "track.example.com"));
            if let Some(origin) = origin {
                req = req.insert_header((header::ORIGIN, origin));
            }
            req.to_http_request()
        };
        // an app (no Origin), the server's own live page, a listed origin
        assert!(check_origin(&from(None), &[]).is_ok());
        assert!(check_origin(&from(Some("https://track.example.com")), &[]).is_ok());
        assert!(check_origin(&from(Some("https://shop.example.com")), &listed).is_ok());
        // another site's page
        let refused = check_origin(&from(Some("https://evil.example.net")), &listed).unwrap_err();
        assert!(matches!(refused, ApiError::Forbidden(_)), "{refused:?}");
        assert!(check_origin(&from(Some("https://shop.example.com")), &[]).is_err());
    }
}
