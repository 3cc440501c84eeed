//! Runs the chat example end to end, so it cannot rot.

#[path = "../examples/chat.rs"]
#[allow(dead_code)]
mod chat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_example_tells_its_story() {
    let mut lines = chat::run().await.expect("the chat example runs");
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "alice sees in #rust: <alice> hello from earth",
            "alice sees in #rust: <bob> carol left?",
            "bob sees in #erlang: <carol> anyone using pg here?",
            "bob sees in #rust: <alice> hello from earth",
            "bob sees in #rust: <bob> carol left?",
            "carol sees in #rust: <alice> hello from earth",
        ]
    );
}
