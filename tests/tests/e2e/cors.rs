//! Browser apps of other origins: the preflight and the headers of the reads a watcher's page
//! makes with a watch token, for the origins `--cors-origin` lists and for no other; the watch
//! upgrade's Origin check.

use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, ORIGIN,
};
use reqwest::{Method, StatusCode};
use trackline_core::LatLon;
use trackline_tests::{NewOrder, TestServer, TokenIn};

const SHOP: &str = "https://shop.example.com";
const OTHER_SITE: &str = "https://evil.example.net";

/// The watch token of a new order on `server`.
async fn order_with_token(server: &TestServer, order: &str) -> String {
    let created = server
        .create_order(&NewOrder::new(order, LatLon::new(48.85, 2.35)).courier("c-cors"))
        .await;
    created["watch_token"].as_str().unwrap().to_string()
}

/// A browser's preflight of `GET path` with an `Authorization` header, from a page of `origin`.
async fn preflight(server: &TestServer, path: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, server.http_url(path))
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .send()
        .await
        .unwrap()
}

/// `GET path` with `token`, from a page of `origin`.
async fn read_from(
    server: &TestServer,
    path: &str,
    token: &str,
    origin: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.http_url(path))
        .header(ORIGIN, origin)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
}

fn allowed_origin(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get(ACCESS_CONTROL_ALLOW_ORIGIN)
        .map(|value| value.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_origin_passes_the_preflight_and_reads_and_others_get_no_cors_headers() {
    let server = TestServer::start_with(|config| config.cors_origins = vec![SHOP.to_string()]);
    let watch_token = order_with_token(&server, "o-cors-1").await;
    let ops_token = server.ops_token();
    // An order's state is a watcher's read; its history is ops' (an ops page of another origin).
    let reads = [
        ("/v1/orders/o-cors-1", &watch_token),
        ("/v1/orders/o-cors-1/history", &ops_token),
    ];
    for (path, token) in reads {
        let answer = preflight(&server, path, SHOP).await;
        assert_eq!(answer.status(), StatusCode::OK, "preflight of {path}");
        assert_eq!(allowed_origin(&answer), Some(SHOP), "preflight of {path}");
        let headers = answer.headers();
        let methods = headers[ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap();
        assert!(methods.contains("GET"), "{path}: methods {methods}");
        let allowed = headers[ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        assert!(
            allowed.to_ascii_lowercase().contains("authorization"),
            "{path}: headers {allowed}"
        );

        let read = read_from(&server, path, token, SHOP).await;
        assert_eq!(read.status(), StatusCode::OK, "GET {path}");
        assert_eq!(allowed_origin(&read), Some(SHOP), "GET {path}");

        // Another site's page: the preflight and the read carry no grant, so a browser withholds
        // the answer; the read itself is served as to any client.
        let answer = preflight(&server, path, OTHER_SITE).await;
        assert_eq!(
            allowed_origin(&answer),
            None,
            "preflight of {path} from elsewhere"
        );
        let read = read_from(&server, path, token, OTHER_SITE).await;
        assert_eq!(read.status(), StatusCode::OK, "GET {path} from elsewhere");
        assert_eq!(allowed_origin(&read), None, "GET {path} from elsewhere");
    }
    // Ops endpoints are not for pages: no grant even to a listed origin.
    let answer = preflight(&server, "/v1/orders", SHOP).await;
    assert_eq!(allowed_origin(&answer), None, "preflight of the order list");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cors_origins_no_origin_is_granted() {
    let server = TestServer::start();
    let token = order_with_token(&server, "o-cors-2").await;
    let answer = preflight(&server, "/v1/orders/o-cors-2", SHOP).await;
    assert_eq!(allowed_origin(&answer), None);
    let read = read_from(&server, "/v1/orders/o-cors-2", &token, SHOP).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(allowed_origin(&read), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_upgrade_from_a_foreign_page_is_refused_unless_its_origin_is_listed() {
    let server = TestServer::start_with(|config| config.cors_origins = vec![SHOP.to_string()]);
    let token = order_with_token(&server, "o-cors-3").await;
    let path = "/v1/orders/o-cors-3/watch";
    let own_page = server.http_url("");
    let status = |origin| server.upgrade_status_from(path, TokenIn::Query(&token), origin);
    assert_eq!(status(None).await, 101, "an app sends no Origin");
    assert_eq!(status(Some(own_page.as_str())).await, 101, "the live page");
    assert_eq!(status(Some(SHOP)).await, 101, "a listed origin");
    assert_eq!(status(Some(OTHER_SITE)).await, 403, "another site's page");
}
