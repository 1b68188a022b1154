//! `/docs` in headless Chromium, with every host but the server's unresolvable.

use super::*;

/// Whether `chromium` runs.
fn chromium_present() -> bool {
    std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The values of the `src` and `href` attributes in `html`.
fn links(html: &str) -> Vec<&str> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attribute| {
            html.match_indices(attribute)
                .filter_map(|(at, _)| html[at + attribute.len()..].split('"').next())
        })
        .collect()
}

/// The absolute `http(s)://` URLs written in `text`.
fn absolute_urls(text: &str) -> Vec<&str> {
    text.match_indices("http")
        .map(|(at, _)| &text[at..])
        .filter(|rest| rest.starts_with("http://") || rest.starts_with("https://"))
        .map(|rest| {
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'`<>()".contains(c))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Whether `url` is on the host and port of `origin`.
fn same_origin(url: &Url, origin: &Url) -> bool {
    url.host_str() == origin.host_str()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// Fetches the page at `page` and what it links to; asserts that each is served by
/// the server itself, and that the page and its small (not vendored, minified)
/// scripts name no URL of another host.
async fn assert_assets_served_locally(page: &Url) {
    let http = reqwest::Client::new();
    let html = http.get(page.clone()).send().await.expect("GET the docs");
    assert_eq!(html.status(), StatusCode::OK, "{page}");
    let html = html.text().await.expect("the docs page");
    let mut texts = vec![(page.clone(), html.clone())];
    for link in links(&html) {
        let url = page.join(link).unwrap_or_else(|e| panic!("{link:?}: {e}"));
        if url.scheme() == "data" {
            continue;
        }
        assert!(same_origin(&url, page), "the docs load {url}");
        let response = http.get(url.clone()).send().await.expect("GET an asset");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let body = response.text().await.expect("an asset");
        if body.len() < 64 * 1024 {
            texts.push((url, body));
        }
    }
    for (url, text) in &texts {
        for absolute in absolute_urls(text) {
            let other = Url::parse(absolute).is_ok_and(|absolute| !same_origin(&absolute, page));
            assert!(!other, "{url} names {absolute}");
        }
    }
}

/// The URLs the page at `origin` asked for, from Chromium's net log.
fn page_requests(netlog: &Path, origin: &str) -> Vec<String> {
    let log: Value = serde_json::from_slice(&std::fs::read(netlog).expect("the net log"))
        .expect("the net log is JSON");
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    log["events"]
        .as_array()
        .expect("net log events")
        .iter()
        .filter(|event| &event["type"] == start_job)
        .filter(|event| event["params"]["initiator"].as_str() == Some(origin))
        .filter_map(|event| event["params"]["url"].as_str().map(String::from))
        .collect()
}

/// The name Chromium reaches the server by: Swagger UI hides some of its calls out
/// (the online validator's badge) on `localhost` and `127.0.0.1`, not on other hosts.
const DOCS_HOST: &str = "modelroute.test";

#[tokio::test]
async fn the_docs_page_renders_offline_in_headless_chromium() {
    let server = Server::start(&[]).await;
    let page = Url::parse(&format!("{}/docs/", server.url)).unwrap();
    assert_assets_served_locally(&page).await;
    if !chromium_present() {
        skip_unless_ci("chromium is not installed (.ci/run installs it)");
        return;
    }
    let origin = format!("http://{DOCS_HOST}:{}", page.port().expect("a port"));
    let profile = tempfile::tempdir().unwrap();
    let netlog = profile.path().join("netlog.json");
    let screenshot = artifacts().join("docs.png");
    let mut chromium = Command::new("chromium");
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        // Only the server's name resolves: no request can leave the machine.
        .arg(format!(
            "--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1 , MAP * ~NOTFOUND"
        ))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(["--virtual-time-budget=20000", "--window-size=1280,2400"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(format!("{origin}/docs/"));
    let output = run(chromium, Duration::from_secs(120)).await;
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "chromium: {}", printed(&output));
    assert!(
        dom.contains("class=\"swagger-ui\"")
            && dom.contains("opblock")
            && dom.contains("data-path=\"/v1/executions\""),
        "Swagger UI did not render the operations:\n{}",
        tail(&dom, 50)
    );
    assert!(!dom.contains("Failed to load API definition"), "{dom}");
    let requests = page_requests(&netlog, &origin);
    assert!(
        requests.contains(&format!("{origin}/openapi.json")),
        "the page did not fetch the document: {requests:?}"
    );
    let elsewhere: Vec<&String> = requests
        .iter()
        .filter(|url| !url.starts_with(&format!("{origin}/")))
        .collect();
    assert!(elsewhere.is_empty(), "the page reached out: {elsewhere:?}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is no PNG",
        screenshot.display()
    );
    eprintln!("screenshot of /docs: {}", screenshot.display());
}
