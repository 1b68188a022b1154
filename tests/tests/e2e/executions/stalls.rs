//! Silent and stalled providers (SPEC §12): a streamed attempt whose provider sends
//! no first token within the model's first-token timeout, or stops sending within
//! its idle timeout, fails as GENERATION_TIMEOUT and the execution goes on; a
//! client streaming through the OpenAI door gets the whole answer once.

use super::*;

const TIMEOUTS: &str = "first_token_timeout_ms = 500\nidle_timeout_ms = 500";

/// A server whose streams time out after 500 ms of silence, and its provider.
async fn with_short_timeouts() -> (Emulator<openai::OpenAi>, Server) {
    let emulator = openai_emulator().await;
    let server = Server::start_with(
        &[openai_provider(&emulator)],
        Options {
            executions: TIMEOUTS,
            ..Options::default()
        },
    )
    .await;
    (emulator, server)
}

async fn first_attempt(server: &Server, id: &str) -> Value {
    let record = server
        .admin_get(&format!("/admin/v1/executions/{id}"))
        .await
        .body;
    record["attempts"][0].clone()
}

#[tokio::test]
async fn a_provider_that_sends_no_first_token_fails_the_attempt_and_the_retry_answers() {
    let (emulator, server) = with_short_timeouts().await;
    emulator.push_fault(Fault::StallStream { after: 0 });
    let StreamedChat { text, done, id, .. } = streamed_chat(&server, "one two three").await;
    assert_eq!(text, "Echo: three two one");
    assert!(done, "the stream ended without [DONE]");
    assert_eq!(emulator.count("/v1/chat/completions"), 2);
    let silent = first_attempt(&server, &id).await;
    assert_eq!(silent["failure"], "GENERATION_TIMEOUT", "{silent}");
    let outcome = silent["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("no first token within 500 ms"),
        "{outcome}"
    );
    server.assert_ledger_verifies().await;
}

#[tokio::test]
async fn a_slow_first_token_within_the_timeout_is_waited_for() {
    let (emulator, server) = with_short_timeouts().await;
    emulator.push_fault(Fault::Delay { ms: 250 });
    let StreamedChat { text, done, .. } = streamed_chat(&server, "one two three").await;
    assert_eq!(text, "Echo: three two one");
    assert!(done);
    assert_eq!(emulator.count("/v1/chat/completions"), 1, "not retried");
    server.assert_ledger_verifies().await;
}

#[tokio::test]
async fn a_stream_that_stalls_midway_is_finished_by_the_retry_without_repeating_text() {
    let (emulator, server) = with_short_timeouts().await;
    emulator.push_fault(Fault::StallStream { after: 2 });
    let StreamedChat { text, done, id, .. } = streamed_chat(&server, "one two three").await;
    assert_eq!(text, "Echo: three two one", "nothing lost, nothing twice");
    assert!(done, "the stream ended without [DONE]");
    let stalled = first_attempt(&server, &id).await;
    assert_eq!(stalled["failure"], "GENERATION_TIMEOUT", "{stalled}");
    let outcome = stalled["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("stalled: no event for 500 ms"),
        "{outcome}"
    );
    // Only the completed attempt is billed.
    let execution = server.get(&format!("/v1/executions/{id}")).await.body;
    assert_eq!(execution["status"], "COMPLETED");
    server.assert_ledger_verifies().await;
}

#[test]
fn a_stream_timeout_below_100_ms_stops_the_start_naming_the_field() {
    let printed = Server::refused(
        &[],
        Options {
            executions: "[executions.models.\"llama-3.1-8b-instruct\"]\nidle_timeout_ms = 5",
            ..Options::default()
        },
    );
    assert!(
        printed.contains(
            "executions.models.\"llama-3.1-8b-instruct\".idle_timeout_ms must be at least 100"
        ),
        "{printed}"
    );
}
