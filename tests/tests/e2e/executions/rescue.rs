//! Streams that never end as a truncated success (SPEC §12; issue #15, items 5 and
//! 6): a provider's stream cut, garbled or refused after part of the answer went
//! out is finished by the next candidate, continuing from an assistant prefill where
//! the candidate's model accepts one, else restarting held back until it has
//! reproduced the delivered text. The client gets the exact answer once, through
//! the OpenAI door and in the native `STREAMING` mode alike, and pays only for the
//! call that finished it.

use super::*;

const MODEL: &str = "llama-3.1-8b-instruct";

/// Two providers of the chat model, each on its own emulator; on a fresh server
/// `first` is tried first (same price, config order).
async fn two_providers() -> (Emulator<openai::OpenAi>, Emulator<openai::OpenAi>, Server) {
    let first = openai_emulator().await;
    let second = openai_emulator().await;
    let server = Server::start(&[
        ProviderSpec {
            name: "first",
            adapter: "openai",
            base_url: first.base_url(),
            models: &[MODEL],
        },
        ProviderSpec {
            name: "second",
            adapter: "openai",
            base_url: second.base_url(),
            models: &[MODEL],
        },
    ])
    .await;
    (first, second, server)
}

/// The chat requests an emulator received, as JSON.
fn chat_requests<S>(emulator: &Emulator<S>) -> Vec<Value> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

async fn output(server: &Server, id: &str) -> Value {
    let execution = server.wait_terminal(id, WAIT).await;
    assert_eq!(execution["status"], "COMPLETED", "{execution}");
    server
        .get(&format!("/v1/executions/{id}/result"))
        .await
        .body["output"]
        .clone()
}

#[tokio::test]
async fn a_cut_stream_is_continued_from_a_prefill_on_the_next_provider() {
    let (first, second, server) = two_providers().await;
    first.push_fault(Fault::CutStream { after: 2 });
    let chat = streamed_chat(&server, "one two three").await;
    assert_eq!(
        chat.text, "Echo: three two one",
        "nothing lost, nothing twice"
    );
    assert!(chat.done, "the stream ended without [DONE]");

    // The second provider was asked to go on with the delivered text.
    let asked = chat_requests(&second);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["continue_final_message"], true);
    assert_eq!(
        asked[0]["messages"],
        json!([{"role": "user", "content": "one two three"},
               {"role": "assistant", "content": "Echo: three "}])
    );

    // The execution holds the whole answer; the usage (and the bill) is the
    // continuing call's: the prompt with the prefill, and what it wrote.
    let output = output(&server, &chat.id).await;
    assert_eq!(output["text"], "Echo: three two one");
    assert_eq!(
        output["usage"],
        json!({"input_tokens": 5, "output_tokens": 2})
    );
    let usage = &chat.chunks.last().unwrap()["usage"];
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(5), &json!(2))
    );
    server.assert_ledger_verifies().await;
}

#[tokio::test]
async fn native_streaming_continues_a_cut_stream_without_a_reset() {
    let (first, _second, server) = two_providers().await;
    first.push_fault(Fault::CutStream { after: 2 });
    let body = json!({"model": MODEL, "mode": "STREAMING",
                      "input": {"messages": [{"role": "user", "content": "one two three"}]}});
    let events = streamed_execution(&server, body).await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert!(!names.contains(&"reset"), "{names:?}");
    let deltas = delta_text(&events);
    assert_eq!(deltas, "Echo: three two one");
    let done = &events.last().unwrap().1;
    assert_eq!(done["result"]["output"]["text"], "Echo: three two one");
}

/// A provider that takes no prefill although the operator said it does (the
/// model under OpenAI's own name refuses vLLM's parameters): its refusal is not
/// the client's, so the next attempt there answers anew, held back until it has
/// reproduced what the client has.
#[tokio::test]
async fn a_provider_that_refuses_the_prefill_answers_anew_held_back() {
    let emulator = openai_emulator().await;
    let config = format!(
        "\n[[providers]]\nname = \"gpt\"\nadapter = \"openai\"\nbase_url = {:?}\napi_key = \"emulator-key\"\n[providers.models.{MODEL:?}]\nprovider_model = \"gpt-4o-mini\"\naccepts_prefill = true\n",
        emulator.base_url()
    );
    let server = Server::start_with(
        &[],
        Options {
            config: &config,
            ..Options::default()
        },
    )
    .await;
    emulator.push_fault(Fault::CutStream { after: 2 });
    let chat = streamed_chat(&server, "one two three").await;
    assert_eq!(
        chat.text, "Echo: three two one",
        "nothing lost, nothing twice"
    );
    assert!(chat.done);
    let asked = chat_requests(&emulator);
    assert_eq!(asked.len(), 3, "cut, refused prefill, answered anew");
    assert_eq!(asked[1]["continue_final_message"], true);
    assert!(
        asked[2].get("continue_final_message").is_none(),
        "{}",
        asked[2]
    );
    let record = server
        .admin_get(&format!("/admin/v1/executions/{}", chat.id))
        .await
        .body;
    assert_eq!(record["attempts"][1]["failure"], "INPUT_VALIDATION_ERROR");
    assert_eq!(
        output(&server, &chat.id).await["text"],
        "Echo: three two one"
    );
    server.assert_ledger_verifies().await;
}

#[tokio::test]
async fn a_garbled_chunk_midstream_fails_over_and_the_answer_is_exact() {
    let (first, second, server) = two_providers().await;
    first.push_fault(Fault::MalformedStream { after: 1 });
    let chat = streamed_chat(&server, "one two three").await;
    assert_eq!(chat.text, "Echo: three two one");
    assert!(chat.done);
    assert_eq!(chat_requests(&second).len(), 1);
    let record = server
        .admin_get(&format!("/admin/v1/executions/{}", chat.id))
        .await
        .body;
    assert_eq!(record["attempts"][0]["failure"], "GENERATION_FAILED");
    server.assert_ledger_verifies().await;
}

/// A provider that says why the model stopped, then ends its body cleanly without
/// its usage or `[DONE]`: the answer is complete as it stands (no wait for the idle
/// timeout, no second attempt), and its usage is the host's estimate.
#[tokio::test]
async fn a_stream_without_done_is_finished_at_once_with_estimated_usage() {
    let emulator = openai_emulator().await;
    let server = Server::start(&[openai_provider(&emulator)]).await;
    emulator.push_fault(Fault::NoDone);
    let chat = streamed_chat(&server, "one two three").await;
    assert_eq!(chat.text, "Echo: three two one");
    assert!(chat.done);
    assert_eq!(chat_requests(&emulator).len(), 1);
    // The estimate's input tokens; a token per four characters of the answer.
    let estimated_input = server
        .admin_get(&format!("/admin/v1/executions/{}", chat.id))
        .await
        .body["usage_estimate"]["input_tokens"]
        .clone();
    let usage = &chat.chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], estimated_input);
    assert_eq!(usage["completion_tokens"], 5, "19 characters");
    let output = output(&server, &chat.id).await;
    assert_eq!(output["usage"]["output_tokens"], 5);
    server.assert_ledger_verifies().await;
}

#[test]
fn accepts_prefill_on_a_model_that_is_not_chat_stops_the_start_naming_the_field() {
    let config = "\n[[providers]]\nname = \"images\"\nadapter = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"emulator-key\"\n[providers.models.\"flux-1.1-pro\"]\naccepts_prefill = true\n";
    let printed = Server::refused(
        &[],
        Options {
            config,
            ..Options::default()
        },
    );
    assert!(
        printed.contains("providers[0].models.\"flux-1.1-pro\".accepts_prefill: only a chat model continues an assistant prefill"),
        "{printed}"
    );
}
