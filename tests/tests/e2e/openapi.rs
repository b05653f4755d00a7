//! `GET /openapi.json` from a running server: an OpenAPI 3.1 document that needs no token, names
//! the auth schemes and the error shape, covers every route proto/README.md documents, and whose
//! every operation is served with one of the statuses and content types it lists.

use std::collections::BTreeSet;

use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use trackline_core::LatLon;
use trackline_tests::{NewOrder, TestServer};

/// The order the document's `{id}` paths are asked about.
const ORDER: &str = "o-openapi";

/// Every `METHOD /path` that proto/README.md names in code spans (the HTTP table, the stream
/// headings), without its query.
fn routes_in_protocol_docs() -> BTreeSet<(String, String)> {
    let docs = include_str!("../../../proto/README.md");
    let mut routes = BTreeSet::new();
    for span in docs.split('`').skip(1).step_by(2) {
        let Some((method, rest)) = span.split_once(' ') else {
            continue;
        };
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) || !rest.starts_with('/') {
            continue;
        }
        let path = rest.split(['?', ' ']).next().unwrap_or(rest);
        routes.insert((method.to_lowercase(), path.to_string()));
    }
    routes
}

/// Every `(method, path)` of the document with its operation.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            found.push((method.clone(), path.clone(), operation));
        }
    }
    found
}

async fn fetch_document(server: &TestServer) -> Value {
    let answer = reqwest::get(server.http_url("/openapi.json"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let content_type = answer.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    answer.json().await.expect("the document is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_openapi_3_1_with_the_auth_schemes_and_the_error_shape() {
    let server = TestServer::start();
    let doc = fetch_document(&server).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["token_query"]["type"], "apiKey");
    assert_eq!(schemes["token_query"]["in"], "query");
    assert_eq!(schemes["token_query"]["name"], "token");
    let error = &doc["components"]["schemas"]["ErrorAnswer"];
    assert_eq!(error["required"], json!(["error"]), "{error}");
    for (method, path, operation) in operations(&doc) {
        if operation.get("security").is_none() {
            continue;
        }
        let unauthorized = &operation["responses"]["401"]["content"]["application/json"];
        assert_eq!(
            unauthorized["schema"]["$ref"], "#/components/schemas/ErrorAnswer",
            "{method} {path}: 401 is not documented with the error shape"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_covers_every_route_of_the_protocol_docs() {
    let server = TestServer::start();
    let doc = fetch_document(&server).await;
    let documented: BTreeSet<_> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let in_docs = routes_in_protocol_docs();
    assert!(in_docs.len() >= 15, "proto/README.md lists {in_docs:?}");
    let missing: Vec<_> = in_docs.difference(&documented).collect();
    assert!(missing.is_empty(), "not in /openapi.json: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_with_a_documented_status() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new(ORDER, LatLon::new(45.0, 13.0)).courier("c-openapi"))
        .await;
    let doc = fetch_document(&server).await;
    let ops_token = server.ops_token();
    let client = reqwest::Client::new();
    for (method, path, operation) in operations(&doc) {
        let url = server.http_url(&path.replace("{id}", ORDER).replace("{name}", "track.js"));
        let mut request = match method.as_str() {
            "get" => client.get(&url),
            "post" => client.post(&url).json(&json!({})),
            "put" => client.put(&url).json(&json!({})),
            "delete" => client.delete(&url),
            other => panic!("{other} {path}: a method the server has no route of"),
        };
        if operation.get("security").is_some() {
            request = request.bearer_auth(&ops_token);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let media_type = answer
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        // the fallback of a path no route serves, or a method its resource lacks
        assert!(
            status != 405
                && !(status == 404
                    && body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no endpoint"))),
            "{method} {path} is documented but not served: {status} {body}"
        );
        assert!(
            operation["responses"].get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        let documented = &operation["responses"][status.to_string()]["content"];
        if let (Some(documented), Some(media_type)) = (documented.as_object(), &media_type) {
            assert!(
                documented.contains_key(media_type),
                "{method} {path}: {status} came as {media_type}, documented as {:?}",
                documented.keys().collect::<Vec<_>>()
            );
        }
        if status >= 400 {
            assert!(
                body["error"]["code"].is_string(),
                "{method} {path}: {status} {body}"
            );
        }
    }
}
