//! Money and access: no overspend under a race, the ledger rebuilds to the balances
//! after a crash, keys and scopes behave as SPEC §3 says.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

use modelroute_tests::emulators::{DEFAULT_TOKEN, replicate};
use rust_decimal::Decimal;

use crate::support::{Options, Server, decimal, eventually, flux_input, replicate_provider};

const WAIT: Duration = Duration::from_secs(90);

async fn verify_ledger(server: &Server) -> Value {
    let reply = server.admin_get("/admin/v1/ledger/verify").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

#[tokio::test]
async fn a_thousand_parallel_creates_never_overspend_and_survive_kill_9() {
    thousand_parallel_creates_then_kill_9("").await;
}

/// The same with `batched` durability: a create acknowledged in the last window
/// may be lost by the crash, whole (its hold with it); the money still adds up.
#[tokio::test]
async fn batched_a_thousand_parallel_creates_never_overspend_and_lose_only_whole_executions() {
    thousand_parallel_creates_then_kill_9("durability = \"batched\"").await;
}

async fn thousand_parallel_creates_then_kill_9(store: &str) {
    let emulator = replicate::spawn("127.0.0.1:0", DEFAULT_TOKEN)
        .await
        .unwrap();
    let options = Options {
        store,
        ..Options::default()
    };
    let mut server = Server::start_with(&[replicate_provider(&emulator)], options).await;
    // Each hold is $0.048: the balance covers exactly 100 of the 1,000.
    let key = server.new_organization("4.8").await;
    let client = reqwest::Client::new();
    let body = json!({"model": "flux-1.1-pro", "input": flux_input()});
    let requests = (0..1000).map(|_| {
        let request = client
            .post(format!("{}/v1/executions", server.url))
            .bearer_auth(&key)
            .json(&body)
            .send();
        async move {
            let response = request.await.expect("request");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            (status, body)
        }
    });
    let replies = futures_util::future::join_all(requests).await;
    let accepted: Vec<String> = replies
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, body)| body["id"].as_str().unwrap().to_string())
        .collect();
    for (status, body) in &replies {
        assert!(
            *status == StatusCode::ACCEPTED
                || (*status == StatusCode::PAYMENT_REQUIRED
                    && body["error"]["code"] == "INSUFFICIENT_BALANCE"),
            "{status} {body}\nserver log:\n{}",
            server.log_tail(40)
        );
    }
    assert_eq!(accepted.len(), 100, "exactly the holds the balance covers");

    server.kill();
    server.restart().await;
    let batched = store.contains("batched");
    for id in &accepted {
        let reply = server
            .call(
                Method::GET,
                &format!("/v1/executions/{id}"),
                Some(&key),
                None,
                &[],
            )
            .await;
        let lost = batched && reply.status == StatusCode::NOT_FOUND;
        assert!(reply.status == StatusCode::OK || lost, "{id}: {reply:?}");
    }
    eventually("every hold resolves", WAIT, || async {
        let balance = server
            .call(Method::GET, "/v1/balance", Some(&key), None, &[])
            .await
            .body;
        if balance["held"] == "0" {
            Ok(())
        } else {
            Err(balance)
        }
    })
    .await;
    let verified = verify_ledger(&server).await;
    assert_eq!(verified["consistent"], true, "{verified}");
    let listed = server
        .call(
            Method::GET,
            "/v1/executions?limit=100",
            Some(&key),
            None,
            &[],
        )
        .await
        .body;
    let spent: Decimal = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cost"].as_str().map_or(Decimal::ZERO, decimal))
        .sum();
    let balance = server
        .call(Method::GET, "/v1/balance", Some(&key), None, &[])
        .await
        .body;
    let available = decimal(balance["available"].as_str().unwrap());
    assert_eq!(available + spent, decimal("4.8"), "{available} + {spent}");
    assert!(available >= Decimal::ZERO);
}

/// Regression: a credit that would overflow an organization's balance failed its
/// store write, which aborted the whole commit batch: other organizations' creates
/// answered 500 and their accepted executions stalled. It is now refused alone.
/// Money is never a JSON number here either (a float to most parsers).
#[tokio::test]
async fn an_operator_credit_past_the_limit_is_refused_alone() {
    let server = Server::start(&[]).await;
    let admin = |path: String, body: Value| {
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    &path,
                    Some(&server.admin_token),
                    Some(body),
                    &[],
                )
                .await
        }
    };
    let id = admin(
        "/admin/v1/organizations".into(),
        json!({"name": "Big", "credit_usd": "999999999999"}),
    )
    .await
    .body["organization_id"]
        .as_str()
        .unwrap()
        .to_string();
    let credit = format!("/admin/v1/organizations/{id}/credit");
    // Another organization's write, in flight at the same moment.
    let (over, other) = tokio::join!(
        admin(
            credit.clone(),
            json!({"amount_usd": "2", "memo": "too much"})
        ),
        server.post("/v1/api-keys", json!({}))
    );
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{:?}", over.body);
    assert_eq!(over.body["error"]["details"][0]["code"], "OUT_OF_RANGE");
    assert_eq!(other.status, StatusCode::CREATED, "{:?}", other.body);
    let fits = admin(credit.clone(), json!({"amount_usd": "1"})).await;
    assert_eq!(fits.status, StatusCode::OK, "{:?}", fits.body);
    assert_eq!(fits.body["available"], "1000000000000");
    for body in [
        json!({"amount_usd": 1.5}),
        json!({"amount_usd": "1000000000001"}),
    ] {
        let refused = admin(credit.clone(), body.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(verify_ledger(&server).await["consistent"], true);
}

#[tokio::test]
async fn keys_have_scopes_revocation_rotation_and_a_limit() {
    let server = Server::start(&[]).await;
    let full = server.api_key.clone();
    let call = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let (path, key) = (path.to_string(), key.to_string());
        let server = &server;
        async move { server.call(method, &path, Some(&key), body, &[]).await }
    };

    let created = call(
        Method::POST,
        "/v1/api-keys",
        &full,
        Some(json!({"scope": "execution", "name": "worker"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let limited = created.body["key"].as_str().unwrap().to_string();
    let limited_id = created.body["id"].as_str().unwrap().to_string();
    assert!(limited.starts_with("sk_") && limited.len() == 76);

    // The execution scope reaches executions and files, nothing else (but the
    // secret that signs the deliveries to an execution's own webhook_url).
    for path in ["/v1/executions", "/v1/webhooks/default-secret"] {
        let reply = call(Method::GET, path, &limited, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    for (method, path) in [
        (Method::GET, "/v1/balance"),
        (Method::GET, "/v1/ledger"),
        (Method::GET, "/v1/api-keys"),
        (Method::GET, "/v1/webhooks/endpoints"),
        (Method::POST, "/v1/webhooks/endpoints"),
    ] {
        let body = (method == Method::POST).then(|| json!({"url": "https://example.com/hook"}));
        let reply = call(method, path, &limited, body).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(reply.error_code(), "FORBIDDEN");
    }

    // Listing never shows a secret or its hash.
    let listed = call(Method::GET, "/v1/api-keys", &full, None).await;
    let text = listed.body.to_string();
    assert!(!text.contains(&limited[3..20]) && !text.contains("secret_hash"));
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);

    // Rotation: both secrets work during the grace hour.
    let rotated = call(
        Method::POST,
        &format!("/v1/api-keys/{limited_id}/rotate"),
        &full,
        None,
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
    let new_secret = rotated.body["new_key"].as_str().unwrap().to_string();
    let valid_until = chrono::DateTime::parse_from_rfc3339(
        rotated.body["previous_key_valid_until"].as_str().unwrap(),
    )
    .unwrap();
    let grace = valid_until.signed_duration_since(chrono::Utc::now());
    assert!(
        grace > chrono::Duration::minutes(59) && grace <= chrono::Duration::minutes(60),
        "{grace}"
    );
    assert_eq!(
        call(Method::GET, "/v1/executions", &limited, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::GET, "/v1/executions", &new_secret, None)
            .await
            .status,
        StatusCode::OK
    );

    // Regression: rotation changed the key's id. It keeps its id (and scope), and
    // the list shows one key with its old secret's deadline.
    assert_eq!(rotated.body["id"], limited_id.as_str());
    let listed = call(Method::GET, "/v1/api-keys", &full, None).await;
    let keys = listed.body["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{:?}", listed.body);
    let key = keys
        .iter()
        .find(|k| k["id"] == limited_id.as_str())
        .unwrap();
    assert_eq!(key["scope"], "execution");
    assert_eq!(
        key["previous_key_valid_until"],
        rotated.body["previous_key_valid_until"]
    );

    // Revocation by the id the client stored is immediate, for both secrets.
    let revoked = call(
        Method::DELETE,
        &format!("/v1/api-keys/{limited_id}"),
        &full,
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);
    for secret in [&new_secret, &limited] {
        let refused = call(Method::GET, "/v1/executions", secret, None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }

    // Another organization cannot touch these keys.
    let other = server.new_organization("1").await;
    for (method, path) in [
        (Method::DELETE, format!("/v1/api-keys/{limited_id}")),
        (Method::POST, format!("/v1/api-keys/{limited_id}/rotate")),
    ] {
        let reply = call(method, &path, &other, None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }

    // At most 20 active keys: the full key counts; the revoked one does not.
    let mut last = String::new();
    for _ in 0..19 {
        let reply = call(Method::POST, "/v1/api-keys", &full, Some(json!({}))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        last = reply.body["id"].as_str().unwrap().to_string();
    }
    let over = call(Method::POST, "/v1/api-keys", &full, Some(json!({}))).await;
    assert_eq!(over.status, StatusCode::CONFLICT, "{:?}", over.body);

    // Regression: rotating a rotated key again minted another permanent key each
    // time, past the limit. Rotation keeps the id, so at the limit a key can be
    // rotated, and rotated again, and the count does not move.
    let rotate = || {
        call(
            Method::POST,
            &format!("/v1/api-keys/{last}/rotate"),
            &full,
            None,
        )
    };
    for _ in 0..2 {
        let rotated = rotate().await;
        assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
        assert_eq!(rotated.body["id"], last.as_str());
    }
    let still_over = call(Method::POST, "/v1/api-keys", &full, Some(json!({}))).await;
    assert_eq!(still_over.status, StatusCode::CONFLICT);
    let listed = call(Method::GET, "/v1/api-keys?limit=100", &full, None).await;
    let active = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null() && k["expires_at"].is_null())
        .count();
    assert_eq!(active, 20);

    // The key list pages like every list; a field it does not know is refused.
    let first = call(Method::GET, "/v1/api-keys?limit=5", &full, None).await;
    assert_eq!(first.body["data"].as_array().unwrap().len(), 5);
    assert_eq!(first.body["has_more"], true);
    let after = first.body["data"][4]["id"].as_str().unwrap();
    let next = call(
        Method::GET,
        &format!("/v1/api-keys?limit=100&starting_after={after}"),
        &full,
        None,
    )
    .await;
    assert_eq!(next.body["has_more"], false);
    assert_eq!(
        next.body["data"].as_array().unwrap().len() + 5,
        listed.body["data"].as_array().unwrap().len()
    );
    let unknown = call(
        Method::POST,
        "/v1/api-keys",
        &full,
        Some(json!({"expires_at": "2030-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        unknown.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        unknown.body
    );
    assert_eq!(unknown.body["error"]["details"][0]["code"], "UNKNOWN_FIELD");
}
