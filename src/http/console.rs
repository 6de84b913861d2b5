//! The web console at `/console`: a page for people (collections, documents, the search
//! playground with each hit's explanation, grounded answers, jobs, eval comparisons) over
//! the same HTTP API, keys and scopes as any other client.
//!
//! Why it is built this way:
//! - **Embedded, static, no build step.** Three files (`console/index.html`, `console.js`,
//!   `console.css`: plain HTML, JavaScript and CSS, no framework) compiled into the binary
//!   with `include_str!`, so building Quarry needs no Node and running it needs no network.
//! - **Nothing from elsewhere.** Every response carries a Content-Security-Policy that allows
//!   scripts, styles, images and fetches from this server only (no inline script, no other
//!   host), forbids framing, and sends no referrer.
//! - **No data, no key.** The assets hold no collection data, so they are served without a
//!   key; the page asks for the key, keeps it in memory only (never a URL, a cookie or web
//!   storage) and sends it on every API call, where it is checked like any client's. What a
//!   read-only key sees is only what the API lets it read; the page also hides the write
//!   controls such a key could not use (`GET /v1/whoami`).

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Where the console is served.
pub const PATH: &str = "/console";

/// Only this server, for everything; no inline script; no framing; forms post nowhere.
const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(POLICY));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Small and versioned with the binary: revalidate, so an upgraded server is seen at once.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's routes, to merge into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    use axum::routing::get;
    let index = || async { asset(INDEX, "text/html; charset=utf-8") };
    axum::Router::new()
        .route(PATH, get(index))
        .route("/console/", get(index))
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        // Every URL the page names is one of the console's own paths: nothing from a CDN.
        for (name, text) in [
            ("index.html", INDEX),
            ("console.js", SCRIPT),
            ("console.css", STYLE),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                let allowed = ["http://www.w3.org/2000/svg"];
                let found = text
                    .match_indices(needle)
                    .filter(|(i, _)| !allowed.iter().any(|a| text[*i..].starts_with(a)))
                    .count();
                assert_eq!(found, 0, "{name} names {needle}");
            }
        }
        assert!(INDEX.contains("src=\"/console/console.js\""));
        assert!(INDEX.contains("href=\"/console/console.css\""));
        // No inline script: the policy forbids it, so it would not run.
        assert_eq!(INDEX.matches("<script").count(), 1);
    }

    #[test]
    fn the_key_never_goes_to_storage_or_a_url() {
        for forbidden in [
            "localStorage",
            "sessionStorage",
            "document.cookie",
            "innerHTML",
        ] {
            assert!(!SCRIPT.contains(forbidden), "console.js uses {forbidden}");
        }
    }
}
